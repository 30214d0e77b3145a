"""Every depthwise kernel against the same float64 references, forward and gradients.

The suite is parametrized over :data:`sepconv_jax.kernels.dispatch.KERNELS`, so a
kernel registered there is tested like ``xla``. Also: the ``auto`` rule, its
overrides, and a smoke run of the benchmark suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from sepconv_jax import _spec, ops
from sepconv_jax.apps import bench
from sepconv_jax.kernels import dispatch, native, shift
from tests import reference as ref
from tests.helpers import ATOL, HIGHEST, RTOL, call, ref_batched
from tests.helpers import rand as _rand
from tests.helpers import to_first as _to_first
from tests.helpers import to_last as _to_last

IMPLS = tuple(dispatch.KERNELS)


def _reference(x, kernel, **kw):
    """The float64 reference on channels-last ``x`` with any number of batch dims."""
    return ref_batched(ref.depthwise_conv_nd, x, kernel, n=kernel.ndim - 2, **kw)


def _depthwise(x, kernel, *, impl, data_format="channels_last", **kw):
    """Our depthwise conv under jit, channels-last in and out whatever ``data_format``."""
    return call(
        ops.depthwise_conv, x, kernel, n=kernel.ndim - 2, impl=impl, data_format=data_format, **kw
    )


# ----------------------------------------------------------------------------- forward

# (x shape channels-last, kernel shape, keyword arguments): every padding form and
# mode, strides, dilation, depth multipliers, 1-D/2-D/3-D and extra batch dims.
FORWARD_CASES = [
    ((2, 9, 3), (3, 1, 3), {}),
    ((2, 11, 2), (4, 1, 6), dict(strides=3, dilation=2, padding="CAUSAL")),
    ((1, 10, 4), (5, 1, 4), dict(padding=2, strides=2, padding_mode="reflect")),
    ((2, 7, 6, 3), (3, 3, 1, 3), dict(padding="SAME")),
    ((2, 8, 7, 3), (3, 3, 1, 3), dict(padding="same", strides=2)),
    ((2, 8, 8, 2), (3, 2, 1, 6), dict(padding="VALID", strides=(2, 1), dilation=(1, 2))),
    ((1, 9, 8, 2), (2, 3, 1, 4), dict(padding=((2, 0), (1, 3)), strides=(1, 3), dilation=(3, 1))),
    ((1, 6, 7, 3), (3, 3, 1, 3), dict(padding=(1, 2), padding_mode="replicate")),
    ((1, 6, 7, 3), (3, 3, 1, 9), dict(padding=1, strides=2, padding_mode="circular")),
    ((1, 7, 6, 2), (3, 3, 1, 2), dict(padding="CAUSAL", dilation=2)),
    ((1, 7, 7, 2), (5, 5, 1, 2), dict(padding="SAME", strides=2)),
    ((2, 3, 5, 5, 2), (3, 3, 1, 4), dict(strides=2)),  # two batch dims
    ((1, 5, 6, 4, 2), (3, 2, 3, 1, 4), dict(padding="SAME", strides=(1, 2, 2))),
    ((1, 5, 4, 5, 3), (2, 3, 2, 1, 3), dict(padding=1, dilation=(2, 1, 1), padding_mode="reflect")),
]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("xshape,kshape,kw", FORWARD_CASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_forward_matches_reference(impl, xshape, kshape, kw, data_format):
    x, kernel = _rand(0, xshape), _rand(1, kshape)
    got = _depthwise(x, kernel, impl=impl, data_format=data_format, **kw)
    np.testing.assert_allclose(got, _reference(x, kernel, **kw), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("xshape,kshape,kw", FORWARD_CASES[::3])
def test_shift_without_padded_copy(monkeypatch, xshape, kshape, kw, data_format):
    """Large inputs take the in-place path (zero fill per tap): same results, same grads."""
    monkeypatch.setattr(shift, "MATERIALIZE_BYTES", 0)
    x, kernel = _rand(23, xshape), _rand(24, kshape)
    got = _depthwise(x, kernel, impl="shift", data_format=data_format, **kw)
    want = _reference(x, kernel, **kw)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    g = _rand(25, want.shape)
    n = kernel.ndim - 2
    loss = lambda x, k: jnp.sum(ops.depthwise_conv(x, k, impl="shift", **kw) * g)
    dx, dk = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
    batch = x.shape[: x.ndim - n - 1]
    flat = lambda a: a.reshape((math.prod(batch), *a.shape[len(batch) :]))
    want_dx, want_dk = _reference_grads(flat(x), kernel, flat(g), **kw)
    np.testing.assert_allclose(flat(np.asarray(dx)), want_dx, rtol=RTOL, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dk), want_dk, rtol=RTOL, atol=1e-4)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("kw", [dict(padding="SAME", strides=2), dict(padding=1, dilation=2)])
def test_shift_in_batch_tiles(monkeypatch, kw, data_format):
    """Inputs too large for one padded copy run in tiles of whole images (a loop over
    tiles): same results and grads as the definition, on a batch of 6 in 3 tiles."""
    xshape, kshape = (6, 7, 8, 3), (3, 3, 1, 6)
    spec = _spec.make_spec(
        jnp.ones(xshape),
        jnp.ones(kshape),
        groups=None,
        strides=kw.get("strides", 1),
        padding=kw["padding"],
        dilation=kw.get("dilation", 1),
        padding_mode="zeros",
        data_format="channels_last",
    )
    per_image = shift._Geometry.from_spec(spec, 1).padded_bytes(1)  # float32
    monkeypatch.setattr(shift, "MATERIALIZE_BYTES", 3 * per_image)
    monkeypatch.setattr(shift, "TILE_BYTES", 2 * per_image + 1)
    geom = shift._Geometry.from_spec(spec, 6)
    assert not geom.materialize and geom.tile(4) == 2
    x, kernel = _rand(26, xshape), _rand(27, kshape)
    want = _reference(x, kernel, **kw)
    got = _depthwise(x, kernel, impl="shift", data_format=data_format, **kw)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    g = _rand(28, want.shape)
    loss = lambda x, k: jnp.sum(ops.depthwise_conv(x, k, impl="shift", **kw) * g)
    dx, dk = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
    want_dx, want_dk = _reference_grads(x, kernel, g, **kw)
    np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=RTOL, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dk), want_dk, rtol=RTOL, atol=1e-4)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "xshape,kshape,kw",
    [
        ((2, 9, 8, 3), (7, 7, 1, 3), dict(padding="SAME")),  # ConvNeXt's window
        ((1, 8, 9, 2), (5, 5, 1, 2), dict(padding=((4, 0), (1, 3)), dilation=(1, 2))),
        ((2, 30, 2), (11, 1, 2), dict(padding="CAUSAL", dilation=2)),
        ((1, 6, 7, 2), (5, 3, 1, 2), dict(padding="VALID")),
    ],
)
@pytest.mark.parametrize("variant", ["padded", "in place", "grouped kernel grad"])
def test_shift_input_transpose_as_flipped_forward(
    monkeypatch, xshape, kshape, kw, data_format, variant
):
    """Unstrided windows of more than 9 taps take the input gradient as a forward loop
    over ``g`` with the flipped kernel: the same gradients as the definition, with the
    padded copy, read in place, and with the (off by default) grouped kernel gradient."""
    if variant == "in place":
        monkeypatch.setattr(shift, "MATERIALIZE_BYTES", 0)
    if variant == "grouped kernel grad":
        monkeypatch.setattr(shift, "_KERNEL_GRAD_GROUP_TAPS", 14)
        monkeypatch.setattr(shift, "_KERNEL_GRAD_GROUP_MIN_TAPS", 9)
    spec = _spec.make_spec(
        jnp.ones(xshape),
        jnp.ones(kshape),
        groups=None,
        strides=1,
        padding=kw["padding"],
        dilation=kw.get("dilation", 1),
        padding_mode="zeros",
        data_format="channels_last",
    )
    assert shift._flipped(shift._Geometry.from_spec(spec, xshape[0])) is not None
    x, kernel = _rand(40, xshape), _rand(41, kshape)
    want = _reference(x, kernel, **kw)
    g = _rand(42, want.shape)
    to_format = (lambda a: jnp.moveaxis(a, -1, 1)) if data_format == "channels_first" else None

    def loss(x, k):
        if to_format is None:
            return jnp.sum(ops.depthwise_conv(x, k, impl="shift", **kw) * g)
        y = ops.depthwise_conv(to_format(x), k, impl="shift", data_format=data_format, **kw)
        return jnp.sum(jnp.moveaxis(y, 1, -1) * g)

    dx, dk = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
    want_dx, want_dk = _reference_grads(x, kernel, g, **kw)
    np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=RTOL, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dk), want_dk, rtol=RTOL, atol=1e-4)


def test_shift_flipped_input_transpose_needs_padding_within_the_window():
    """A padding wider than the window's reach (possible with explicit pairs) keeps the
    per-tap placement: the flipped loop would need negative padding."""
    spec = _spec.make_spec(
        jnp.ones((1, 12, 12, 2)),
        jnp.ones((5, 5, 1, 2)),
        groups=None,
        strides=1,
        padding=((6, 0), (2, 2)),
        dilation=1,
        padding_mode="zeros",
        data_format="channels_last",
    )
    assert shift._flipped(shift._Geometry.from_spec(spec, 1)) is None
    x, kernel = _rand(43, (1, 12, 12, 2)), _rand(44, (5, 5, 1, 2))
    kw = dict(padding=((6, 0), (2, 2)))
    g = _rand(45, _reference(x, kernel, **kw).shape)
    dx = jax.jit(
        jax.grad(lambda x: jnp.sum(ops.depthwise_conv(x, kernel, impl="shift", **kw) * g))
    )(x)
    np.testing.assert_allclose(
        np.asarray(dx), _reference_grads(x, kernel, g, **kw)[0], rtol=RTOL, atol=1e-4
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_forward_matches_scalar_loops(impl):
    """Against the definition written as scalar loops (strides, dilation, multiplier)."""
    x, kernel = _rand(2, (2, 7, 6, 2)), _rand(3, (3, 2, 1, 4))
    got = _depthwise(
        x, kernel, impl=impl, strides=(2, 1), dilation=(1, 2), padding=((1, 2), (0, 1))
    )
    want = ref.depthwise_conv_loops(
        x, kernel, strides=(2, 1), pads=((1, 2), (0, 1)), dilation=(1, 2)
    )
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_closed_form_constant_weights(impl):
    """Ones in, ones as weights, SAME padding: each output counts its in-bounds taps."""
    y = _depthwise(np.ones((1, 4, 5, 1), np.float32), np.ones((3, 3, 1, 2), np.float32), impl=impl)
    rows = np.array([2, 3, 3, 2])[:, None]
    cols = np.array([2, 3, 3, 3, 2])[None, :]
    np.testing.assert_array_equal(y[0, :, :, 0], rows * cols)
    np.testing.assert_array_equal(y[0, :, :, 1], rows * cols)


@pytest.mark.parametrize("impl", IMPLS)
def test_bias_and_integer_input(impl):
    x = np.arange(2 * 5 * 5 * 2).reshape(2, 5, 5, 2) % 7  # int64, promoted to float32
    kernel, bias = _rand(4, (3, 3, 1, 4)), _rand(5, (4,))
    y = jax.jit(functools.partial(ops.depthwise_conv, impl=impl, precision=HIGHEST))(
        x, kernel, bias=bias
    )
    assert y.dtype == jnp.float32
    want = _reference(x.astype(np.float64), kernel, bias=bias)
    np.testing.assert_allclose(np.asarray(y), want, rtol=RTOL, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_with_float32_accumulation(impl):
    """bfloat16 in, ``preferred_element_type=float32`` out: exact up to float32 sums."""
    x = jnp.asarray(_rand(6, (2, 6, 6, 4)), jnp.bfloat16)
    kernel = jnp.asarray(_rand(7, (3, 3, 1, 4)), jnp.bfloat16)
    y = ops.depthwise_conv(x, kernel, strides=2, impl=impl, preferred_element_type=jnp.float32)
    assert y.dtype == jnp.float32
    want = _reference(np.asarray(x, np.float64), np.asarray(kernel, np.float64), strides=2)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)
    y16 = ops.depthwise_conv(x, kernel, strides=2, impl=impl)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float64), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("impl", IMPLS)
def test_separable_conv_uses_the_kernel(impl):
    x, dk, pk = _rand(8, (2, 6, 5, 3)), _rand(9, (3, 3, 1, 6)), _rand(10, (6, 4))
    y = jax.jit(functools.partial(ops.separable_conv, impl=impl, strides=2, precision=HIGHEST))(
        x, dk, pk
    )
    want = ref.pointwise_conv_nd(_reference(x, dk, strides=2), pk)
    np.testing.assert_allclose(np.asarray(y), want, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- gradients


def _reference_grads(x, kernel, g, **kw):
    """``d<y, g>/dx`` and ``d<y, g>/dkernel`` in float64, from the definitions.

    The conv is linear in ``x``: running the reference on every basis image of ``x``
    (as a batch) gives its matrix, and the gradient is that matrix times ``g``. For
    the kernel, ``dk[o, c*M+m] = sum_{b,i} xpad[b, i*s + o*d, c] * g[b, i, c*M+m]``.
    """
    x, kernel, g = (np.asarray(a, np.float64) for a in (x, kernel, g))
    n = kernel.ndim - 2
    batch, spatial, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    size = math.prod(spatial) * c
    basis = np.eye(size).reshape(size, *spatial, c)
    columns = ref.depthwise_conv_nd(basis, kernel, **kw).reshape(size, -1)  # (x elem, y elem)
    dx = (g.reshape(batch, -1) @ columns.T).reshape(x.shape)

    window = kernel.shape[:n]
    strides = (kw.get("strides", 1),) * n if np.isscalar(kw.get("strides", 1)) else kw["strides"]
    dilation = (
        (kw.get("dilation", 1),) * n if np.isscalar(kw.get("dilation", 1)) else kw["dilation"]
    )
    pads = ref.explicit_padding(kw.get("padding", "SAME"), spatial, window, strides, dilation)
    xpad = np.pad(x, [(0, 0), *pads, (0, 0)])
    m = kernel.shape[-1] // c
    out = g.shape[1:-1]
    dk = np.zeros(kernel.shape)
    for offsets in itertools.product(*(range(k) for k in window)):
        idx = tuple(
            slice(o * d, o * d + (size_o - 1) * s + 1, s)
            for o, d, s, size_o in zip(offsets, dilation, strides, out, strict=True)
        )
        patch = np.repeat(xpad[(slice(None), *idx, slice(None))], m, axis=-1)
        dk[(*offsets, 0)] = (patch * g).sum(axis=tuple(range(n + 1)))
    return dx, dk


GRAD_CASES = [
    ((2, 6, 5, 2), (3, 3, 1, 2), dict(padding="SAME")),
    ((2, 7, 6, 2), (3, 2, 1, 6), dict(padding=((1, 2), (0, 1)), strides=2, dilation=(1, 2))),
    ((1, 9, 3), (3, 1, 6), dict(padding="CAUSAL", strides=3, dilation=2)),
    ((1, 5, 4, 4, 2), (2, 3, 2, 1, 4), dict(padding="SAME", strides=(1, 2, 2))),
]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("xshape,kshape,kw", GRAD_CASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_reference(impl, xshape, kshape, kw, data_format):
    x, kernel = _rand(11, xshape), _rand(12, kshape)
    y_ref = ref.depthwise_conv_nd(x, kernel, **kw)
    g = _rand(13, y_ref.shape)
    n = kernel.ndim - 2
    first = data_format == "channels_first"

    def loss(x, kernel):
        y = ops.depthwise_conv(
            x, kernel, impl=impl, data_format=data_format, precision=HIGHEST, **kw
        )
        return jnp.sum(y * (_to_first(g, n) if first else g))

    dx, dk = jax.jit(jax.grad(loss, argnums=(0, 1)))(_to_first(x, n) if first else x, kernel)
    dx = _to_last(np.asarray(dx), n) if first else np.asarray(dx)
    want_dx, want_dk = _reference_grads(x, kernel, g, **kw)
    np.testing.assert_allclose(dx, want_dx, rtol=RTOL, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dk), want_dk, rtol=RTOL, atol=1e-4)


@pytest.mark.parametrize("xshape,kshape,kw", GRAD_CASES[:2])
@pytest.mark.parametrize("impl", [i for i in IMPLS if i != "xla"])
def test_custom_gradients_equal_xla_gradients(impl, xshape, kshape, kw):
    """The hand-written VJPs give what autodiff of ``lax.conv_general_dilated`` gives."""
    x, kernel = _rand(14, xshape), _rand(15, kshape)

    def grads(impl):
        loss = lambda x, k: jnp.sum(
            jnp.sin(ops.depthwise_conv(x, k, impl=impl, precision=HIGHEST, **kw))
        )
        first = jax.grad(loss, argnums=(0, 1))
        # second order: the gradient of a scalar function of the first gradients
        second = jax.grad(lambda x, k: sum(jnp.sum(d**2) for d in first(x, k)), argnums=(0, 1))
        return (*first(x, kernel), *second(x, kernel))

    for got, want in zip(
        jax.jit(lambda: grads(impl))(), jax.jit(lambda: grads("xla"))(), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kshape,kw",
    [
        ((3, 3, 1, 4), dict(strides=2, padding="SAME")),
        ((3, 2, 1, 2), dict(dilation=2, padding_mode="reflect")),
        ((2, 1, 4), dict(padding="CAUSAL", strides=2)),
    ],
)
@pytest.mark.parametrize("impl", IMPLS)
def test_check_grads_order_2(impl, kshape, kw):
    """Numerical vs reverse-mode gradients, first and second order, in float64."""
    n = len(kshape) - 2
    with jax.enable_x64(True):
        rng = np.random.default_rng(16)
        x = rng.standard_normal((2, *(5,) * n, 2))
        kernel = rng.standard_normal(kshape)
        f = jax.jit(functools.partial(ops.depthwise_conv, impl=impl, **kw))
        check_grads(f, (x, kernel), order=2, modes=["rev"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_matches_pytorch_depthwise_forward_and_backward(impl):
    """PyTorch's ``conv2d(groups=C)`` as a peer: output and both gradients."""
    torch = pytest.importorskip("torch")
    x, kernel = _rand(26, (2, 9, 8, 3)), _rand(27, (3, 3, 1, 6))  # depth multiplier 2
    g = _rand(28, (2, 5, 4, 6))
    # torch: weight (C * M, 1, kh, kw) with output channel c * M + m reading channel c
    xt = torch.tensor(_to_first(x, 2).copy(), dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(kernel[:, :, 0, :].transpose(2, 0, 1)[:, None].copy(), dtype=torch.float64)
    wt.requires_grad_(True)
    yt = torch.nn.functional.conv2d(xt, wt, stride=2, padding=1, groups=3)
    yt.backward(torch.tensor(_to_first(g, 2).copy(), dtype=torch.float64))

    def loss(x, k):
        y = ops.depthwise_conv(x, k, strides=2, padding=1, impl=impl, precision=HIGHEST)
        return jnp.sum(y * g), y

    (dx, dk), y = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(x, kernel)
    np.testing.assert_allclose(
        np.asarray(y), _to_last(yt.detach().numpy(), 2), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(np.asarray(dx), _to_last(xt.grad.numpy(), 2), rtol=RTOL, atol=1e-4)
    want_dk = wt.grad.numpy()[:, 0].transpose(1, 2, 0)[:, :, None, :]
    np.testing.assert_allclose(np.asarray(dk), want_dk, rtol=RTOL, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_forward_mode_runs_the_same_kernel(impl):
    """``jax.jvp`` works on every impl, and its tangent runs that impl's loops: the
    tangent of the bilinear map is the map itself, ``f(dx, k) + f(x, dk)``."""
    x, kernel = _rand(17, (1, 5, 5, 2)), _rand(18, (3, 3, 1, 2))
    dx, dk = _rand(19, x.shape), _rand(20, kernel.shape)
    f = lambda x, k: ops.depthwise_conv(x, k, impl=impl, precision=HIGHEST)
    jvp = jax.jit(lambda *a: jax.jvp(f, a[:2], a[2:]))
    y, tangent = jvp(x, kernel, dx, dk)
    np.testing.assert_allclose(np.asarray(y), _reference(x, kernel), rtol=RTOL, atol=ATOL)
    want = _reference(dx, kernel) + _reference(x, dk)
    np.testing.assert_allclose(np.asarray(tangent), want, rtol=RTOL, atol=1e-4)
    hlo = jvp.lower(x, kernel, dx, dk).as_text()
    if impl == "shift":  # no silent switch to lax: shifted loops, no convolution
        assert "convolution" not in hlo and "slice" in hlo
    elif impl in ("pallas", "fused"):
        # On CPU: the Pallas kernels in interpret mode, a loop over the grid ("fused"
        # on a lone depthwise conv runs the "pallas" kernel).
        assert "convolution" not in hlo and "while" in hlo
    elif impl == "native":  # the C++ forward handler: the primal and both tangent terms
        assert "convolution" not in hlo
        assert hlo.count("custom_call @sepconv_jax_depthwise_forward(") == 3
    else:
        assert "convolution" in hlo


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_and_grad_of_vmap(impl):
    xs, kernel = _rand(19, (3, 2, 5, 5, 2)), _rand(20, (3, 3, 1, 2))
    f = lambda x, k: ops.depthwise_conv(x, k, impl=impl, precision=HIGHEST)
    got = jax.jit(jax.vmap(f, in_axes=(0, None)))(xs, kernel)
    np.testing.assert_allclose(np.asarray(got), _reference(xs, kernel), rtol=RTOL, atol=ATOL)
    per_example = jax.vmap(jax.grad(lambda x, k: jnp.sum(f(x, k)), argnums=1), in_axes=(0, None))
    dk = jax.jit(per_example)(xs, kernel)
    ones = np.ones(_reference(xs[0], kernel).shape)
    for i in range(xs.shape[0]):
        np.testing.assert_allclose(
            np.asarray(dk[i]), _reference_grads(xs[i], kernel, ones)[1], rtol=RTOL, atol=1e-4
        )


# ----------------------------------------------------------------------------- dispatch


def _spec_for(window=(3, 3)):
    x = jax.ShapeDtypeStruct((1, 8, 8, 4), jnp.float32)
    k = jax.ShapeDtypeStruct((*window, 1, 4), jnp.float32)
    return _spec.make_spec(
        x,
        k,
        groups=None,
        strides=1,
        padding="SAME",
        dilation=1,
        padding_mode="zeros",
        data_format="channels_last",
    )


def test_auto_rule_by_platform_and_shape():
    spec = _spec_for()
    # On CPU the C++ kernel where it builds (a compiler is found), else "shift".
    cpu = "native" if native.available() else "shift"
    assert dispatch.auto_impl(spec, "cpu") == cpu
    for platform in ("gpu", "cuda", "rocm", "tpu"):
        assert dispatch.auto_impl(spec, platform) == "xla"
    # On CUDA, strided windows of up to 3x3 taps run the Pallas kernels.
    strided = dataclasses.replace(spec, strides=(2, 1))
    for platform in ("gpu", "cuda"):
        assert dispatch.auto_impl(strided, platform) == "pallas"
    for platform in ("cpu", "rocm", "tpu"):
        assert dispatch.auto_impl(strided, platform) == (cpu if platform == "cpu" else "xla")
    wide = dataclasses.replace(strided, window=(5, 5))
    assert math.prod(wide.window) > dispatch.MAX_PALLAS_GPU_TAPS
    assert dispatch.auto_impl(wide, "cuda") == "xla"
    assert dispatch.auto_impl(dataclasses.replace(strided, num_spatial=3), "cuda") == "xla"
    big = _spec.make_spec(
        jax.ShapeDtypeStruct((1, 9, 9, 9, 4), jnp.float32),
        jax.ShapeDtypeStruct((8, 8, 8, 1, 4), jnp.float32),
        groups=None,
        strides=1,
        padding="SAME",
        dilation=1,
        padding_mode="zeros",
        data_format="channels_last",
    )
    assert math.prod(big.window) > dispatch.MAX_SHIFT_TAPS
    assert dispatch.auto_impl(big, "cpu") == "xla"  # 3-D: no native kernel
    # The native kernel does not unroll its taps: a wide 2-D window stays with it.
    wide_2d = _spec_for(window=(21, 21))
    assert math.prod(wide_2d.window) > dispatch.MAX_SHIFT_TAPS
    assert dispatch.auto_impl(wide_2d, "cpu") == ("native" if native.available() else "xla")
    assert dispatch.kernel_for("auto", wide_2d, "cpu", for_export=True) is dispatch.KERNELS["xla"]
    # Channels-first or a depth multiplier: "shift".
    first = dataclasses.replace(spec, data_format="channels_first")
    assert dispatch.auto_impl(first, "cpu") == "shift"
    grouped = dataclasses.replace(spec, out_channels=8)
    assert dispatch.auto_impl(grouped, "cpu") == "shift"
    assert dispatch.auto_impl(spec) == dispatch.auto_impl(spec, jax.default_backend())
    # "auto" is resolved per platform when lowered; a platform without a rule of its
    # own gets the reference kernel.
    assert dispatch.kernel_for("auto", spec, "cpu") is dispatch.KERNELS[cpu]
    # Lowered for jax.export, CPU keeps to StableHLO: the FFI call cannot be serialized.
    assert dispatch.kernel_for("auto", spec, "cpu", for_export=True) is dispatch.KERNELS["shift"]
    assert dispatch.kernel_for("auto", spec, "cuda") is dispatch.KERNELS["xla"]
    assert dispatch.kernel_for("auto", strided, "cuda") is dispatch.KERNELS["pallas"]
    assert dispatch.kernel_for("auto", spec, None) is dispatch.KERNELS["xla"]
    assert dispatch.kernel_for("shift", spec, "tpu") is dispatch.KERNELS["shift"]


def test_explicit_impl_wins_and_context_manager_overrides_auto():
    assert dispatch.resolve_override("auto") == "auto"
    assert dispatch.resolve_override("xla") == "xla"
    assert dispatch.resolve_override("shift") == "shift"
    with dispatch.default_impl("xla"):
        assert dispatch.get_default_impl() == "xla"
        assert dispatch.resolve_override("auto") == "xla"
        assert dispatch.resolve_override("shift") == "shift"
        with dispatch.default_impl("shift"):
            assert dispatch.resolve_override("auto") == "shift"
        assert dispatch.resolve_override("auto") == "xla"
    assert dispatch.get_default_impl() is None


def test_config_setter_and_context_precedence():
    try:
        dispatch.set_default_impl("xla")
        assert dispatch.resolve_override("auto") == "xla"
        with dispatch.default_impl("shift"):
            assert dispatch.resolve_override("auto") == "shift"
        with dispatch.default_impl("auto"):  # the rule itself, under a process default
            assert dispatch.resolve_override("auto") == "auto"
        assert dispatch.resolve_override("auto") == "xla"
    finally:
        dispatch.set_default_impl(None)
    assert dispatch.resolve_override("auto") == "auto"


def _recorded_impls(fn, *args):
    return [
        eqn.params["impl"]
        for eqn in jax.make_jaxpr(fn)(*args).eqns
        if eqn.primitive.name == "depthwise_conv"
    ]


def test_context_manager_reaches_the_public_function(monkeypatch):
    calls = []
    reference = dispatch.KERNELS["xla"]

    def spy(*a, **kw):
        calls.append("spy")
        return reference.forward(*a, **kw)

    monkeypatch.setitem(dispatch.KERNELS, "xla", dataclasses.replace(reference, forward=spy))
    x, kernel = _rand(21, (1, 5, 5, 2)), _rand(22, (3, 3, 1, 2))
    # A fresh function per trace: JAX reuses the trace of a function it has seen.
    make = lambda: lambda x: ops.depthwise_conv(x, kernel, precision=HIGHEST)
    assert _recorded_impls(make(), x) == ["auto"]
    with dispatch.default_impl("xla"):
        assert _recorded_impls(make(), x) == ["xla"]
        y = jax.jit(make())(x)
    assert calls == ["spy"]  # the override reached the kernel when lowered
    np.testing.assert_allclose(np.asarray(y), _reference(x, kernel), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "call",
    [
        lambda: dispatch.set_default_impl("fast"),
        lambda: dispatch.default_impl("fast").__enter__(),
        lambda: dispatch.resolve_override("fast"),
    ],
)
def test_unknown_impl_names_the_argument(call):
    with pytest.raises(ValueError, match="`impl`"):
        call()


def test_non_string_impl_is_a_type_error():
    with pytest.raises(TypeError, match="`impl`"):
        dispatch.set_default_impl(3)


# ----------------------------------------------------------------------------- bench


def test_layer_shapes_are_the_papers():
    """MobileNetV2 Table 2 and EfficientNet-B0 Table 1, deduplicated across models."""
    mv2 = bench.layer_shapes(("MobileNetV2",))
    both = bench.layer_shapes()
    assert len(mv2) == 12
    assert len(both) == 21  # three shapes are shared
    shared = [layer for layer in both if len(layer.models) == 2]
    assert [layer.name for layer in shared] == [
        "112x112 C32 k3 s1 N16",
        "112x112 C96 k3 s2 N24",
        "56x56 C144 k3 s1 N24",
    ]
    # Savings factor of the seed's formula, k^2 N / (k^2 + N)
    assert mv2[-1].analytic_savings == pytest.approx(9 * 320 / (9 + 320))
    with pytest.raises(ValueError, match="`models`"):
        bench.layer_shapes(("ResNet",))


def test_bench_quick_runs_and_writes_json(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    bench.register_cli(sub)
    args = parser.parse_args(
        ["bench", "--quick", "--no-model", "--no-torch", "--out", str(tmp_path), "--batch", "1"]
    )
    assert args.func(args) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    records = result["records"]
    assert len(records) == len(bench.QUICK_LAYERS) * len(bench.PASSES)
    for record in records:
        # On CPU: every kernel but Pallas (interpret mode) and the separable-only name.
        impls = bench.depthwise_impls("cpu")
        assert impls == ("xla", "shift", "native")
        assert [impl for impl in dispatch.KERNELS if impl in record["seconds"]] == list(impls)
        for column in (*impls, "flax", "separable", "standard"):
            assert record["seconds"][column] > 0
        assert record["seconds"]["torch"] is None  # disabled
        assert "separable fused" not in record["seconds"] and record["errors"] == {}
        # Every ratio is the quotient of the two times it names, recomputed from the JSON.
        seconds, ratios = record["seconds"], record["ratios"]
        for impl in impls:
            assert ratios[f"xla/{impl}"] == seconds["xla"] / seconds[impl]
        assert record["ours"] in impls
        assert ratios["xla/ours"] == seconds["xla"] / seconds[record["ours"]]
        assert ratios["flax/ours"] == seconds["flax"] / seconds[record["ours"]]
        assert ratios["torch/ours"] is None
        realized = seconds["standard"] / seconds["separable"]
        assert ratios["standard/separable"] == realized
        assert ratios["realized/analytic"] == realized / record["analytic_savings"]
    assert (tmp_path / "bench.md").read_text().startswith("## Machine")
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert "summary" in capsys.readouterr().out


def test_bench_without_matplotlib_stops_before_measuring(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--quick", "--out", str(tmp_path / "out")])
    assert bench.run(args) == 2
    assert "--no-plot" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
