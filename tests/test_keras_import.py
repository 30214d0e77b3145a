"""Whole-model import from ``keras.applications`` against Keras itself.

Keras (JAX backend, set in conftest) is the independent reference: each model is
built locally with ``weights=None``, its batch-norm statistics (and EfficientNet's
input normalization) are set to non-trivial random values, and the converted Flax
model must reproduce ``keras_model(x, training=False)`` to a relative error under
1e-4. Parameter counts are compared with the Keras models' own weights.
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from sepconv_jax import models
from sepconv_jax.interop.keras_models import convert

assert keras.backend.backend() == "jax", "conftest.py sets KERAS_BACKEND=jax before keras loads"

RTOL = 1e-4


@contextlib.contextmanager
def numpy_initializers(seed: int):
    """Keras draws initial weights with one compiled JAX program per weight shape,
    which dominates building a model on a small CPU; draw them with NumPy instead."""
    from keras.src import backend as keras_backend

    rng = np.random.default_rng(seed)

    def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
        return jnp.asarray(rng.uniform(minval, maxval, shape), dtype or "float32")

    def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        return jnp.asarray(mean + stddev * rng.normal(size=shape), dtype or "float32")

    def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        draw = np.clip(rng.normal(size=shape), -2.0, 2.0)
        return jnp.asarray(mean + stddev * draw, dtype or "float32")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keras_backend.random, "uniform", uniform)
        mp.setattr(keras_backend.random, "normal", normal)
        mp.setattr(keras_backend.random, "truncated_normal", truncated_normal)
        yield


def build(factory, seed=0, **kwargs):
    # Keras broadcasts implicitly while it builds (ConvNeXt's LayerScale); our strict
    # rank promotion is for our code, so allow it inside the reference only.
    with numpy_initializers(seed), jax.numpy_rank_promotion("allow"):
        return factory(weights=None, **kwargs)


def build_for_counting(factory, **kwargs):
    """Keras draws nothing: every initializer returns zeros (only shapes are counted)."""
    from keras.src import backend as keras_backend

    def zeros(shape, *args, dtype=None, **kwargs):
        return jnp.zeros(shape, dtype or "float32")

    with pytest.MonkeyPatch.context() as mp, jax.numpy_rank_promotion("allow"):
        for name in ("uniform", "normal", "truncated_normal"):
            mp.setattr(keras_backend.random, name, zeros)
        return factory(weights=None, **kwargs)


def keras_forward(keras_model, x, training=False):
    """``keras_model(x, training=...)``, jitted; also returns the new non-trainable state."""
    trainable = [v.value for v in keras_model.trainable_variables]
    non_trainable = [v.value for v in keras_model.non_trainable_variables]
    fn = jax.jit(lambda t, n, x: keras_model.stateless_call(t, n, x, training=training))
    # Keras broadcasts (C,) biases against (B, ..., C) implicitly; our strict setting is
    # for our code, so allow rank promotion inside the reference only.
    with jax.numpy_rank_promotion("allow"):
        return fn(trainable, non_trainable, x)


def randomize(keras_model, calibration, rng, spread=1.0):
    """Non-trivial weights: random gammas, betas and biases, then moving statistics at a
    random perturbation of the batch statistics of ``calibration``, so that every layer
    stays in range (random statistics unrelated to the data saturate or kill a deep
    network, making its output independent of the input). ``spread`` scales the
    perturbations.

    EfficientNet-B1 and beyond, at 32 x 32, need more calibration images and smaller
    perturbations. Measured with B1 and B4, comparing each model with a float64 run of
    itself (Keras rebuilt with float64 variables and the same weights; ours with
    ``dtype=float64``), block by block where noted:

    * 8 calibration images: the last stages run on 2 x 2 and 1 x 1 maps, so their batch
      statistics come from 8 numbers per channel and the logits reach ~2e4 (B1) and
      ~1e5 (B4). Keras float32 then differs from Keras float64 by 1.9e-4 (B1) and 0.19
      (B4): rounding, amplified, is beyond the tolerance in Keras itself. Block by block
      in float64, ours matches a NumPy batch norm at the stem to 4e-16 and differs from
      Keras (whose batch norm rounds at ~1e-7 even with float64 variables) by an error
      that grows smoothly with the activations through every block, with no jump at any
      block: no model difference (padding, filter or repeat rounding, squeeze-excite).
    * 64 calibration images, spread 1: logits ~1e2 (B1), ~5e2 (B4); B1 passes (2.0e-5),
      but for B4 Keras float32 differs from Keras float64 by 2.7e-4 and ours float32 from
      ours float64 by 3.0e-4, again rounding beyond the tolerance in both.
    * hence 64 images and spread 0.3 for B1-B7.
    """
    for layer in keras_model.layers:
        for w in layer.weights:
            if w.name == "gamma":
                w.assign(rng.uniform(1 - 0.5 * spread, 1 + 0.5 * spread, w.shape).astype("float32"))
            elif w.name in ("beta", "bias"):
                w.assign(rng.normal(0.0, 0.2 * spread, w.shape).astype("float32"))
        if type(layer).__name__ == "LayerScale":  # ConvNeXt's, 1e-6 at init
            (gamma,) = layer.weights
            gamma.assign(rng.uniform(0.5, 1.0, gamma.shape).astype("float32"))
        if type(layer).__name__ == "Normalization" and not layer.get_config().get("mean"):
            layer.adapt_mean.assign(rng.uniform(0.3, 0.6, layer.adapt_mean.shape))
            layer.adapt_variance.assign(rng.uniform(0.04, 0.1, layer.adapt_variance.shape))
            layer.finalize_state()
    bns = [layer for layer in keras_model.layers if type(layer).__name__ == "BatchNormalization"]
    momenta = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0  # one training step stores the batch statistics
    # ... of the network as inference runs it: no dropout, every block (stochastic depth off)
    dropouts = [layer for layer in keras_model.layers if type(layer).__name__ == "Dropout"]
    rates = [layer.rate for layer in dropouts]
    for layer in dropouts:
        layer.rate = 0.0
    _, state = keras_forward(keras_model, calibration, training=True)
    for layer, rate in zip(dropouts, rates, strict=True):
        layer.rate = rate
    for variable, value in zip(keras_model.non_trainable_variables, state, strict=True):
        variable.assign(value)
    for layer, momentum in zip(bns, momenta, strict=True):
        layer.momentum = momentum
        mean = np.asarray(layer.moving_mean.value)
        var = np.asarray(layer.moving_variance.value)
        noise = 0.3 * spread * np.sqrt(var) * rng.normal(size=var.shape)
        layer.moving_mean.assign((mean + noise).astype("float32"))
        factor = rng.uniform(0.5, 2.0, var.shape) ** spread
        layer.moving_variance.assign((var * factor).astype("float32"))


def images(rng, batch, size, scale):
    return (scale * rng.uniform(0.0, 1.0, (batch, *size, 3))).astype("float32")


def relative_error(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


#: id -> (Keras factory name, Keras kwargs, input sizes to test, pixel scale, our class,
#: expected attributes of the converted module).
CASES = {
    "mobilenet_alpha0.5_dm2_odd": (
        "MobileNet",
        dict(alpha=0.5, depth_multiplier=2, input_shape=(33, 33, 3), classes=7),
        [(33, 33)],
        1.0,
        models.MobileNetV1,
        dict(depth_multiplier=2, num_classes=7, include_top=True),
    ),
    "mobilenet_v2_alpha0.35_features_unknown_size": (
        "MobileNetV2",
        dict(alpha=0.35, include_top=False, pooling="avg"),
        [(33, 35), (32, 32)],
        1.0,
        models.MobileNetV2,
        dict(include_top=False, pooling="avg", stride2_padding="fixed"),
    ),
    "mobilenet_v2_alpha1.3_softmax_odd": (
        "MobileNetV2",
        dict(alpha=1.3, input_shape=(35, 35, 3), classes=5, classifier_activation="softmax"),
        [(35, 35)],
        1.0,
        models.MobileNetV2,
        dict(num_classes=5, stride2_padding="same"),
    ),
    "efficientnet_b0_odd": (
        "EfficientNetB0",
        dict(input_shape=(33, 33, 3), classes=6),
        [(33, 33)],
        255.0,
        models.EfficientNetB0,
        dict(num_classes=6, include_preprocessing=True, stride2_padding="same"),
    ),
    "xception": (
        "Xception",
        dict(input_shape=(71, 71, 3), classes=6),
        [(71, 71)],
        1.0,
        models.Xception,
        dict(num_classes=6),
    ),
    "mobilenet_v3_small_alpha0.75": (
        "MobileNetV3Small",
        dict(alpha=0.75, input_shape=(32, 32, 3), classes=5),
        [(32, 32)],
        255.0,
        models.MobileNetV3Small,
        dict(alpha=0.75, num_classes=5, dropout_rate=0.2, include_preprocessing=True),
    ),
    "mobilenet_v3_large_minimalistic_features": (
        "MobileNetV3Large",
        dict(minimalistic=True, include_top=False, pooling="avg"),
        [(33, 35)],
        255.0,
        models.MobileNetV3Large,
        dict(minimalistic=True, include_top=False, stride2_padding="fixed"),
    ),
    **{
        f"efficientnet_b{k}": (
            f"EfficientNetB{k}",
            dict(input_shape=(32, 32, 3), classes=4),
            [(32, 32)],
            255.0,
            getattr(models, f"EfficientNetB{k}"),
            dict(num_classes=4, stride2_padding="same"),
        )
        # B1 (deeper) and B3 (deeper and wider: both roundings); B2 and B4-B7 are
        # the same code at other coefficients, their structure checked by
        # test_param_counts_equal_keras (logits of all seven cost ~5 CPU-minutes)
        for k in (1, 3)
    },
    "convnext_tiny": (
        "ConvNeXtTiny",
        dict(input_shape=(32, 32, 3), classes=3),
        [(32, 32)],
        255.0,
        models.ConvNeXt,
        dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), include_preprocessing=True),
    ),
}


@functools.cache
def imported(case):
    """Builds, randomizes and converts one Keras model: (keras model, module, variables)."""
    factory, kwargs, sizes, scale, _, _ = CASES[case]
    seed = sorted(CASES).index(case)
    rng = np.random.default_rng(seed)
    kwargs = {"classifier_activation": None, **kwargs}
    keras_model = build(getattr(keras.applications, factory), seed=seed, **kwargs)
    deep = factory.startswith("EfficientNetB") and factory != "EfficientNetB0"
    calibration = images(rng, 64 if deep else 8, sizes[0], scale)
    randomize(keras_model, calibration, rng, 0.3 if deep else 1.0)
    return (keras_model, *convert(keras_model))


#: The largest relative logit error per case, for the record.
ERRORS: dict[str, float] = {}


@pytest.mark.parametrize("case", sorted(CASES))
def test_convert_matches_keras_inference(case):
    _, _, sizes, scale, cls, attributes = CASES[case]
    keras_model, module, variables = imported(case)
    assert type(module) is cls
    for name, value in attributes.items():
        assert getattr(module, name) == value, name
    rng = np.random.default_rng(100)
    apply = jax.jit(lambda v, x: module.apply(v, x, train=False))
    for size in sizes:
        x = images(rng, 2, size, scale)
        theirs, _ = keras_forward(keras_model, x)
        ours = apply(variables, x)
        assert ours.shape == theirs.shape
        # the output really depends on the input (no saturated or dead network)
        assert np.std(np.asarray(theirs), axis=0).mean() > 1e-3 * np.abs(theirs).mean()
        error = relative_error(ours, theirs)
        ERRORS[f"{case}@{size}"] = error
        assert error < RTOL, (case, size, error)


def test_convert_matches_keras_eager_call():
    """The plain eager ``keras_model(x, training=False)`` call, once."""
    keras_model, module, variables = imported("mobilenet_alpha0.5_dm2_odd")
    x = images(np.random.default_rng(7), 2, (33, 33), 1.0)
    with jax.numpy_rank_promotion("allow"):  # Keras' implicit bias broadcasting
        theirs = keras_model(x, training=False)
    ours = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
    assert relative_error(ours, theirs) < RTOL


def test_widths_recovered_from_keras():
    """The width multiplier comes back as the Keras model's alpha, with its widths."""
    module = imported("mobilenet_alpha0.5_dm2_odd")[1]
    assert models.mobilenet_v1_widths(module.width_multiplier) == models.mobilenet_v1_widths(0.5)
    assert module.width_multiplier == 0.5
    module = imported("mobilenet_v2_alpha0.35_features_unknown_size")[1]
    assert module.width_multiplier == 0.35  # 0.34 gives the same widths; the name says 0.35
    module = imported("mobilenet_v2_alpha1.3_softmax_odd")[1]
    assert models.mobilenet_v2_widths(module.width_multiplier) == models.mobilenet_v2_widths(1.3)
    assert module.width_multiplier == 1.3
    assert module.classifier_activation is jax.nn.softmax


