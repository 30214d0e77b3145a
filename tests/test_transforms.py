"""Every JAX transformation on every function and module, on every impl.

The matrix: {jit, vmap over the batch, vmap over kernels, grad, grad of grad, jvp,
jacfwd, jacrev, hessian, linearize, checkpoint, scan, shard_map} x {depthwise_conv,
separable_conv, grouped_conv, linen SeparableConv, nnx SeparableConv} x {every
impl}. Each cell is compared with the same transformation of ``impl="xla"`` and of
a float64 reference: the convolutions written from their definition with
``jax.numpy`` (pad, slice per tap, multiply, sum), pinned to the NumPy loops of
``tests/reference.py`` by :func:`test_jnp_reference_matches_numpy_reference`, so
that it can be differentiated and vmapped like the real thing.

``shard_map`` needs 8 devices, which a process must ask for before JAX starts: its
column runs in a subprocess (:func:`test_shard_map_column`).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from sepconv_jax import depthwise_conv, grouped_conv, linen, separable_conv
from sepconv_jax import nnx as sep_nnx
from sepconv_jax.kernels import dispatch
from tests import reference as ref
from tests.helpers import HIGHEST, rand

IMPLS = dispatch.IMPLS  # "auto" and every registered kernel

# One small layer: batch 2, 6x5 image, 2 channels, 3x3 window, stride 2, SAME
# (uneven padding), depth multiplier 2, 3 output channels.
X_SHAPE = (2, 6, 5, 2)
STRIDES = 2
PADDING = "SAME"
DK_SHAPE = (3, 3, 1, 4)
PK_SHAPE = (4, 3)
GK_SHAPE = (3, 3, 1, 4)  # grouped: 2 groups of 1 input channel, 4 outputs

# ----------------------------------------------------------------------------- reference


def _pads():
    return ref.explicit_padding(PADDING, X_SHAPE[1:-1], DK_SHAPE[:2], (STRIDES,) * 2, (1, 1))


def _jnp_grouped(x, kernel, groups):
    """Grouped 2-D cross-correlation from the definition, in jax.numpy (any dtype).

    ``x`` ``(B, H, W, C)``, ``kernel`` ``(kh, kw, C // groups, O)``: output channel
    ``o`` of group ``o // (O // groups)`` sums that group's channels over the taps.
    """
    kh, kw, cg, out = kernel.shape
    og = out // groups
    xp = jnp.pad(x, [(0, 0), *_pads(), (0, 0)])
    oh = (xp.shape[1] - kh) // STRIDES + 1
    ow = (xp.shape[2] - kw) // STRIDES + 1
    y = 0.0
    for i, j in itertools.product(range(kh), range(kw)):
        patch = xp[
            :, i : i + (oh - 1) * STRIDES + 1 : STRIDES, j : j + (ow - 1) * STRIDES + 1 : STRIDES
        ]
        parts = [
            patch[..., g * cg : (g + 1) * cg] @ kernel[i, j, :, g * og : (g + 1) * og]
            for g in range(groups)
        ]
        y = y + jnp.concatenate(parts, axis=-1)
    return y


def _ref_depthwise(x, k):
    return _jnp_grouped(x, k, x.shape[-1])


def _ref_separable(x, dk, pk):
    return _ref_depthwise(x, dk) @ pk


def test_jnp_reference_matches_numpy_reference():
    x, dk, pk, gk = rand(0, X_SHAPE), rand(1, DK_SHAPE), rand(2, PK_SHAPE), rand(3, GK_SHAPE)
    with jax.enable_x64(True):
        kw = dict(strides=STRIDES, padding=PADDING)
        got = np.asarray(_ref_depthwise(jnp.asarray(x, jnp.float64), jnp.asarray(dk, jnp.float64)))
        np.testing.assert_allclose(got, ref.depthwise_conv_nd(x, dk, **kw), rtol=1e-12)
        got = _jnp_grouped(jnp.asarray(x, jnp.float64), jnp.asarray(gk, jnp.float64), 2)
        want = ref.grouped_conv_nd(x, gk, groups=2, **kw)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)
        got = _ref_separable(*(jnp.asarray(a, jnp.float64) for a in (x, dk, pk)))
        want = ref.pointwise_conv_nd(ref.depthwise_conv_nd(x, dk, **kw), pk)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)


# ----------------------------------------------------------------------------- functions

# Each function family: (params(seed) -> pytree, ours(impl) -> f(x, params),
# reference f(x, params) in float64). `params` are what the transformations
# differentiate and vmap over (the "kernels"), besides `x`.


def _dw_params(seed):
    return {"kernel": jnp.asarray(rand(seed, DK_SHAPE))}


def _sep_params(seed):
    return {
        "depthwise_kernel": jnp.asarray(rand(seed, DK_SHAPE)),
        "pointwise_kernel": jnp.asarray(rand(seed + 1, PK_SHAPE)),
    }


def _grouped_params(seed):
    return {"kernel": jnp.asarray(rand(seed, GK_SHAPE))}


def _ours_depthwise(impl):
    def f(x, p):
        return depthwise_conv(
            x, p["kernel"], strides=STRIDES, padding=PADDING, precision=HIGHEST, impl=impl
        )

    return f


def _ours_separable(impl):
    def f(x, p):
        return separable_conv(
            x,
            p["depthwise_kernel"],
            p["pointwise_kernel"],
            strides=STRIDES,
            padding=PADDING,
            precision=HIGHEST,
            impl=impl,
        )

    return f


def _ours_grouped(impl):
    # grouped_conv has no impl of its own: it runs under each default, unchanged.
    def f(x, p):
        with dispatch.default_impl(impl):
            return grouped_conv(
                x, p["kernel"], groups=2, strides=STRIDES, padding=PADDING, precision=HIGHEST
            )

    return f


def _linen_layer(impl):
    return linen.SeparableConv(
        features=PK_SHAPE[1],
        kernel_size=DK_SHAPE[:2],
        strides=STRIDES,
        padding=PADDING,
        depth_multiplier=2,
        use_bias=False,
        precision=HIGHEST,
        impl=impl,
    )


def _ours_linen(impl):
    layer = _linen_layer(impl)
    return lambda x, p: layer.apply({"params": p}, x)


def _ours_nnx(impl):
    layer = sep_nnx.SeparableConv(
        X_SHAPE[-1],
        PK_SHAPE[1],
        DK_SHAPE[:2],
        strides=STRIDES,
        padding=PADDING,
        depth_multiplier=2,
        use_bias=False,
        precision=HIGHEST,
        impl=impl,
        rngs=nnx.Rngs(0),
    )
    graphdef, _ = nnx.split(layer)

    def f(x, p):
        return nnx.merge(graphdef, p)(x)

    return f


def _nnx_params(seed):
    layer = sep_nnx.SeparableConv(
        X_SHAPE[-1], PK_SHAPE[1], DK_SHAPE[:2], depth_multiplier=2, use_bias=False, rngs=nnx.Rngs(0)
    )
    for name, value in _sep_params(seed).items():
        getattr(layer, name)[...] = value
    return nnx.state(layer)


FUNCTIONS = {
    "depthwise_conv": (_dw_params, _ours_depthwise, lambda x, p: _ref_depthwise(x, p["kernel"])),
    "separable_conv": (
        _sep_params,
        _ours_separable,
        lambda x, p: _ref_separable(x, p["depthwise_kernel"], p["pointwise_kernel"]),
    ),
    "grouped_conv": (_grouped_params, _ours_grouped, lambda x, p: _jnp_grouped(x, p["kernel"], 2)),
    "linen.SeparableConv": (
        _sep_params,
        _ours_linen,
        lambda x, p: _ref_separable(x, p["depthwise_kernel"], p["pointwise_kernel"]),
    ),
    "nnx.SeparableConv": (
        _nnx_params,
        _ours_nnx,
        lambda x, p: _ref_separable(x, p["depthwise_kernel"][...], p["pointwise_kernel"][...]),
    ),
}


# ----------------------------------------------------------------------------- transformations

# Each takes f(x, params) -> array and concrete (x, params, seed-derived extras) and
# returns a pytree of arrays. The loss is nonlinear so that second derivatives are
# not trivially zero.


def _loss(f):
    return lambda x, p: jnp.sum(jnp.sin(f(x, p)))


def _stack(tree, n, scale=0.5):
    """``n`` different copies of every leaf, stacked on a new leading axis."""
    return jax.tree.map(lambda a: jnp.stack([a * (1 + scale * i) for i in range(n)]), tree)


def _like(tree, seed):
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(
        treedef, [jnp.asarray(rand(seed + i, np.shape(a)), a.dtype) for i, a in enumerate(leaves)]
    )


def _t_jit(f, x, p):
    return jax.jit(f)(x, p)


def _t_vmap_batch(f, x, p):
    return jax.vmap(f, in_axes=(0, None))(jnp.stack([x, 2 * x, -x]), p)


def _t_vmap_kernels(f, x, p):
    return jax.vmap(f, in_axes=(None, 0))(x, _stack(p, 3))


def _t_grad(f, x, p):
    return jax.grad(_loss(f), argnums=(0, 1))(x, p)


def _t_grad_of_grad(f, x, p):
    g = jax.grad(_loss(f), argnums=(0, 1))
    return jax.grad(lambda x, p: sum(jnp.sum(d**2) for d in jax.tree.leaves(g(x, p))), (0, 1))(x, p)


def _t_jvp(f, x, p):
    return jax.jvp(f, (x, p), (_like(x, 40), _like(p, 41)))


def _t_jacfwd(f, x, p):
    return jax.jacfwd(f, argnums=1)(x, p)


def _t_jacrev(f, x, p):
    return jax.jacrev(f, argnums=1)(x, p)


def _t_hessian(f, x, p):
    return jax.hessian(_loss(f), argnums=1)(x, p)


def _t_linearize(f, x, p):
    y, f_jvp = jax.linearize(f, x, p)
    return y, f_jvp(_like(x, 42), _like(p, 43))


def _t_checkpoint(f, x, p):
    return jax.grad(jax.checkpoint(_loss(f)), argnums=(0, 1))(x, p)


def _t_scan(f, x, p):
    def body(carry, xi):
        return carry + _loss(f)(xi, p), f(xi, p)

    return lax.scan(body, jnp.zeros((), x.dtype), jnp.stack([x, -x, 0.5 * x]))


TRANSFORMS = {
    "jit": _t_jit,
    "vmap_batch": _t_vmap_batch,
    "vmap_kernels": _t_vmap_kernels,
    "grad": _t_grad,
    "grad_of_grad": _t_grad_of_grad,
    "jvp": _t_jvp,
    "jacfwd": _t_jacfwd,
    "jacrev": _t_jacrev,
    "hessian": _t_hessian,
    "linearize": _t_linearize,
    "checkpoint": _t_checkpoint,
    "scan": _t_scan,
}


def _as_float64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _assert_close(got, want, rtol, atol):
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves)
    for g, w in zip(got_leaves, want_leaves, strict=True):
        assert np.shape(g) == np.shape(w)
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w), rtol=rtol, atol=atol)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("function", list(FUNCTIONS))
@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_transformation_matrix(transform, function, impl):
    make_params, ours, reference = FUNCTIONS[function]
    apply = TRANSFORMS[transform]
    x, p = jnp.asarray(rand(7, X_SHAPE)), make_params(8)
    got = apply(ours(impl), x, p)
    want_xla = apply(ours("xla"), x, p)
    with jax.enable_x64(True):
        want_ref = apply(reference, _as_float64(x), _as_float64(p))
    # float32 vs float32: the same arithmetic up to summation order.
    _assert_close(got, want_xla, rtol=1e-4, atol=1e-4)
    # float32 vs the float64 definition: O(1) data, at most ~40 terms per sum,
    # second derivatives of sin(): a few float32 ulps times the term count.
    _assert_close(got, want_ref, rtol=2e-4, atol=2e-4)


# ----------------------------------------------------------------------------- shard_map

_SHARD_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    sys.path.insert(0, {root!r})
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    from tests import test_transforms as t

    assert len(jax.devices()) == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    x = jnp.asarray(np.random.default_rng(7).standard_normal((8, *t.X_SHAPE[1:])), jnp.float32)
    errors = {{}}
    for name, (make_params, ours, reference) in t.FUNCTIONS.items():
        p = make_params(8)
        for impl in t.IMPLS:
            f = ours(impl)
            # The batch sharded over 8 devices, the parameters replicated: each
            # device runs the layer on its shard, and the gradient of the summed loss
            # w.r.t. the replicated parameters is summed over the devices.
            def per_shard(x, p):
                return f(x, p), jax.grad(t._loss(f), argnums=1)(x, p)
            sharded = jax.jit(jax.shard_map(
                per_shard, mesh=mesh, in_specs=(P("data"), P()), out_specs=(P("data"), P()),
            ))
            y, g = sharded(x, p)
            with jax.enable_x64(True):
                x64 = jnp.asarray(x, jnp.float64)
                p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), p)
                y_ref = reference(x64, p64)
                g_ref = jax.grad(t._loss(reference), argnums=1)(x64, p64)
            err = max(
                float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b))
                      / (1.0 + np.abs(np.asarray(b)))))
                for a, b in zip(jax.tree.leaves((y, g)), jax.tree.leaves((y_ref, g_ref)))
            )
            errors[f"{{name}}/{{impl}}"] = err
    print(json.dumps(errors))
    """
)


