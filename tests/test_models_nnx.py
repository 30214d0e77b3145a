"""The NNX architectures (``sepconv_jax.models.nnx``) against the linen ones.

The linen model is the reference: ``from_linen`` must give an NNX model whose
outputs equal the linen model's, in inference and in training mode (batch
statistics, with their updates; dropout and stochastic depth off, since the two APIs
draw their masks from different random streams), and every NNX class must hold
exactly the parameters and statistics of its linen class (names, shapes, counts).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from sepconv_jax import models
from sepconv_jax.models import nnx as models_nnx

#: XLA:CPU options that cut compile time on a small machine (code generation only).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

#: Every linen architecture with its default options.
ALL_CLASSES = [getattr(models, name) for name in models_nnx.architectures.__all__]

#: Small versions of every family, run numerically: (linen model, input side).
#: Dropout and stochastic depth are off so that training mode is deterministic.
SMALL = {
    "mobilenet_v1": (models.MobileNetV1(5, width_multiplier=0.25, dropout_rate=0.0), 32),
    "mobilenet_v1_full_conv": (
        models.MobileNetV1(5, width_multiplier=0.25, dropout_rate=0.0, full_convolution=True),
        32,
    ),
    "mobilenet_v2": (models.MobileNetV2(5, width_multiplier=0.35, stride2_padding="symmetric"), 33),
    "mobilenet_v3_small": (models.MobileNetV3Small(5, alpha=0.75, dropout_rate=0.0), 32),
    "mobilenet_v3_large_minimalistic": (
        models.MobileNetV3Large(5, minimalistic=True, alpha=0.5, dropout_rate=0.0),
        32,
    ),
    "efficientnet_shallow_narrow": (
        models.EfficientNet(
            5,
            width_coefficient=0.25,
            depth_coefficient=0.5,
            dropout_rate=0.0,
            drop_connect_rate=0.0,
            bn_epsilon=1e-5,
        ),
        33,
    ),
    "xception": (models.Xception(5), 71),
    "convnext": (models.ConvNeXt(5, depths=(1, 2), dims=(8, 16)), 32),
    "convnext_features": (
        models.ConvNeXt(depths=(1,), dims=(8,), include_top=False, pooling="max"),
        32,
    ),
}


def flat_shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
    return {tuple(map(str, k)): tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def linen_abstract(model, side=32):
    x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def nnx_abstract(model):
    return models_nnx.abstract_model(getattr(models_nnx, type(model).__name__), **options(model))


def options(model) -> dict:
    return {
        field.name: getattr(model, field.name)
        for field in dataclasses.fields(model)
        if field.init and field.name not in ("parent", "name")
    }


def nnx_collections(model) -> dict[str, dict]:
    out = {}
    for collection, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        state = nnx.to_flat_state(nnx.state(model, kind))
        flat = {tuple(map(str, p)): v.get_value() for p, v in state}
        if flat:
            out[collection] = traverse_util.unflatten_dict(flat)
    return out


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_every_architecture_has_the_linen_parameters(cls):
    """Names, shapes and counts of params and batch statistics equal the linen model's."""
    linen_model = cls(num_classes=10)
    theirs = linen_abstract(linen_model, 71 if cls is models.Xception else 32)
    ours = nnx_collections(nnx_abstract(linen_model))
    assert sorted(ours) == sorted(theirs)
    for collection in theirs:
        assert flat_shapes(ours[collection]) == flat_shapes(theirs[collection]), collection
    count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(ours["params"]))
    assert count == sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(theirs["params"]))


def test_nnx_classes_share_the_linen_names():
    assert set(models_nnx.architectures.__all__) <= set(models.__all__)
    for name in models_nnx.architectures.__all__:
        nnx_class = getattr(models_nnx, name)
        assert issubclass(nnx_class, nnx.Module)
        assert nnx_class.linen_class is getattr(models, name)


@functools.cache
def converted(case):
    """(linen model, variables with random statistics, NNX model, x) of a SMALL case."""
    model, side = SMALL[case]
    rng = np.random.default_rng(sorted(SMALL).index(case))
    x = jnp.asarray(rng.uniform(0, 255, (2, side, side + 2, 3)), jnp.float32)
    init = jax.jit(lambda x: model.init(jax.random.key(0), x), compiler_options=FAST_COMPILE)
    variables = init(x)
    if "batch_stats" in variables:  # non-trivial statistics: means near 0, variances near 1
        flat = traverse_util.flatten_dict(variables["batch_stats"])
        stats = {
            k: rng.normal(0.0, 0.2, v.shape) if k[-1] == "mean" else rng.uniform(0.5, 2.0, v.shape)
            for k, v in flat.items()
        }
        stats = {k: jnp.asarray(v, jnp.float32) for k, v in stats.items()}
        variables = {**variables, "batch_stats": traverse_util.unflatten_dict(stats)}
    return model, variables, models_nnx.from_linen(model, variables), x


@pytest.mark.parametrize("case", sorted(SMALL))
def test_from_linen_outputs_equal_linen_in_both_modes(case):
    model, variables, nnx_model, x = converted(case)
    mutable = ["batch_stats"] if "batch_stats" in variables else False

    def linen_run(variables, x):
        inference = model.apply(variables, x, train=False)
        training = model.apply(variables, x, train=True, mutable=mutable)
        if mutable:
            training, updates = training
        else:
            updates = {}
        return inference, training, updates

    nnx_model.eval()
    graph_eval, state = nnx.split(nnx_model)
    nnx_model.train()
    graph_train, _ = nnx.split(nnx_model)

    def nnx_run(state, x):
        inference = nnx.merge(graph_eval, state)(x)
        trained = nnx.merge(graph_train, state)
        training = trained(x)
        updates = nnx_collections(trained).get("batch_stats", {})
        return inference, training, ({"batch_stats": updates} if updates else {})

    theirs = jax.jit(linen_run, compiler_options=FAST_COMPILE)(variables, x)
    ours = jax.jit(nnx_run, compiler_options=FAST_COMPILE)(state, x)
    # the same layers in the same order: equal to float32 rounding of op fusion
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert jax.tree.structure(ours[2]) == jax.tree.structure(theirs[2])
    # the output depends on the input and on the mode (statistics differ)
    assert float(jnp.std(theirs[0], axis=0).mean()) > 0
    if mutable:
        assert not np.allclose(theirs[0], theirs[1])