def keras_counts(keras_model):
    """(trainable, batch-norm moving statistics) parameter counts of a Keras model."""
    trainable = sum(math.prod(w.shape) for w in keras_model.trainable_weights)
    moving = sum(
        math.prod(w.shape)
        for w in keras_model.non_trainable_weights
        if w.name in ("moving_mean", "moving_variance")
    )
    return trainable, moving


def our_counts(module, size):
    variables = jax.eval_shape(
        lambda x: module.init(jax.random.key(0), x, train=False),
        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
    )
    return tuple(
        sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables.get(c, {})))
        for c in ("params", "batch_stats")
    )


#: The default architectures (1000 classes, alpha 1) and two widths: (Keras factory,
#: kwargs, our module, its size for the abstract init).
COUNT_CASES = {
    "MobileNet": ("MobileNet", {}, models.MobileNetV1(), 32),
    "MobileNet_alpha0.25": ("MobileNet", dict(alpha=0.25), models.MobileNetV1(width_multiplier=0.25), 32),
    "MobileNetV2": ("MobileNetV2", {}, models.MobileNetV2(), 32),
    "MobileNetV2_alpha1.4": ("MobileNetV2", dict(alpha=1.4), models.MobileNetV2(width_multiplier=1.4), 32),
    "EfficientNetB0": ("EfficientNetB0", {}, models.EfficientNetB0(), 32),
    "Xception": ("Xception", {}, models.Xception(), 71),
    "MobileNetV3Small": ("MobileNetV3Small", {}, models.MobileNetV3Small(), 32),
    "MobileNetV3Small_minimalistic": ("MobileNetV3Small", dict(minimalistic=True), models.MobileNetV3Small(minimalistic=True), 32),
    "MobileNetV3Large": ("MobileNetV3Large", {}, models.MobileNetV3Large(), 32),
    "MobileNetV3Large_alpha0.75": ("MobileNetV3Large", dict(alpha=0.75), models.MobileNetV3Large(alpha=0.75), 32),
    **{f"EfficientNetB{k}": (f"EfficientNetB{k}", {}, getattr(models, f"EfficientNetB{k}")(), 32) for k in range(1, 8)},
    "ConvNeXtTiny": ("ConvNeXtTiny", {}, models.ConvNeXtTiny(), 32),
    "ConvNeXtSmall": ("ConvNeXtSmall", {}, models.ConvNeXtSmall(), 32),
    "ConvNeXtBase": ("ConvNeXtBase", {}, models.ConvNeXtBase(), 32),
}  # fmt: skip

