"""The reference architectures: structure, parameter counts, training and cost.

Expected values come from the papers (layer tables, closed-form parameter counts)
or from definitions written out here; the Keras comparisons (parameter counts of
``keras.applications`` and exact imports) are in ``test_keras_import.py``.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sepconv_jax import cost, models
from sepconv_jax.models import blocks

#: XLA:CPU options that cut the compile time of the whole-model programs severalfold
#: on a small CI machine; they change code generation, not the numerics tested here.
#: Unoptimized code runs slowly, so the model with the most compute (Xception) keeps
#: the backend optimizations and only skips the expensive LLVM passes.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
LIGHT_COMPILE = {"xla_llvm_disable_expensive_passes": True}


def sds(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def abstract_init(model, shape):
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), sds(*shape))


# ----------------------------------------------------------------------------- small configs

#: (model, input side) small enough to run on CPU in a test.
SMALL = {
    "mobilenet_v1": (models.MobileNetV1(num_classes=5, width_multiplier=0.25), 32),
    "mobilenet_v2": (models.MobileNetV2(num_classes=5, width_multiplier=0.35), 32),
    "efficientnet_b0": (models.EfficientNetB0(num_classes=5), 32),
    "xception": (models.Xception(num_classes=5), 71),
}


# ----------------------------------------------------------------------------- parameter counts


def _v1_weights(width: float, full_convolution: bool, classes: int = 1000) -> int:
    """Weights of MobileNet (Howard et al., 2017, Table 1) plus BN and classifier bias."""
    stem = int(32 * width)
    widths = [stem] + [int(c * width) for c in (64, 128, 128, 256, 256, *[512] * 6, 1024, 1024)]
    total = 27 * stem + 2 * stem  # 3x3x3 stem, its batch norm
    for cin, cout in itertools.pairwise(widths):
        if full_convolution:
            total += 9 * cin * cout + 2 * cout
        else:
            total += 9 * cin + 2 * cin + cin * cout + 2 * cout
    return total + widths[-1] * classes + classes


@pytest.mark.parametrize("full_convolution", [False, True])
@pytest.mark.parametrize("width", [1.0, 0.75, 0.5, 0.25])
def test_mobilenet_v1_param_count_closed_form(width, full_convolution):
    model = models.MobileNetV1(width_multiplier=width, full_convolution=full_convolution)
    variables = abstract_init(model, (1, 224, 224, 3))
    assert count(variables["params"]) == _v1_weights(width, full_convolution)


def test_mobilenet_v1_param_count_paper_table4():
    """Table 4: 4.2M parameters separable, 29.3M with full convolutions."""
    sep = count(abstract_init(models.MobileNetV1(), (1, 224, 224, 3))["params"])
    full = count(
        abstract_init(models.MobileNetV1(full_convolution=True), (1, 224, 224, 3))["params"]
    )
    assert round(sep / 1e6, 1) == 4.2
    assert round(full / 1e6, 1) == 29.3


def test_mobilenet_v2_paper_table2_shapes():
    """Feature map sizes and channels after each stage of Table 2 at 224."""
    model = models.MobileNetV2(include_top=False)
    variables = abstract_init(model, (1, 224, 224, 3))
    stage_last = {0: (112, 16), 2: (56, 24), 5: (28, 32), 9: (14, 64), 12: (14, 96)}
    stage_last |= {15: (7, 160), 16: (7, 320)}
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
        variables,
        sds(1, 224, 224, 3),
    )
    inter = state["intermediates"]
    for block, (side, channels) in stage_last.items():
        (out,) = inter[f"block{block}"]["__call__"]
        assert out.shape == (1, side, side, channels), block
    (features,) = inter["__call__"]
    assert features.shape == (1, 7, 7, 1280)


def test_efficientnet_b0_paper_table1_stages():
    """Table 1 of Tan & Le: stage resolutions, channels and layer counts at 224."""
    model = models.EfficientNetB0(include_top=False)
    variables = abstract_init(model, (1, 224, 224, 3))
    table1 = [  # (stage, layers, output side, channels)
        (2, 1, 112, 16),
        (3, 2, 56, 24),
        (4, 2, 28, 40),
        (5, 3, 14, 80),
        (6, 3, 14, 112),
        (7, 4, 7, 192),
        (8, 1, 7, 320),
    ]
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
        variables,
        sds(1, 224, 224, 3),
    )
    inter = state["intermediates"]
    for i, (_, layers, side, channels) in enumerate(table1, 1):
        names = [n for n in inter if n.startswith(f"block{i}")]
        assert len(names) == layers
        (out,) = inter[names[-1]]["__call__"]
        assert out.shape == (1, side, side, channels)
    (features,) = inter["__call__"]
    assert features.shape == (1, 7, 7, 1280)


def test_xception_paper_fig5_flows():
    """Fig. 5 of Chollet: 19x19x728 after the entry flow and after the middle flow (299)."""
    model = models.Xception(include_top=False)
    variables = abstract_init(model, (1, 299, 299, 3))
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
        variables,
        sds(1, 299, 299, 3),
    )
    inter = state["intermediates"]
    assert inter["block4"]["__call__"][0].shape == (1, 19, 19, 728)  # entry flow
    assert inter["block12"]["__call__"][0].shape == (1, 19, 19, 728)  # middle flow
    assert inter["__call__"][0].shape == (1, 10, 10, 2048)  # exit flow
    # 36 convolutional layers: 2 standard + 34 separable (the paper's count).
    params = variables["params"]
    separable = [
        p for p in jax.tree_util.tree_flatten_with_path(params)[0] if "pointwise" in str(p[0])
    ]
    assert len(separable) == 34
    assert "kernel" in params["block1_conv1"] and "kernel" in params["block1_conv2"]


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("name", sorted(SMALL))
def test_features_pooling_and_odd_sizes(name):
    """Any size the architecture allows, odd and non-square included; features and pooling."""
    model, side = SMALL[name]
    channels = {"mobilenet_v1": 256, "mobilenet_v2": 1280, "efficientnet_b0": 1280}
    channels["xception"] = 2048
    x = sds(2, side + 3, 2 * side + 1, 3)
    v = abstract_init(model, x.shape)
    assert jax.eval_shape(lambda v, x: model.apply(v, x), v, x).shape == (2, 5)
    feats = model.clone(include_top=False)
    out = jax.eval_shape(lambda v, x: feats.apply(v, x), v, x)
    assert out.ndim == 4 and out.shape[0] == 2 and out.shape[-1] == channels[name]
    assert out.shape[1] < out.shape[2]
    pooled = feats.clone(pooling="max")
    assert jax.eval_shape(lambda v, x: pooled.apply(v, x), v, x).shape == (2, channels[name])


def test_bfloat16_compute():
    x = jnp.linspace(0, 1, 2 * 32 * 32 * 3).reshape(2, 32, 32, 3)
    mixed = models.MobileNetV1(num_classes=3, width_multiplier=0.25, dtype=jnp.bfloat16)
    v = abstract_init(mixed, x.shape)
    assert {leaf.dtype for leaf in jax.tree.leaves(v)} == {jnp.dtype(jnp.float32)}
    half = mixed.clone(param_dtype=jnp.bfloat16)
    v16 = abstract_init(half, x.shape)
    assert {leaf.dtype for leaf in jax.tree.leaves(v16["params"])} == {jnp.dtype(jnp.bfloat16)}

    def run(x):
        variables = half.init(jax.random.key(0), x, train=False)
        ref = mixed.clone(dtype=jnp.float32).apply(variables, x.astype(jnp.float32))
        return half.apply(variables, x, train=False), ref

    y, ref = jax.jit(run, compiler_options=FAST_COMPILE)(x)
    assert y.dtype == jnp.bfloat16 and y.shape == (2, 3)
    # bf16 keeps about 3 significant digits; through 28 layers a few percent remain
    np.testing.assert_allclose(y.astype(jnp.float32), ref, rtol=0.1, atol=0.1)


def test_train_mode_updates_batch_stats_and_needs_dropout_rng():
    from flax import errors

    model = models.MobileNetV1(num_classes=3, width_multiplier=0.25, dropout_rate=0.5)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    v = abstract_init(model, x.shape)
    with pytest.raises(errors.InvalidRngError):
        jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), v)

    def run(x):
        v = model.init(jax.random.key(0), x, train=False)
        once, again = model.apply(v, x), model.apply(v, x)
        _, state = model.apply(
            v,
            x,
            train=True,
            mutable=["batch_stats", "intermediates"],
            capture_intermediates=lambda mdl, _: mdl.name == "conv1",
            rngs={"dropout": jax.random.key(2)},
        )
        return once, again, state

    once, again, state = jax.jit(run, compiler_options=FAST_COMPILE)(x)
    chex.assert_trees_all_equal(once, again)  # inference is deterministic
    (conv1,) = state["intermediates"]["conv1"]["__call__"]
    conv1 = np.asarray(conv1, np.float64)
    new = state["batch_stats"]["conv1_bn"]
    # Keras' convention: running = momentum * running + (1 - momentum) * batch moment
    # (biased variance), from the initial mean 0 and variance 1, momentum 0.99.
    np.testing.assert_allclose(new["mean"], 0.01 * conv1.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        new["var"], 0.99 + 0.01 * conv1.var(axis=(0, 1, 2)), rtol=1e-5, atol=1e-7
    )


def test_stochastic_depth_is_per_sample_and_inactive_in_inference():
    block = blocks.InvertedResidual(features=4, expand_ratio=1, drop_rate=0.5)
    x = jax.random.normal(jax.random.key(0), (64, 3, 3, 4))
    v = block.init(jax.random.key(1), x)
    branch = blocks.InvertedResidual(features=4, expand_ratio=1, id_skip=False)
    residual = branch.apply(v, x)
    np.testing.assert_allclose(block.apply(v, x), residual + x, rtol=1e-6, atol=1e-6)
    y, _ = block.apply(
        v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(3)}
    )
    r_train, _ = branch.apply(v, x, train=True, mutable=["batch_stats"])
    # each sample keeps its whole branch scaled by 1 / (1 - rate), or drops it
    kept = np.all(np.isclose(y, x + 2 * r_train, atol=1e-5), axis=(1, 2, 3))
    dropped = np.all(np.isclose(y, x, atol=1e-6), axis=(1, 2, 3))
    assert np.all(kept | dropped) and kept.any() and dropped.any()


def test_squeeze_excite_closed_form():
    """y = x * sigmoid(W2 swish(W1 mean(x) + b1) + b2), written out in NumPy."""
    se = blocks.SqueezeExcite(features=2)
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 5)).astype(np.float32)
    v = se.init(jax.random.key(0), x)
    p = jax.tree.map(np.asarray, v["params"])
    m = x.astype(np.float64).mean(axis=(1, 2))
    h = m @ p["reduce"]["kernel"] + p["reduce"]["bias"]
    h = h / (1 + np.exp(-h))
    g = 1 / (1 + np.exp(-(h @ p["expand"]["kernel"] + p["expand"]["bias"])))
    np.testing.assert_allclose(se.apply(v, x), x * g[:, None, None, :], rtol=1e-5, atol=1e-6)


def test_conv_padding_rules():
    # TF "SAME" for stride 2 on even and odd sizes is Keras' correct_pad
    assert blocks.conv_padding(3, 2, "same") == "SAME"
    assert blocks.conv_padding(3, 2, "fixed") == ((0, 1), (0, 1))
    assert blocks.conv_padding(5, 2, "fixed") == ((1, 2), (1, 2))
    assert blocks.conv_padding(5, 1, "fixed") == "SAME"
    with pytest.raises(ValueError, match="`stride2_padding`"):
        blocks.conv_padding(3, 2, "valid")


def test_make_divisible_by_hand():
    """The rounding rule, worked by hand: nearest multiple of 8, at least 8, >= 90%."""
    assert models.make_divisible(32 * 0.35) == 16  # 11.2 -> 8 < 0.9 * 11.2 -> 16
    assert models.make_divisible(1280 * 1.4) == 1792  # already a multiple of 8
    assert models.make_divisible(20) == 24  # 20 + 4 = 24 -> 24
    assert models.make_divisible(4) == 8  # at least the divisor
    widths = models.mobilenet_v2_widths(1.0)
    # Table 2 of Sandler et al.: 32, then 16, 24 x2, 32 x3, 64 x4, 96 x3, 160 x3, 320, 1280
    assert widths == (32, 16, 24, 24, 32, 32, 32, *[64] * 4, *[96] * 3, *[160] * 3, 320, 1280)
    assert models.mobilenet_v2_widths(0.5)[-1] == 1280  # the last conv only grows


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_argument():
    x = jnp.ones((1, 32, 32, 3))
    with pytest.raises(ValueError, match="`x` has shape"):
        models.MobileNetV1().init(jax.random.key(0), jnp.ones((32, 32, 3)))
    with pytest.raises(ValueError, match="`num_classes`"):
        abstract_init(models.MobileNetV2(num_classes=0), x.shape)
    with pytest.raises(ValueError, match="`width_multiplier`"):
        abstract_init(models.MobileNetV1(width_multiplier=-1.0), x.shape)
    with pytest.raises(ValueError, match="`pooling`"):
        abstract_init(models.MobileNetV1(include_top=False, pooling="mean"), x.shape)
    with pytest.raises(ValueError, match="`dropout_rate`"):
        abstract_init(models.EfficientNetB0(dropout_rate=1.5), x.shape)
    with pytest.raises(ValueError, match="`input_mean`"):
        abstract_init(models.EfficientNetB0(), (1, 32, 32, 1))
    with pytest.raises(ValueError, match=">= 7"):
        abstract_init(models.Xception(), (1, 6, 6, 3))
    with pytest.raises(TypeError, match="`depth_multiplier`"):
        abstract_init(models.MobileNetV1(depth_multiplier=1.5), x.shape)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: models.MobileNetV2(num_classes=0), ValueError, "`num_classes` must be >= 1"),
        (lambda: models.Xception(num_classes=2.5), TypeError, "`num_classes`"),
        (lambda: models.EfficientNetB0(include_top="yes"), TypeError, "`include_top`"),
        (lambda: models.Xception(include_top=False, pooling="mean"), ValueError, "`pooling`"),
        (lambda: models.MobileNetV2(dropout_rate=1.0), ValueError, "`dropout_rate`"),
        (lambda: models.MobileNetV1(classifier_activation="softmax"), TypeError, "`classifier_"),
        (lambda: models.MobileNetV1(width_multiplier=0.0), ValueError, "`width_multiplier`"),
        (lambda: models.MobileNetV2(width_multiplier=True), TypeError, "`width_multiplier`"),
        (lambda: models.MobileNetV1(depth_multiplier=0), ValueError, "`depth_multiplier`"),
        (lambda: models.MobileNetV1(stride2_padding="valid"), ValueError, "`stride2_padding`"),
        (lambda: models.EfficientNetB0(drop_connect_rate=-0.1), ValueError, "`drop_connect_rate`"),
        (lambda: models.EfficientNetB0(depth_coefficient=0), ValueError, "`depth_coefficient`"),
        (lambda: models.EfficientNetB0(include_preprocessing=1), TypeError, "`include_prepro"),
        (lambda: models.Xception(impl="magic"), ValueError, "`impl` must be one of"),
        (lambda: models.MobileNetV2(dtype=jnp.int32), TypeError, "`dtype`"),
        (lambda: models.MobileNetV1(param_dtype=None), TypeError, "`param_dtype`"),
        (lambda: models.EfficientNetB0(precision="max"), ValueError, "`precision`"),
        (lambda: blocks.InvertedResidual(impl="cuda"), ValueError, "`impl` must be one of"),
        (lambda: models.MobileNetV3Small(alpha=0), ValueError, "`alpha`"),
        (lambda: models.MobileNetV3Large(minimalistic="no"), TypeError, "`minimalistic`"),
        (lambda: models.MobileNetV3Large(bn_epsilon=0.0), ValueError, "`bn_epsilon`"),
        (lambda: models.EfficientNetB5(stride2_padding="torch"), ValueError, "'symmetric'"),
        (lambda: models.ConvNeXt(depths=(3, 3), dims=(96,)), ValueError, "`depths` has 2 stages"),
        (lambda: models.ConvNeXt(depths=3), TypeError, "`depths`"),
        (lambda: models.ConvNeXtTiny(drop_path_rate=1.0), ValueError, "`drop_path_rate`"),
        (lambda: models.ConvNeXtSmall(layer_scale_init_value=-1.0), ValueError, "`layer_scale"),
    ],
)
def test_bad_options_fail_at_construction(make, error, match):
    """A bad option fails where the model is written, before any input is seen."""
    with pytest.raises(error, match=match):
        make()


def test_bad_options_fail_in_clone_and_replace():
    model = models.MobileNetV1(num_classes=10, width_multiplier=0.25)
    with pytest.raises(ValueError, match="`num_classes`"):
        model.clone(num_classes=-1)
    with pytest.raises(ValueError, match="`width_multiplier`"):
        dataclasses.replace(model, width_multiplier=-0.5)


@pytest.mark.parametrize(
    "cls",
    [
        models.MobileNetV1,
        models.MobileNetV2,
        models.EfficientNetB0,
        models.Xception,
        models.MobileNetV3Small,
        models.MobileNetV3Large,
        models.EfficientNetB3,
        models.EfficientNetB7,
        models.ConvNeXtTiny,
    ],
)
def test_shared_fields_defaults_and_keywords(cls):
    """The fields every model shares come first (``num_classes`` positional), each
    model's own follow, and the numerics fields are keyword-only."""
    shared = ["num_classes", "include_top", "pooling", "dropout_rate", "classifier_activation"]
    numerics = {"dtype", "param_dtype", "precision", "impl"}
    signature = inspect.signature(cls)
    positional = [n for n, p in signature.parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    keyword_only = {n for n, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert positional[: len(shared)] == shared
    assert keyword_only == numerics
    assert cls(7).num_classes == 7
    # the defaults of Keras' applications (dropout: MobileNet 1e-3, EfficientNet 0.2 to
    # 0.5 growing with the variant, MobileNetV3 0.2)
    dropout = {"MobileNetV1": 1e-3, "EfficientNetB0": 0.2, "EfficientNetB3": 0.3}
    dropout |= {"EfficientNetB7": 0.5, "MobileNetV3Small": 0.2, "MobileNetV3Large": 0.2}
    dropout = dropout.get(cls.__name__, 0.0)
    assert cls().dropout_rate == dropout
    model = cls(num_classes=3, impl="xla", dtype=jnp.bfloat16)
    changed = dataclasses.replace(model, num_classes=4)
    assert (changed.num_classes, changed.impl, changed.dtype) == (4, "xla", jnp.bfloat16)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_few_optax_steps_lower_the_loss(name):
    """Five Adam steps on one random batch (train mode: batch statistics, dropout)."""
    model, side = SMALL[name]
    if name == "efficientnet_b0":
        # the family's scaling rules at half width and depth (10 of B0's 16 blocks):
        # the same MBConv, squeeze-excite, swish and drop-connect code, compiled in
        # about half the time
        model = model.clone(width_coefficient=0.5, depth_coefficient=0.5)
    key_x, key_y, key = jax.random.split(jax.random.key(0), 3)
    x = jax.random.uniform(key_x, (2, side, side, 3))
    if name == "efficientnet_b0":
        x = 255 * x  # its preprocessing expects [0, 255]
    labels = jax.random.randint(key_y, (2,), 0, 5)
    tx = optax.adam(1e-3)

    def train(x, labels, key):
        variables = model.init(key, x, train=False)

        def loss_fn(params, batch_stats, rng):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": rng},
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates["batch_stats"]

        def step(carry, rng):
            params, batch_stats, opt_state = carry
            (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, batch_stats, rng
            )
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

        params = variables["params"]
        carry = (params, variables["batch_stats"], tx.init(params))
        return jax.lax.scan(step, carry, jax.random.split(key, 5))[1]

    options = LIGHT_COMPILE if name == "xception" else FAST_COMPILE
    losses = np.asarray(jax.jit(train, compiler_options=options)(x, labels, key))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


# ----------------------------------------------------------------------------- cost


def _mult_adds_by_definition(model, variables, shape) -> int:
    """Mult-adds of every layer with a kernel, from the definition: each output
    position of a layer costs one mult-add per kernel entry (``prod(kernel.shape)``;
    both kernels for a separable conv), the paper's convention. Output positions are
    read from each layer's output (``capture_intermediates``)."""
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
        variables,
        sds(*shape),
    )
    inter = state["intermediates"]
    kernels = {"kernel", "depthwise_kernel", "pointwise_kernel"}
    layers: dict[tuple[str, ...], int] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]:
        keys = tuple(k.key for k in path)
        if keys[-1] in kernels:
            layers[keys[:-1]] = layers.get(keys[:-1], 0) + math.prod(leaf.shape)
    total = 0
    for layer, per_position in layers.items():
        node = inter
        for key in layer:
            node = node[key]
        (out,) = node["__call__"]
        total += math.prod(out.shape[:-1]) * per_position
    return total


