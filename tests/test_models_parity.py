"""linen against NNX for every name of the registry (``sepconv_jax.models.spec.ARCHS``).

Both APIs run one forward per architecture, so for every registered name the NNX
model must hold exactly the linen model's parameters and batch statistics (names,
shapes, sharding metadata) and, given the same weights, compute the same outputs in
inference and in training mode (with the same batch-statistics updates). The linen
model is the reference; dropout is off so that training mode is deterministic. The
trees are compared for every row at its own options; the outputs on small inputs,
with the smallest width multiplier of the MobileNets, and the EfficientNet and
ConvNeXt rows at a quarter and an eighth of their widths (their depths, names and
other options as the row has them), to keep it quick. The outputs are computed for
every row with a block table of its own; the scaled rows (EfficientNet B1-B7,
ConvNeXt-S/B: B0's and ConvNeXt-T's forward with other width and depth numbers,
whose scaled trees the first test compares) are left to that test, since their
compiles alone would take a quarter of the suite's time.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from sepconv_jax import models
from sepconv_jax.models import nnx as models_nnx
from sepconv_jax.models import spec, speech_nnx

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

#: The smallest width multiplier of each row that has one.
SMALL_WIDTH = {"mobilenet_v1": 0.25, "mobilenet_v2": 0.35}
SMALL_WIDTH |= {"mobilenet_v3_small": 0.35, "mobilenet_v3_large": 0.35}
#: Dropout and stochastic depth off, per family (the option names differ).
NO_DROPOUT = {
    "efficientnet": {"dropout_rate": 0.0, "drop_connect_rate": 0.0},
    "convnext": {"dropout_rate": 0.0, "drop_path_rate": 0.0},
    "speech": {"block_dropout_rate": 0.0},
}


def _case(name: str) -> tuple[dict, tuple[int, ...]]:
    """(options, input shape) of ``name``'s numerical case."""
    arch = spec.ARCHS[name]
    options = dict(NO_DROPOUT.get(arch.family, {"dropout_rate": 0.0}))
    if name == "quartznet":
        return {"num_classes": 5, "repeat": 1, **options}, (2, 16, 12)
    if name == "matchboxnet":
        return {"num_classes": 5, "repeat": 2, "channels": 8, **options}, (2, 20, 10)
    if name in SMALL_WIDTH:
        options["width_multiplier"] = SMALL_WIDTH[name]
    if arch.family == "efficientnet":
        options["width_coefficient"] = arch.defaults["width_coefficient"] / 4
    if arch.family == "convnext":
        options["dims"] = tuple(d // 8 for d in arch.defaults["dims"])
    side = 71 if name == "xception" else 32
    return {"num_classes": 5, **options}, (2, side, side + 1, 3)


def _flat(tree: dict) -> dict[tuple[str, ...], jax.Array]:
    return {tuple(map(str, k)): v for k, v in traverse_util.flatten_dict(tree).items()}


def _nnx_tree(model: nnx.Module) -> dict[str, dict]:
    out = {}
    for collection, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        flat = {
            tuple(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, kind))
        }
        if flat:
            out[collection] = flat
    return out


def _random_statistics(variables: dict, seed: int) -> dict:
    """``variables`` with batch statistics drawn away from (0, 1), to make them matter."""
    if "batch_stats" not in variables:
        return variables
    rng = np.random.default_rng(seed)
    stats = {
        k: rng.normal(0.0, 0.2, v.shape) if k[-1] == "mean" else rng.uniform(0.5, 2.0, v.shape)
        for k, v in traverse_util.flatten_dict(variables["batch_stats"]).items()
    }
    stats = {k: jnp.asarray(v, jnp.float32) for k, v in stats.items()}
    return {**variables, "batch_stats": traverse_util.unflatten_dict(stats)}


@pytest.mark.parametrize("name", list(spec.ARCHS))
def test_every_registered_name_has_one_tree_in_both_apis(name):
    """At the row's own options, abstractly: the same names and shapes in both APIs."""
    arch = spec.ARCHS[name]
    linen_model = models.from_name(name)
    shape = (1, 16, 64) if arch.speech else (1, 71 if name == "xception" else 32, 32, 3)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    theirs = jax.eval_shape(lambda x: linen_model.init(jax.random.key(0), x), x)
    nnx_class = getattr(speech_nnx if arch.speech else models_nnx, arch.class_name)
    ours = _nnx_tree(models_nnx.abstract_model(nnx_class, in_features=shape[-1]))
    assert sorted(ours) == sorted(theirs)
    for collection, tree in theirs.items():
        expected = {k: tuple(v.shape) for k, v in _flat(tree).items()}
        assert {k: tuple(v.shape) for k, v in ours[collection].items()} == expected


