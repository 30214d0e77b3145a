"""The four pure functions against float64 NumPy references, closed forms and autodiff."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from sepconv_jax import ops
from tests import reference as ref
from tests.helpers import ATOL, HIGHEST, RTOL
from tests.helpers import call as _call
from tests.helpers import rand as _rand
from tests.helpers import ref_batched as _ref_batched

# ----------------------------------------------------------------------------- reference


def test_vectorized_reference_matches_scalar_loops():
    """The strided-window reference equals the definition written as scalar loops."""
    x, k = _rand(0, (2, 7, 6, 3)), _rand(1, (3, 2, 1, 6))
    for strides, dilation in [((1, 1), (1, 1)), ((2, 1), (1, 2)), ((3, 2), (2, 1))]:
        pads = ref.explicit_padding("SAME", (7, 6), (3, 2), strides, dilation)
        loops = ref.depthwise_conv_loops(x, k, strides=strides, pads=pads, dilation=dilation)
        vec = ref.depthwise_conv_nd(x, k, strides=strides, dilation=dilation, padding="SAME")
        np.testing.assert_allclose(vec, loops, rtol=1e-12, atol=1e-12)


# (spatial shape, window, strides, dilation, padding, padding_mode, multiplier, batch, format)
DEPTHWISE_CASES = [
    ((9,), (3,), 1, 1, "SAME", "zeros", 1, (2,), "channels_last"),
    ((10,), (4,), 2, 1, "SAME", "zeros", 2, (2,), "channels_first"),
    ((11,), (3,), 1, 2, "CAUSAL", "zeros", 1, (3,), "channels_last"),
    ((12,), (5,), 3, 1, "causal", "zeros", 3, (), "channels_last"),
    ((9,), (3,), 2, 1, "VALID", "zeros", 1, (2, 2), "channels_first"),
    ((9,), (3,), 1, 1, 2, "reflect", 1, (2,), "channels_last"),
    ((9,), (3,), 1, 1, [(3, 1)], "circular", 2, (2,), "channels_last"),
    ((8, 8), (3, 3), 1, 1, "SAME", "zeros", 1, (2,), "channels_last"),
    ((8, 9), (3, 3), 2, 1, "SAME", "zeros", 1, (2,), "channels_last"),
    ((7, 7), (3, 3), 2, 1, "same", "zeros", 2, (2,), "channels_first"),
    ((10, 9), (2, 4), (2, 1), (1, 2), "SAME", "zeros", 1, (1,), "channels_last"),
    ((9, 9), (3, 3), 1, 2, "VALID", "zeros", 1, (2,), "channels_last"),
    ((9, 8), (5, 5), 2, 1, "VALID", "zeros", 4, (), "channels_first"),
    ((8, 8), (3, 3), 1, 1, 1, "zeros", 1, (2,), "channels_last"),
    ((8, 8), (3, 3), 2, 1, (1, 2), "zeros", 1, (2,), "channels_last"),
    ((8, 8), (3, 3), 1, 1, ((2, 0), (0, 1)), "zeros", 2, (2,), "channels_first"),
    ((8, 8), (3, 3), 1, 1, "CAUSAL", "zeros", 1, (2,), "channels_last"),
    ((8, 8), (3, 3), 1, 1, 1, "reflect", 1, (2,), "channels_last"),
    ((8, 8), (3, 3), 2, 1, "SAME", "replicate", 2, (2,), "channels_first"),
    ((8, 7), (3, 3), 1, 2, "SAME", "circular", 1, (2, 1), "channels_last"),
    ((6, 6), (5, 5), 1, 1, ((4, 4), (3, 2)), "replicate", 1, (2,), "channels_last"),
    ((6, 6), (3, 3), 1, 1, ((5, 5), (1, 1)), "reflect", 1, (1,), "channels_last"),
    ((5, 6, 7), (3, 3, 3), 1, 1, "SAME", "zeros", 1, (2,), "channels_last"),
    ((6, 6, 6), (3, 2, 3), (2, 1, 2), 1, "SAME", "zeros", 2, (1,), "channels_first"),
    ((7, 6, 5), (3, 3, 3), 1, (2, 1, 1), "VALID", "zeros", 1, (), "channels_last"),
    ((5, 5, 5), (3, 3, 3), 1, 1, 1, "circular", 1, (2,), "channels_last"),
    ((5, 5, 5), (3, 3, 3), 2, 1, "SAME", "reflect", 1, (1,), "channels_first"),
]


@pytest.mark.parametrize(
    "spatial,window,strides,dilation,padding,mode,mult,batch,data_format", DEPTHWISE_CASES
)
def test_depthwise_matches_reference(
    spatial, window, strides, dilation, padding, mode, mult, batch, data_format
):
    n, c = len(spatial), 3
    x = _rand(0, (*batch, *spatial, c))
    kernel = _rand(1, (*window, 1, c * mult))
    bias = _rand(2, (c * mult,))
    kw = dict(strides=strides, padding=padding, dilation=dilation, padding_mode=mode)
    got = _call(ops.depthwise_conv, x, kernel, n=n, data_format=data_format, bias=bias, **kw)
    x_ref = x if batch else x[None]
    want = _ref_batched(ref.depthwise_conv_nd, x_ref, kernel, n=n, bias=bias, **kw)
    want = want if batch else want[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


GROUPED_CASES = [
    ((9,), (3,), 1, 1, "SAME", "zeros", 1, 4, 6, "channels_last"),
    ((9,), (3,), 2, 2, "CAUSAL", "zeros", 2, 4, 6, "channels_first"),
    ((8, 8), (3, 3), 1, 1, "SAME", "zeros", 1, 3, 5, "channels_last"),
    ((8, 8), (3, 3), 2, 1, 1, "reflect", 2, 4, 4, "channels_last"),
    ((8, 9), (3, 2), (1, 2), (2, 1), "VALID", "zeros", 3, 6, 9, "channels_first"),
    ((8, 8), (3, 3), 1, 1, "SAME", "circular", 4, 4, 8, "channels_last"),
    ((5, 5, 5), (3, 3, 3), 1, 1, "SAME", "replicate", 2, 4, 2, "channels_last"),
]


@pytest.mark.parametrize(
    "spatial,window,strides,dilation,padding,mode,groups,c_in,c_out,data_format", GROUPED_CASES
)
def test_grouped_matches_reference(
    spatial, window, strides, dilation, padding, mode, groups, c_in, c_out, data_format
):
    n = len(spatial)
    x = _rand(0, (2, *spatial, c_in))
    kernel = _rand(1, (*window, c_in // groups, c_out))
    bias = _rand(2, (c_out,))
    kw = dict(strides=strides, padding=padding, dilation=dilation, padding_mode=mode)
    got = _call(
        ops.grouped_conv, x, kernel, n=n, data_format=data_format, groups=groups, bias=bias, **kw
    )
    want = ref.grouped_conv_nd(x, kernel, groups=groups, bias=bias, **kw)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_grouped_with_channel_groups_is_depthwise():
    x, k = _rand(0, (2, 6, 6, 3)), _rand(1, (3, 3, 1, 6))
    a = ops.grouped_conv(x, k, groups=3, strides=2)
    b = ops.depthwise_conv(x, k, strides=2)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "shape,data_format,num_spatial",
    [
        ((2, 5, 5, 3), "channels_last", None),
        ((5, 3), "channels_last", None),
        ((2, 2, 4, 3), "channels_last", 1),
        ((3,), "channels_last", 0),
        ((2, 3, 5, 5), "channels_first", None),
        ((2, 3, 7), "channels_first", None),
        ((2, 2, 3, 4, 4), "channels_first", 2),
        ((3, 4, 4), "channels_first", 2),
    ],
)
def test_pointwise_matches_reference(shape, data_format, num_spatial):
    c = 3
    axis = -1
    if data_format == "channels_first":
        n = len(shape) - 2 if num_spatial is None else num_spatial
        axis = len(shape) - n - 1
    x = _rand(0, shape)
    kernel, bias = _rand(1, (c, 4)), _rand(2, (4,))
    fn = jax.jit(
        functools.partial(ops.pointwise_conv, data_format=data_format, num_spatial_dims=num_spatial)
    )
    got = np.asarray(fn(x, kernel, bias=bias))
    want = np.moveaxis(ref.pointwise_conv_nd(np.moveaxis(x, axis, -1), kernel, bias), -1, axis)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


SEPARABLE_CASES = [
    ((10,), (3,), 1, 1, "CAUSAL", "zeros", 1, (2,), "channels_last", True),
    ((8, 8), (3, 3), 1, 1, "SAME", "zeros", 1, (2,), "channels_last", False),
    ((8, 8), (3, 3), 2, 1, "SAME", "reflect", 2, (2,), "channels_first", True),
    ((9, 7), (5, 3), (2, 1), (1, 2), ((1, 2), (3, 0)), "zeros", 1, (2, 1), "channels_last", True),
    ((5, 5, 5), (3, 3, 3), 1, 1, "VALID", "zeros", 2, (1,), "channels_first", False),
]


@pytest.mark.parametrize(
    "spatial,window,strides,dilation,padding,mode,mult,batch,data_format,dw_bias",
    SEPARABLE_CASES,
)
def test_separable_matches_reference(
    spatial, window, strides, dilation, padding, mode, mult, batch, data_format, dw_bias
):
    n, c, out = len(spatial), 3, 5
    x = _rand(0, (*batch, *spatial, c))
    dk, pk = _rand(1, (*window, 1, c * mult)), _rand(2, (c * mult, out))
    db = _rand(3, (c * mult,)) if dw_bias else None
    b = _rand(4, (out,))
    kw = dict(strides=strides, padding=padding, dilation=dilation, padding_mode=mode)
    got = _call(
        ops.separable_conv,
        x,
        dk,
        pk,
        n=n,
        data_format=data_format,
        depthwise_bias=db,
        bias=b,
        **kw,
    )
    mid = _ref_batched(ref.depthwise_conv_nd, x, dk, n=n, bias=db, **kw)
    want = ref.pointwise_conv_nd(mid, pk, b)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=5 * ATOL)


# ----------------------------------------------------------------------------- hypothesis


@st.composite
def conv_configs(draw, grouped: bool):
    n = draw(st.integers(1, 3))
    window = tuple(draw(st.integers(1, 4)) for _ in range(n))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(n))
    eff = [(k - 1) * d + 1 for k, d in zip(window, dilation, strict=True)]
    max_side = 9 if n < 3 else 5
    spatial = tuple(draw(st.integers(max(e, 1), max(e, max_side))) for e in eff)
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    kind = draw(st.sampled_from(["SAME", "VALID", "CAUSAL", "int", "ints", "pairs"]))
    limit = min(spatial) - 1 if mode == "reflect" else min(spatial)  # PyTorch's bounds
    limit = min(limit, 3)
    if kind == "int":
        padding = draw(st.integers(0, limit))
    elif kind == "ints":
        padding = tuple(draw(st.integers(0, limit)) for _ in range(n))
    elif kind == "pairs":
        padding = tuple(
            (draw(st.integers(0, limit)), draw(st.integers(0, limit))) for _ in range(n)
        )
    else:
        padding = kind
        if mode != "zeros" and kind != "VALID":
            pads = ref.explicit_padding(kind, spatial, window, strides, dilation)
            bound = [s - 1 if mode == "reflect" else s for s in spatial]
            if any(max(p) > b for p, b in zip(pads, bound, strict=True)):
                mode = "zeros"
    if grouped:
        groups = draw(st.integers(1, 3))
        c_in = groups * draw(st.integers(1, 2))
        c_out = groups * draw(st.integers(1, 2))
    else:
        groups = c_in = draw(st.integers(1, 3))
        c_out = c_in * draw(st.integers(1, 3))
    batch = tuple(draw(st.integers(1, 2)) for _ in range(draw(st.integers(0, 2))))
    data_format = draw(st.sampled_from(["channels_last", "channels_first"]))
    return dict(
        n=n,
        window=window,
        strides=strides,
        dilation=dilation,
        spatial=spatial,
        padding=padding,
        padding_mode=mode,
        groups=groups,
        c_in=c_in,
        c_out=c_out,
        batch=batch,
        data_format=data_format,
    )


def _check_config(cfg, fn, seed):
    n = cfg["n"]
    x = _rand(seed, (*cfg["batch"], *cfg["spatial"], cfg["c_in"]))
    kernel = _rand(seed + 1, (*cfg["window"], cfg["c_in"] // cfg["groups"], cfg["c_out"]))
    kw = dict(
        strides=cfg["strides"],
        padding=cfg["padding"],
        dilation=cfg["dilation"],
        padding_mode=cfg["padding_mode"],
    )
    # Padding the padded input, not the spec, decides validity; skip configs whose
    # window does not fit (those are covered by the error tests).
    pads = ref.explicit_padding(
        cfg["padding"],
        cfg["spatial"],
        cfg["window"],
        **{"strides": cfg["strides"], "dilation": cfg["dilation"]},
    )
    eff = [(k - 1) * d + 1 for k, d in zip(cfg["window"], cfg["dilation"], strict=True)]
    if any(s + lo + hi < e for s, (lo, hi), e in zip(cfg["spatial"], pads, eff, strict=True)):
        with pytest.raises(ValueError, match="larger than the padded input"):
            fn(x, kernel, data_format=cfg["data_format"], **kw)
        return
    got = _call(fn, x, kernel, n=n, data_format=cfg["data_format"], **kw)
    x_ref = x if cfg["batch"] else x[None]
    want = _ref_batched(ref.grouped_conv_nd, x_ref, kernel, n=n, groups=cfg["groups"], **kw)
    want = want if cfg["batch"] else want[0]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


_HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_HYP
@given(cfg=conv_configs(grouped=False), seed=st.integers(0, 1000))
def test_depthwise_hypothesis(cfg, seed):
    _check_config(cfg, ops.depthwise_conv, seed)


@_HYP
@given(cfg=conv_configs(grouped=True), seed=st.integers(0, 1000))
def test_grouped_hypothesis(cfg, seed):
    groups = cfg["groups"]
    _check_config(cfg, functools.partial(ops.grouped_conv, groups=groups), seed)


# ----------------------------------------------------------------------------- closed forms


def _same_tap_counts(length, k):
    """In-bounds taps per output of a stride-1 SAME conv of width k (odd) on ``length``."""
    half = k // 2
    return np.array([min(i + half, length - 1) - max(i - half, 0) + 1 for i in range(length)])


def test_depthwise_closed_form_constant_weights():
    """Ones in, constant w per channel: each output is w times its in-bounds tap count."""
    x = np.ones((1, 5, 6, 2), np.float32)
    w = np.array([0.5, -2.0], np.float32)
    kernel = np.broadcast_to(w, (3, 3, 1, 2)).copy()
    y = ops.depthwise_conv(x, kernel)
    counts = np.outer(_same_tap_counts(5, 3), _same_tap_counts(6, 3))  # 4, 6 or 9
    np.testing.assert_array_equal(y[0], counts[..., None] * w)


def test_grouped_closed_form_constant_weights():
    """VALID grouped conv of ones with weight w: each output is w * k^2 * C / groups."""
    x = np.ones((2, 6, 6, 6), np.float32)
    y = ops.grouped_conv(x, np.full((3, 3, 2, 9), 0.25, np.float32), groups=3, padding="VALID")
    np.testing.assert_array_equal(y, np.full((2, 4, 4, 9), 0.25 * 9 * 2))


def test_pointwise_closed_form_constant_weights():
    x = np.full((3, 4, 5), 2.0, np.float32)
    y = ops.pointwise_conv(x, np.full((5, 7), 0.5, np.float32), bias=np.ones(7, np.float32))
    np.testing.assert_array_equal(y, np.full((3, 4, 7), 2.0 * 0.5 * 5 + 1.0))


def test_separable_closed_form_constant_weights():
    """Ones through a 1-D causal separable conv: the first outputs see fewer taps."""
    x = np.ones((1, 6, 4), np.float32)
    y = ops.separable_conv(
        x, np.ones((3, 1, 4), np.float32), np.ones((4, 2), np.float32), padding="CAUSAL"
    )
    taps = np.array([1, 2, 3, 3, 3, 3])
    np.testing.assert_array_equal(y[0], np.repeat((4 * taps)[:, None], 2, axis=1))


# ----------------------------------------------------------------------------- autodiff


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "fn,kshape,kw",
    [
        (ops.depthwise_conv, (3, 3, 1, 4), dict(strides=2, padding="SAME", impl="xla")),
        (ops.depthwise_conv, (3, 3, 1, 2), dict(dilation=2, padding_mode="reflect", impl="xla")),
        (ops.grouped_conv, (3, 2, 1, 4), dict(groups=2, padding="CAUSAL")),
    ],
)
def test_windowed_gradients(fn, kshape, kw, data_format):
    """First and second order, forward and reverse mode, on the ``xla`` path.

    Forward mode needs ``impl="xla"``: a ``jax.custom_vjp`` kernel (such as ``"shift"``)
    has no JVP. ``tests/test_kernels.py`` checks reverse mode for every impl.
    """
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = (
            rng.standard_normal((2, 5, 5, 2))
            if data_format == "channels_last"
            else (rng.standard_normal((2, 2, 5, 5)))
        )
        kernel = rng.standard_normal(kshape)
        f = functools.partial(fn, data_format=data_format, **kw)
        check_grads(jax.jit(f), (x, kernel), order=2, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5)


def test_pointwise_and_separable_gradients():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        x = rng.standard_normal((2, 4, 4, 3))
        dk, pk = rng.standard_normal((3, 3, 1, 3)), rng.standard_normal((3, 4))
        b = rng.standard_normal((4,))
        pw = jax.jit(lambda x, k, b: ops.pointwise_conv(x, k, bias=b))
        check_grads(pw, (x, pk, b), order=2, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5)
        sep = functools.partial(ops.separable_conv, strides=2, padding_mode="circular")
        check_grads(
            jax.jit(functools.partial(sep, impl="xla")),
            (x, dk, pk),
            order=2,
            modes=["fwd", "rev"],
            atol=1e-5,
            rtol=1e-5,
        )
        # The default impl, whatever the backend picks: reverse mode, both orders.
        check_grads(jax.jit(sep), (x, dk, pk), order=2, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_grad_matches_reference_adjoint():
    """d/dx of <y, g> for a depthwise conv equals the reference's adjoint, computed in NumPy."""
    x, k, g = _rand(0, (1, 6, 6, 2)), _rand(1, (3, 3, 1, 2)), _rand(2, (1, 3, 3, 2))
    loss = lambda x: jnp.vdot(ops.depthwise_conv(x, k, strides=2, precision=HIGHEST), g)
    got = jax.jit(jax.grad(loss))(x)
    # Finite differences on the float64 reference, one input element at a time.
    want = np.zeros_like(x, np.float64)
    eps = 1e-3
    for idx in np.ndindex(x.shape):
        xp, xm = x.astype(np.float64), x.astype(np.float64)
        xp[idx] += eps
        xm[idx] -= eps
        yp = ref.depthwise_conv_nd(xp, k, strides=2)
        ym = ref.depthwise_conv_nd(xm, k, strides=2)
        want[idx] = np.sum((yp - ym) * g) / (2 * eps)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_vmap_over_a_leading_axis():
    x, k, pk = _rand(0, (4, 2, 6, 6, 3)), _rand(1, (3, 3, 1, 3)), _rand(2, (3, 5))
    vm = jax.jit(jax.vmap(lambda x: ops.separable_conv(x, k, pk, strides=2, precision=HIGHEST)))
    direct = ops.separable_conv(x, k, pk, strides=2, precision=HIGHEST)  # batch dims (4, 2)
    np.testing.assert_allclose(vm(x), direct, rtol=1e-6, atol=1e-6)
    # vmap over kernels too: one kernel per example.
    ks = _rand(3, (4, 3, 3, 1, 3))
    per = jax.vmap(lambda x, k: ops.depthwise_conv(x, k, precision=HIGHEST))(x, ks)
    want = np.stack([ref.depthwise_conv_nd(x[i], ks[i]) for i in range(4)])
    np.testing.assert_allclose(per, want, rtol=RTOL, atol=ATOL)