def test_shard_map_column():
    """``shard_map`` over 8 simulated CPU devices: outputs and parameter gradients of
    every function on every impl equal the float64 reference (relative error)."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", _SHARD_SCRIPT.format(root=root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(errors) == {f"{f}/{i}" for f in FUNCTIONS for i in IMPLS}
    worst = max(errors.values())
    assert worst < 2e-4, errors


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_over_kernels_is_one_wider_depthwise_conv(impl):
    """Per-example kernels fold into the channels: one depthwise primitive over
    ``B * C`` channels, no loop and no dense convolution."""
    x, kernels = jnp.asarray(rand(9, X_SHAPE)), _stack(_dw_params(10), 5)
    jaxpr = jax.make_jaxpr(jax.vmap(_ours_depthwise(impl), in_axes=(None, 0)))(x, kernels).jaxpr
    names = [eqn.primitive.name for eqn in jaxpr.eqns]
    assert names.count("depthwise_conv") == 1
    assert not {"while", "scan", "conv_general_dilated", "dot_general"} & set(names)
    (eqn,) = [e for e in jaxpr.eqns if e.primitive.name == "depthwise_conv"]
    assert eqn.params["spec"].in_channels == 5 * X_SHAPE[-1]
    assert eqn.params["spec"].groups == 5 * X_SHAPE[-1]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("function", ["separable_conv", "linen.SeparableConv", "nnx.SeparableConv"])
def test_separable_cells_run_through_the_separable_primitive(function, impl):
    """The separable columns of the matrix exercise the separable primitive (fused for
    ``impl="fused"``, the pair otherwise), not two separate steps."""
    make_params, ours, _ = FUNCTIONS[function]
    x, p = jnp.asarray(rand(7, X_SHAPE)), make_params(8)
    eqns = jax.make_jaxpr(ours(impl))(x, p).jaxpr.eqns
    names = [eqn.primitive.name for eqn in eqns]
    assert names.count("separable_conv") == 1
    assert not {"depthwise_conv", "conv_general_dilated"} & set(names)
    (eqn,) = [e for e in eqns if e.primitive.name == "separable_conv"]
    assert eqn.params["impl"] == impl