#: Rows that only rescale another row's widths and depths (see the module docstring).
SCALED = {f"efficientnet_b{i}" for i in range(1, 8)} | {"convnext_small", "convnext_base"}


def test_scaled_rows_are_rescaled_base_rows():
    """The rows whose outputs are not recomputed share their base row's forward and
    options: only the scaling numbers differ."""
    bases = {"efficientnet": spec.ARCHS["efficientnet_b0"], "convnext": spec.ARCHS["convnext_tiny"]}
    for name in SCALED:
        arch = spec.ARCHS[name]
        base = bases[arch.family]
        assert arch.family_class == base.family_class
        assert set(arch.defaults) == set(base.defaults)
        assert arch.defaults != base.defaults


@pytest.mark.parametrize("name", [n for n in spec.ARCHS if n not in SCALED])
def test_every_registered_name_computes_the_same_in_both_apis(name):
    options, shape = _case(name)
    linen_model = models.from_name(name, **options)
    rng = np.random.default_rng(list(spec.ARCHS).index(name))
    x = jnp.asarray(rng.uniform(0, 255, shape) if len(shape) == 4 else rng.normal(size=shape))
    x = x.astype(jnp.float32)
    init = jax.jit(lambda x: linen_model.init(jax.random.key(0), x), compiler_options=FAST_COMPILE)
    variables = _random_statistics(init(x), seed=1)
    mutable = ["batch_stats"] if "batch_stats" in variables else []
    speech = spec.ARCHS[name].speech

    def linen_run(variables, x):
        inference = linen_model.apply(variables, x, train=False)
        training, updates = linen_model.apply(variables, x, train=True, mutable=mutable)
        return inference, training, updates.get("batch_stats", {})

    model = models_nnx.from_linen(linen_model, variables)
    assert type(model).__name__ == type(linen_model).__name__

    def nnx_run(graph, state, x):
        module = nnx.merge(graph, state)
        if speech:
            inference, training = module(x, train=False), module(x, train=True)
        else:
            module.eval()
            inference = module(x)
            module.train()
            training = module(x)
        stats = _nnx_tree(module).get("batch_stats", {})
        return inference, training, traverse_util.unflatten_dict(stats) if stats else {}

    graph, state = nnx.split(model)
    theirs = jax.jit(linen_run, compiler_options=FAST_COMPILE)(variables, x)
    ours = jax.jit(nnx_run, static_argnums=0, compiler_options=FAST_COMPILE)(graph, state, x)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert float(jnp.std(theirs[0], axis=0).mean()) > 0  # the output depends on the input
    if mutable:
        assert not np.allclose(theirs[0], theirs[1])  # and on the mode


def test_inverted_residual_shards_the_same_in_both_apis():
    """``model_axis`` reaches both APIs: the same partition specs, leaf for leaf."""
    options = dict(features=8, expand_ratio=6, se_ratio=0.25, model_axis="model")
    block = models.blocks.InvertedResidual(**options)
    x = jnp.ones((1, 6, 6, 8))
    variables = jax.eval_shape(lambda: block.init(jax.random.key(0), x))
    theirs = _flat(nn.get_partition_spec(variables)["params"])
    auto = jax.sharding.AxisType.Auto
    with jax.set_mesh(jax.make_mesh((1,), ("model",), (auto,))):
        nnx_block = models_nnx.blocks.InvertedResidual(8, **options, rngs=nnx.Rngs(0))
        specs = nnx.get_partition_spec(nnx.state(nnx_block, nnx.Param))
    ours = {k: v.get_value() for k, v in nnx.to_flat_state(specs)}
    assert ours == theirs
    sharded = {k: v for k, v in ours.items() if any(a is not None for a in v)}
    assert set(sharded) == {
        ("expand", "kernel"),
        ("depthwise", "kernel"),
        ("project", "kernel"),
    }