def test_grad_through_every_function():
    x, dk, pk = _rand(0, (2, 6, 6, 4)), _rand(1, (3, 3, 1, 4)), _rand(2, (4, 4))
    gk = _rand(3, (3, 3, 2, 4))

    def loss(params):
        y = ops.depthwise_conv(x, params["dk"])
        y = ops.pointwise_conv(y, params["pk"])
        y = ops.grouped_conv(y, params["gk"], groups=2)
        return jnp.sum(ops.separable_conv(y, params["dk"], params["pk"]) ** 2)

    params = {"dk": dk, "pk": pk, "gk": gk}
    grads = jax.jit(jax.grad(loss))(params)
    for name, g in grads.items():
        assert g.shape == params[name].shape
        assert np.all(np.isfinite(g)) and np.any(g != 0), name


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_close_to_float32(dtype):
    """Half-precision inputs: within 2% (relative to the output's scale) of float32."""
    x, dk, pk = _rand(0, (2, 8, 8, 16)), _rand(1, (3, 3, 1, 16)), _rand(2, (16, 8))
    want = np.asarray(ops.separable_conv(x, dk, pk, precision=HIGHEST))
    args = [jnp.asarray(a, dtype) for a in (x, dk, pk)]
    low = ops.separable_conv(*args)
    assert low.dtype == dtype
    mixed = ops.separable_conv(*args, preferred_element_type=jnp.float32)
    assert mixed.dtype == jnp.float32
    scale = np.abs(want).max()
    for y in (low, mixed):
        np.testing.assert_allclose(np.asarray(y, np.float32), want, atol=0.02 * scale, rtol=0)


def test_dtype_promotion():
    x = np.ones((1, 4, 4, 2), np.int32)
    y = ops.depthwise_conv(x, np.ones((3, 3, 1, 2), np.float32))
    assert y.dtype == jnp.float32
    y = ops.depthwise_conv(
        jnp.ones((1, 4, 4, 2), jnp.bfloat16), jnp.ones((3, 3, 1, 2), jnp.bfloat16)
    )
    assert y.dtype == jnp.bfloat16