@pytest.mark.parametrize("name", sorted(SMALL))
def test_cost_profile_works_on_every_model(name):
    model, side = SMALL[name]
    p = cost.profile(model, sds(1, side, side, 3), train=False)
    variables = abstract_init(model, (1, side, side, 3))
    assert p.params == count(variables["params"])
    assert p.mult_adds == _mult_adds_by_definition(model, variables, (1, side, side, 3))
    assert "depthwise" in p.by_kind and "pointwise" in p.by_kind
    # every depthwise step of the architecture is counted as a depthwise operation
    depthwise = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]:
        keys = [k.key for k in path]
        if keys[-1] == "depthwise_kernel" or keys[-2:] == ["depthwise", "kernel"]:
            depthwise += math.prod(leaf.shape)
    assert p.by_kind["depthwise"].params == depthwise


def test_models_are_linen_modules_with_public_blocks():
    for cls in (models.MobileNetV1, models.MobileNetV2, models.EfficientNetB0, models.Xception):
        assert issubclass(cls, nn.Module)
    assert models.MBConv is models.InvertedResidual
    assert set(models.__all__) >= {
        "MobileNetV1",
        "MobileNetV2",
        "EfficientNetB0",
        "Xception",
        "DepthwiseSeparableBlock",
        "InvertedResidual",
        "SqueezeExcite",
        "XceptionBlock",
    }