def test_from_linen_keeps_options_and_weights():
    _, variables, nnx_model, _ = converted("mobilenet_v3_small")
    assert type(nnx_model) is models_nnx.MobileNetV3Small
    assert (nnx_model.alpha, nnx_model.num_classes, nnx_model.dropout_rate) == (0.75, 5, 0.0)
    np.testing.assert_array_equal(
        nnx_model.block3.se.reduce.kernel[...],
        variables["params"]["block3"]["se"]["reduce"]["kernel"],
    )
    np.testing.assert_array_equal(
        nnx_model.last_bn.var[...], variables["batch_stats"]["last_bn"]["var"]
    )


def test_nnx_stochastic_depth_is_per_sample_and_follows_the_mode():
    """In training mode each sample keeps its residual branch (scaled by 2) or drops it,
    with a new mask per call from the ``rngs`` stream; ``eval()`` stops dropping."""
    block = models_nnx.blocks.InvertedResidual(
        4, features=4, expand_ratio=1, drop_rate=0.5, rngs=nnx.Rngs(0)
    )
    x = jax.random.normal(jax.random.key(0), (64, 3, 3, 4))
    block.eval()
    inference = block(x)
    branch = inference - x  # running statistics: the branch without dropping
    block.train()
    block.set_attributes(use_running_average=True)  # dropout on, statistics fixed
    first, second = block(x), block(x)
    for y in (first, second):
        kept = np.all(np.isclose(y, x + 2 * branch, atol=1e-5), axis=(1, 2, 3))
        dropped = np.all(np.isclose(y, x, atol=1e-6), axis=(1, 2, 3))
        assert np.all(kept | dropped) and kept.any() and dropped.any()
    assert not np.allclose(first, second)


def test_from_linen_fills_every_leaf():
    """No abstract leaf is left: weights from linen, dropout streams from ``rngs``."""
    model = models.ConvNeXt(3, depths=(2,), dims=(8,), drop_path_rate=0.5, dropout_rate=0.5)
    variables = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))
    converted_model = models_nnx.from_linen(model, variables, rngs=nnx.Rngs(dropout=3))
    leaves = jax.tree.leaves(nnx.state(converted_model))
    assert leaves and all(isinstance(leaf, jax.Array) for leaf in leaves)
    assert isinstance(converted_model.stage0_block1.drop_path, nnx.Dropout)
    assert isinstance(converted_model.top_dropout, nnx.Dropout)


def test_from_linen_rejects_what_it_cannot_convert():
    model = models.MobileNetV2(4, width_multiplier=0.35)
    variables = linen_abstract(model)
    with pytest.raises(TypeError, match="`linen_model` must be one of"):
        models_nnx.from_linen(models.blocks.SqueezeExcite(), variables)
    with pytest.raises(TypeError, match="`variables`"):
        models_nnx.from_linen(model, [1, 2])
    other = linen_abstract(models.MobileNetV2(4, width_multiplier=0.5))
    with pytest.raises(ValueError, match="wrong shapes"):
        models_nnx.from_linen(model, other)
    with pytest.raises(ValueError, match="missing"):
        trimmed = dict(variables["params"])
        del trimmed["predictions"]
        models_nnx.from_linen(model, {**variables, "params": trimmed})
    with pytest.raises(ValueError, match="no conv1/kernel"):
        models_nnx.from_linen(model, {"params": {}})


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda r: models_nnx.MobileNetV2(0, rngs=r), ValueError, "`num_classes`"),
        (lambda r: models_nnx.MobileNetV3Small(alpha=-1.0, rngs=r), ValueError, "`alpha`"),
        (lambda r: models_nnx.EfficientNetB3(stride2_padding="valid", rngs=r), ValueError, "`stride2_padding`"),
        (lambda r: models_nnx.ConvNeXt(depths=(1, 1), dims=(8,), rngs=r), ValueError, "`depths`"),
        (lambda r: models_nnx.Xception(impl="magic", rngs=r), ValueError, "`impl`"),
        (lambda r: models_nnx.MobileNetV1(in_features=0, rngs=r), ValueError, "`in_features`"),
        (lambda r: models_nnx.MobileNetV1(rngs=0), TypeError, "`rngs`"),
        (lambda r: models_nnx.blocks.InvertedResidual(0, rngs=r), ValueError, "`in_features`"),
        (lambda r: models_nnx.blocks.ConvNeXtBlock(8, impl="x", rngs=r), ValueError, "`impl`"),
    ],
)  # fmt: skip
def test_nnx_options_are_checked_as_in_linen(make, error, match):
    with pytest.raises(error, match=match):
        nnx.eval_shape(lambda: make(nnx.Rngs(0)))


def test_nnx_input_checks():
    model = nnx.eval_shape(lambda: models_nnx.MobileNetV3Small(rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="`x` has shape"):
        model(jnp.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match="in_features=3"):
        model(jnp.zeros((1, 32, 32, 4)))
