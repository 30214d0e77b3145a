"""Checkpoints lose nothing: msgpack and Orbax round trips are bitwise exact.

Every module, and a small model built from all three, in float32 and bfloat16
params, is saved and restored; every restored array must have the same dtype,
shape and bytes as the original. The params are seeded with values that a lossy
path would change: -0.0, +-inf, NaN, the smallest subnormal and the largest finite.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp  # installed with flax
import pytest
from flax import nnx, serialization

from sepconv_jax import linen as sl
from sepconv_jax import nnx as sn

DTYPES = [jnp.float32, jnp.bfloat16]
X = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)


def _random_like(tree, seed=0):
    """Random arrays with the shapes and dtypes of an abstract (``eval_shape``) tree."""
    gen = np.random.default_rng(seed)
    return jax.tree.map(
        lambda a: jnp.asarray(gen.standard_normal(a.shape).astype(np.float32), a.dtype), tree
    )


def _linen_variables(module, seed=0):
    """Random variables with the structure ``module.init`` gives, without running it."""
    return _random_like(jax.eval_shape(module.init, jax.random.key(0), X), seed)


def _nnx_build(make, seed=0):
    """A model from ``make`` with random params, built without running the initializers."""
    graphdef, params = nnx.split(nnx.eval_shape(make), nnx.Param)
    return nnx.merge(graphdef, _random_like(params, seed))


def _with_special_values(tree):
    """Writes -0.0, +-inf, NaN, the smallest subnormal and the largest finite into each leaf."""

    def poke(a):
        a = np.array(a)
        info = jnp.finfo(a.dtype)
        specials = np.array(
            [-0.0, np.inf, -np.inf, np.nan, float(info.smallest_subnormal), float(info.max)]
        ).astype(a.dtype)
        flat = a.reshape(-1)
        flat[: min(flat.size, specials.size)] = specials[: flat.size]
        return jnp.asarray(flat.reshape(a.shape))

    return jax.tree.map(poke, tree)


def _assert_bitwise_equal(restored, original):
    leaves_r, tree_r = jax.tree.flatten(restored)
    leaves_o, tree_o = jax.tree.flatten(original)
    assert tree_r == tree_o
    assert leaves_o
    for r, o in zip(leaves_r, leaves_o, strict=True):
        r, o = np.asarray(r), np.asarray(o)
        assert r.dtype == o.dtype and r.shape == o.shape, (r.dtype, o.dtype, r.shape, o.shape)
        assert r.tobytes() == o.tobytes()


class _LinenNet(nn.Module):
    """A small model built from all three modules."""

    param_dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
        opts = dict(param_dtype=self.param_dtype, dtype=jnp.float32)
        x = sl.DepthwiseConv((3, 3), depth_multiplier=2, **opts)(x)
        x = sl.PointwiseConv(5, **opts)(nn.relu(x))
        return sl.SeparableConv(4, (3, 3), strides=2, use_depthwise_bias=True, **opts)(x)


def _linen_models(param_dtype):
    # dtype=float32: computation in float32 whatever the param dtype.
    opts = dict(param_dtype=param_dtype, dtype=jnp.float32)
    return {
        "DepthwiseConv": sl.DepthwiseConv((3, 3), depth_multiplier=2, **opts),
        "PointwiseConv": sl.PointwiseConv(5, **opts),
        "SeparableConv": sl.SeparableConv(4, (3, 3), use_depthwise_bias=True, **opts),
        "model": _LinenNet(param_dtype),
    }


class _NNXNet(nnx.Module):
    def __init__(self, param_dtype, rngs):
        opts = dict(param_dtype=param_dtype, dtype=jnp.float32, rngs=rngs)
        self.dw = sn.DepthwiseConv(3, (3, 3), depth_multiplier=2, **opts)
        self.pw = sn.PointwiseConv(6, 5, **opts)
        self.sep = sn.SeparableConv(5, 4, (3, 3), strides=2, use_depthwise_bias=True, **opts)

    def __call__(self, x):
        return self.sep(self.pw(jax.nn.relu(self.dw(x))))


def _nnx_models(param_dtype):
    opts = dict(param_dtype=param_dtype, dtype=jnp.float32)
    return {
        "DepthwiseConv": lambda: sn.DepthwiseConv(
            3, (3, 3), depth_multiplier=2, **opts, rngs=nnx.Rngs(0)
        ),
        "PointwiseConv": lambda: sn.PointwiseConv(3, 5, **opts, rngs=nnx.Rngs(0)),
        "SeparableConv": lambda: sn.SeparableConv(
            3, 4, (3, 3), use_depthwise_bias=True, **opts, rngs=nnx.Rngs(0)
        ),
        "model": lambda: _NNXNet(param_dtype, nnx.Rngs(0)),
    }


@pytest.mark.parametrize("param_dtype", DTYPES, ids=["float32", "bfloat16"])
def test_linen_msgpack_round_trip(param_dtype):
    for name, module in _linen_models(param_dtype).items():
        variables = _linen_variables(module)
        assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(param_dtype)}, name
        variables = _with_special_values(variables)
        blob = serialization.to_bytes(variables)
        template = jax.tree.map(jnp.zeros_like, variables)
        _assert_bitwise_equal(serialization.from_bytes(template, blob), variables)
        # The template-free path: msgpack state dict.
        raw = serialization.msgpack_restore(serialization.msgpack_serialize(variables))
        _assert_bitwise_equal(raw, serialization.to_state_dict(variables))


@pytest.mark.parametrize("param_dtype", DTYPES, ids=["float32", "bfloat16"])
def test_linen_restored_model_computes_the_same(param_dtype):
    model = _linen_models(param_dtype)["model"]
    variables = _linen_variables(model, seed=1)
    restored = serialization.from_bytes(
        jax.tree.map(jnp.zeros_like, variables), serialization.to_bytes(variables)
    )
    apply = jax.jit(model.apply)
    _assert_bitwise_equal(apply(restored, X), apply(variables, X))


@pytest.mark.parametrize("param_dtype", DTYPES, ids=["float32", "bfloat16"])
def test_nnx_msgpack_round_trip(param_dtype):
    for name, make in _nnx_models(param_dtype).items():
        model = _nnx_build(make)
        state = _with_special_values(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        blob = serialization.msgpack_serialize(state)
        restored = serialization.msgpack_restore(blob)
        _assert_bitwise_equal(restored, state)
        # Load into a fresh model built with another seed.
        fresh = _nnx_build(make, seed=1)
        nnx.replace_by_pure_dict(params := nnx.state(fresh, nnx.Param), restored)
        nnx.update(fresh, params)
        _assert_bitwise_equal(nnx.to_pure_dict(nnx.state(fresh, nnx.Param)), state)
        assert {a.dtype for a in jax.tree.leaves(state)} == {jnp.dtype(param_dtype)}, name


def test_nnx_restored_model_computes_the_same():
    make = lambda: _NNXNet(jnp.bfloat16, nnx.Rngs(0))
    model = _nnx_build(make, seed=3)
    blob = serialization.msgpack_serialize(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    fresh = _nnx_build(make, seed=4)
    params = nnx.state(fresh, nnx.Param)
    nnx.replace_by_pure_dict(params, serialization.msgpack_restore(blob))
    nnx.update(fresh, params)
    fwd = nnx.jit(lambda m, x: m(x))
    _assert_bitwise_equal(fwd(fresh, X), fwd(model, X))


@pytest.mark.parametrize("param_dtype", DTYPES, ids=["float32", "bfloat16"])
def test_orbax_round_trip(param_dtype, tmp_path):
    checkpointer = ocp.StandardCheckpointer()
    try:
        for name, module in _linen_models(param_dtype).items():
            variables = _with_special_values(_linen_variables(module))
            path = tmp_path / f"linen_{name}"
            checkpointer.save(path, variables)
            checkpointer.wait_until_finished()
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, variables)
            _assert_bitwise_equal(checkpointer.restore(path, abstract), variables)

        for name, make in _nnx_models(param_dtype).items():
            state = _with_special_values(nnx.state(_nnx_build(make), nnx.Param))
            path = tmp_path / f"nnx_{name}"
            checkpointer.save(path, state)
            checkpointer.wait_until_finished()
            abstract_model = nnx.eval_shape(make)
            graphdef, abstract_state = nnx.split(abstract_model, nnx.Param)
            restored = checkpointer.restore(path, abstract_state)
            _assert_bitwise_equal(nnx.to_pure_dict(restored), nnx.to_pure_dict(state))
            merged = nnx.merge(graphdef, restored)
            _assert_bitwise_equal(
                nnx.to_pure_dict(nnx.state(merged, nnx.Param)), nnx.to_pure_dict(state)
            )
    finally:
        checkpointer.close()