#: Keras weights with no counterpart here: the (mean, variance, count) of the input
#: ``Normalization`` layer that EfficientNet includes (preprocessing, not parameters).
#: ConvNeXt's ``Normalization`` gets its mean and variance as constructor constants and
#: holds no weights, and MobileNetV3's ``Rescaling`` has none either.
NORMALIZATION_WEIGHTS = {"EfficientNet": 2 * 3 + 1}


@pytest.mark.parametrize("case", sorted(COUNT_CASES))
def test_param_counts_equal_keras(case):
    factory, kwargs, module, size = COUNT_CASES[case]
    keras_model = build_for_counting(
        getattr(keras.applications, factory), input_shape=(size, size, 3), **kwargs
    )
    trainable, moving = keras_counts(keras_model)
    params, batch_stats = our_counts(module, size)
    assert params == trainable
    assert batch_stats == moving
    extra = next((n for k, n in NORMALIZATION_WEIGHTS.items() if factory.startswith(k)), 0)
    assert params + batch_stats + extra == keras_model.count_params()
    COUNTS[case] = (params, keras_model.count_params())


#: (our parameter count, Keras' count_params) per case, for the record.
COUNTS: dict[str, tuple[int, int]] = {}


def test_convert_rejects_other_models():
    inputs = keras.Input((8, 8, 3))
    other = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="c")(inputs))
    with pytest.raises(ValueError, match="not one of the supported"):
        convert(other)
    with pytest.raises(TypeError, match="`keras_model`"):
        convert(object())