def test_from_name_builds_each_architecture_with_its_options():
    expected = {
        "mobilenet_v1": models.MobileNetV1,
        "mobilenet_v2": models.MobileNetV2,
        "efficientnet_b0": models.EfficientNetB0,
        "xception": models.Xception,
        "mobilenet_v3_small": models.MobileNetV3Small,
        "mobilenet_v3_large": models.MobileNetV3Large,
        **{f"efficientnet_b{k}": getattr(models, f"EfficientNetB{k}") for k in range(1, 8)},
        "convnext_tiny": models.ConvNeXtTiny,
        "convnext_small": models.ConvNeXtSmall,
        "convnext_base": models.ConvNeXtBase,
    }
    assert models.NAMES == tuple(expected)
    for name, cls in expected.items():
        model = models.from_name(name, num_classes=7)
        assert type(model) is cls and model.num_classes == 7
    v2 = models.from_name("mobilenet_v2", width_multiplier=0.35)
    assert v2.width_multiplier == 0.35
    v1 = models.from_name("mobilenet_v1", width_multiplier=0.5, full_convolution=True)
    assert (v1.width_multiplier, v1.full_convolution) == (0.5, True)
    assert models.from_name("mobilenet_v3_large", width_multiplier=0.75).alpha == 0.75


@pytest.mark.parametrize(
    "name, options, match",
    [
        (
            "resnet50",
            {},
            "`name` must be one of mobilenet_v1, mobilenet_v2, efficientnet_b0, xception, "
            "mobilenet_v3_small",
        ),
        ("xception", {"full_convolution": True}, "mobilenet_v1 only"),
        ("efficientnet_b0", {"width_multiplier": 0.5}, "efficientnet_b0 has no width multiplier"),
    ],
)
def test_from_name_rejects_unknown_names_and_options(name, options, match):
    with pytest.raises(ValueError, match=match):
        models.from_name(name, **options)
