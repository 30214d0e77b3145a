"""The linen modules: parameters, forward pass vs float64 references, transforms, errors."""

from __future__ import annotations

import itertools
import math
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from sepconv_jax import linen as sl
from sepconv_jax.kernels import dispatch
from tests import reference as ref

RTOL = ATOL = 2e-5  # float32 result vs float64 reference, on O(1) data with <= ~100 terms
HIGHEST = jax.lax.Precision.HIGHEST
KEY = jax.random.key(0)


def _rand(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _random_variables(module, x, seed=0):
    """Random variables with the structure of ``module.init(KEY, x)``, without running it."""
    gen = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, KEY, x)
    return jax.tree.map(lambda a: gen.standard_normal(a.shape).astype(a.dtype), shapes)


def _ref_batched(ref_fn, x, *args, n, **kw):
    """Runs a ``(B, *spatial, C)`` reference on ``x`` with any number of batch dims."""
    batch = x.shape[: x.ndim - n - 1]
    flat = x.reshape((math.prod(batch), *x.shape[-n - 1 :]))
    y = ref_fn(flat, *args, **kw)
    return y.reshape((*batch, *y.shape[1:]))


# ----------------------------------------------------------------------------- params


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_param_names_and_shapes(n, data_format):
    c, m, f = 3, 2, 5
    window = (3, 2, 1)[:n]
    spatial = (5,) * n
    shape = (2, *spatial, c) if data_format == "channels_last" else (2, c, *spatial)
    x = jnp.ones(shape)
    common = dict(data_format=data_format)

    def shapes(module):
        return jax.tree.map(jnp.shape, jax.eval_shape(module.init, KEY, x)["params"])

    dw = shapes(sl.DepthwiseConv(window, depth_multiplier=m, **common))
    assert dw == {"kernel": (*window, 1, c * m), "bias": (c * m,)}

    pw = shapes(sl.PointwiseConv(f, **common))
    assert pw == {"kernel": (c, f), "bias": (f,)}

    sep = sl.SeparableConv(f, window, depth_multiplier=m, use_depthwise_bias=True, **common)
    assert shapes(sep) == {
        "depthwise_kernel": (*window, 1, c * m),
        "pointwise_kernel": (c * m, f),
        "depthwise_bias": (c * m,),
        "bias": (f,),
    }
    sep_plain = sl.SeparableConv(f, window, depth_multiplier=m, use_bias=False, **common)
    assert set(shapes(sep_plain)) == {"depthwise_kernel", "pointwise_kernel"}


def _expected_count(kind, *, c, window, m, f, use_bias, use_depthwise_bias):
    """Parameter count written out from the shapes in the contract."""
    taps = math.prod(window)
    if kind == "depthwise":
        return taps * c * m + (c * m if use_bias else 0)
    if kind == "pointwise":
        return c * f + (f if use_bias else 0)
    return taps * c * m + c * m * f + (f if use_bias else 0) + (c * m if use_depthwise_bias else 0)


def test_param_counts_match_formula_for_every_option_combination():
    c, f = 3, 4
    for n, m, use_bias, use_dw_bias in itertools.product([1, 2, 3], [1, 2], *[[False, True]] * 2):
        window = (3, 2, 2)[:n]
        x = jnp.ones((1, *(4,) * n, c))
        kw = dict(c=c, window=window, m=m, f=f, use_bias=use_bias, use_depthwise_bias=use_dw_bias)
        modules = {
            "depthwise": sl.DepthwiseConv(window, depth_multiplier=m, use_bias=use_bias),
            "pointwise": sl.PointwiseConv(f, use_bias=use_bias),
            "separable": sl.SeparableConv(
                f, window, depth_multiplier=m, use_bias=use_bias, use_depthwise_bias=use_dw_bias
            ),
        }
        for kind, module in modules.items():
            shapes = jax.eval_shape(module.init, KEY, x)
            count = sum(math.prod(a.shape) for a in jax.tree.leaves(shapes))
            assert count == _expected_count(kind, **kw), (kind, n, m, use_bias, use_dw_bias)


def test_default_init_variance_follows_true_fan_in():
    """LeCun normal: Var(depthwise) = 1 / prod(window), Var(pointwise) = 1 / (C * M)."""
    c, m, f, window = 256, 2, 256, (3, 3)
    x = jnp.ones((1, 5, 5, c))
    params = sl.SeparableConv(f, window, depth_multiplier=m).init(KEY, x)["params"]
    dw, pw = np.asarray(params["depthwise_kernel"]), np.asarray(params["pointwise_kernel"])
    # 4608 and 131072 samples: the relative std of the sample variance is <= 2.1%.
    np.testing.assert_allclose(dw.var(), 1 / math.prod(window), rtol=0.1)
    np.testing.assert_allclose(pw.var(), 1 / (c * m), rtol=0.1)
    np.testing.assert_array_equal(np.asarray(params["bias"]), np.zeros(f))


def test_default_init_gives_unit_variance_activations():
    c, f = 64, 128
    x = _rand(0, (8, 12, 12, c))
    layer = sl.SeparableConv(f, (3, 3), padding="VALID")
    y = np.asarray(layer.apply(layer.init(KEY, x), x))
    np.testing.assert_allclose(y.var(), 1.0, rtol=0.2)


def test_custom_initializers_are_used():
    x = jnp.ones((1, 4, 4, 2))
    layer = sl.SeparableConv(
        3,
        (3, 3),
        use_depthwise_bias=True,
        depthwise_init=jax.nn.initializers.constant(0.5),
        pointwise_init=jax.nn.initializers.constant(2.0),
        bias_init=jax.nn.initializers.constant(-1.0),
    )
    p = _np(layer.init(KEY, x)["params"])
    np.testing.assert_array_equal(p["depthwise_kernel"], np.full((3, 3, 1, 2), 0.5))
    np.testing.assert_array_equal(p["pointwise_kernel"], np.full((2, 3), 2.0))
    np.testing.assert_array_equal(p["depthwise_bias"], np.full(2, -1.0))
    np.testing.assert_array_equal(p["bias"], np.full(3, -1.0))


def test_param_dtype_and_dtype():
    x = jnp.ones((1, 6, 6, 2))
    layer = sl.SeparableConv(4, (3, 3), param_dtype=jnp.float16, dtype=jnp.float32)
    v = layer.init(KEY, x)
    assert {a.dtype for a in jax.tree.leaves(v)} == {jnp.dtype(jnp.float16)}
    assert layer.apply(v, x).dtype == jnp.float32
    half = sl.DepthwiseConv((3, 3), dtype=jnp.float16)
    assert half.apply(half.init(KEY, x), x).dtype == jnp.float16


def test_bfloat16_params_and_input_compute_in_bfloat16():
    """dtype=None promotes: bfloat16 params and input give a bfloat16 result."""
    layer = sl.SeparableConv(4, (3, 3), param_dtype=jnp.bfloat16)
    x = jnp.asarray(_rand(0, (1, 6, 6, 2)), jnp.bfloat16)
    shapes = jax.eval_shape(layer.init, KEY, x)["params"]
    assert {a.dtype for a in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.bfloat16)}
    p = {
        k: jnp.asarray(_rand(i + 1, a.shape), jnp.bfloat16)
        for i, (k, a) in enumerate(shapes.items())
    }
    y = layer.apply({"params": p}, x)
    assert y.dtype == jnp.bfloat16
    p64 = {k: np.asarray(v, np.float64) for k, v in p.items()}
    mid = ref.depthwise_conv_nd(np.asarray(x, np.float64), p64["depthwise_kernel"])
    want = ref.pointwise_conv_nd(mid, p64["pointwise_kernel"], p64["bias"])
    # bfloat16 keeps 8 significant bits (relative step 2^-8 = 0.4%); two rounded steps
    # on O(1)-O(10) values.
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=3e-2, atol=0.15)


@pytest.mark.parametrize("impl", sorted(dispatch.KERNELS))
def test_every_impl_matches_reference(impl):
    c, m, f = 3, 2, 4
    x = _rand(0, (2, 7, 6, c))
    layer = sl.SeparableConv(
        f,
        (3, 3),
        strides=2,
        depth_multiplier=m,
        use_depthwise_bias=True,
        impl=impl,
        precision=HIGHEST,
    )
    p = {
        "depthwise_kernel": _rand(1, (3, 3, 1, c * m)),
        "pointwise_kernel": _rand(2, (c * m, f)),
        "depthwise_bias": _rand(3, (c * m,)),
        "bias": _rand(4, (f,)),
    }
    mid = ref.depthwise_conv_nd(x, p["depthwise_kernel"], strides=2, bias=p["depthwise_bias"])
    want = ref.pointwise_conv_nd(mid, p["pointwise_kernel"], p["bias"])
    got = jax.jit(layer.apply)({"params": p}, x)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- forward


GRID = [
    # (window, strides, padding, dilation, multiplier, padding_mode)
    ((3, 3), 1, "SAME", 1, 1, "zeros"),
    ((3, 3), 2, "SAME", 1, 2, "zeros"),
    ((3, 2), (2, 1), "VALID", (1, 2), 1, "zeros"),
    ((3, 3), 1, 1, 2, 3, "zeros"),
    ((2, 3), 2, ((1, 0), (2, 1)), 1, 2, "zeros"),
    ((3, 3), 1, "CAUSAL", 1, 1, "zeros"),
    ((3, 3), 1, 1, 1, 2, "reflect"),
    ((3, 3), 2, "SAME", 1, 1, "circular"),
    ((3, 3), 1, 2, 1, 1, "replicate"),
]


@pytest.mark.parametrize("window,strides,padding,dilation,m,mode", GRID)
def test_depthwise_and_separable_match_reference(window, strides, padding, dilation, m, mode):
    c, f = 3, 4
    x = _rand(0, (2, 7, 8, c))
    opts = dict(
        strides=strides,
        padding=padding,
        kernel_dilation=dilation,
        depth_multiplier=m,
        padding_mode=mode,
        precision=HIGHEST,
    )
    ref_kw = dict(strides=strides, padding=padding, dilation=dilation, padding_mode=mode)

    dw = sl.DepthwiseConv(window, **opts)
    p = {"kernel": _rand(1, (*window, 1, c * m)), "bias": _rand(2, (c * m,))}
    chex.assert_trees_all_equal_shapes(jax.eval_shape(dw.init, KEY, x)["params"], p)
    v = {"params": p}
    want = ref.depthwise_conv_nd(x, p["kernel"], bias=p["bias"], **ref_kw)
    np.testing.assert_allclose(jax.jit(dw.apply)(v, x), want, rtol=RTOL, atol=ATOL)

    sep = sl.SeparableConv(f, window, use_depthwise_bias=True, **opts)
    p = {
        "depthwise_kernel": _rand(3, (*window, 1, c * m)),
        "pointwise_kernel": _rand(4, (c * m, f)),
        "depthwise_bias": _rand(5, (c * m,)),
        "bias": _rand(6, (f,)),
    }
    chex.assert_trees_all_equal_shapes(jax.eval_shape(sep.init, KEY, x)["params"], p)
    mid = ref.depthwise_conv_nd(x, p["depthwise_kernel"], bias=p["depthwise_bias"], **ref_kw)
    want = ref.pointwise_conv_nd(mid, p["pointwise_kernel"], p["bias"])
    got = jax.jit(sep.apply)({"params": p}, x)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("n", [1, 3])
def test_other_ranks_batch_dims_and_channels_first(n):
    """1-D and 3-D windows, two leading batch dims, channels-first: same as the reference."""
    c, m, f = 2, 2, 3
    window = (3, 2, 2)[:n]
    spatial = (6, 5, 4)[:n]
    x = _rand(0, (2, 3, *spatial, c))
    dk, pk, b = _rand(1, (*window, 1, c * m)), _rand(2, (c * m, f)), _rand(3, (f,))
    mid = _ref_batched(ref.depthwise_conv_nd, x, dk, n=n, strides=2, padding="SAME")
    want = ref.pointwise_conv_nd(mid, pk, b)
    params = {"params": {"depthwise_kernel": dk, "pointwise_kernel": pk, "bias": b}}
    for fmt in ["channels_last", "channels_first"]:
        layer = sl.SeparableConv(
            f, window, strides=2, depth_multiplier=m, data_format=fmt, precision=HIGHEST
        )
        xin = x if fmt == "channels_last" else np.moveaxis(x, -1, -n - 1)
        got = np.asarray(layer.apply(params, xin))
        if fmt == "channels_first":
            got = np.moveaxis(got, -n - 1, -1)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_pointwise_matches_reference_channels_first_with_batch_dims():
    x = _rand(0, (2, 3, 4, 5, 6))  # (*batch, C=4, H=5, W=6)
    k, b = _rand(1, (4, 7)), _rand(2, (7,))
    want = np.moveaxis(ref.pointwise_conv_nd(np.moveaxis(x, 2, -1), k, b), -1, 2)
    layer = sl.PointwiseConv(7, data_format="channels_first", num_spatial_dims=2, precision=HIGHEST)
    got = layer.apply({"params": {"kernel": k, "bias": b}}, x)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    layer_last = sl.PointwiseConv(7, precision=HIGHEST)
    got_last = layer_last.apply({"params": {"kernel": k, "bias": b}}, np.moveaxis(x, 2, -1))
    np.testing.assert_allclose(got_last, np.moveaxis(want, 2, -1), rtol=RTOL, atol=ATOL)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3),
    size=st.integers(4, 9),
    k=st.integers(1, 3),
    s=st.integers(1, 3),
    d=st.integers(1, 2),
    m=st.integers(1, 3),
    padding=st.sampled_from(["SAME", "VALID", "CAUSAL", 1]),
    batch=st.lists(st.integers(1, 2), max_size=2),
)
def test_output_shape_closed_form(n, size, k, s, d, m, padding, batch):
    """Output spatial size: SAME ceil(in / s); VALID floor((in - eff) / s) + 1; CAUSAL and int
    padding from the padded size, with eff = (k - 1) * d + 1."""
    c, f = 2, 3
    eff = (k - 1) * d + 1
    pad_total = {"SAME": None, "VALID": 0, "CAUSAL": eff - 1, 1: 2}[padding]
    out = -(-size // s) if padding == "SAME" else (size + pad_total - eff) // s + 1
    x = jax.ShapeDtypeStruct((*batch, *(size,) * n, c), jnp.float32)
    layer = sl.SeparableConv(
        f, (k,) * n, strides=s, kernel_dilation=d, depth_multiplier=m, padding=padding
    )
    if out < 1:
        with pytest.raises(ValueError, match="dilated window"):
            jax.eval_shape(layer.init, KEY, x)
        return
    variables = jax.eval_shape(layer.init, KEY, x)
    y = jax.eval_shape(layer.apply, variables, x)
    assert y.shape == (*batch, *(out,) * n, f)


def test_closed_form_constant_weights():
    """Ones everywhere, VALID: every output is C * prod(window) + bias."""
    c, f = 4, 2
    layer = sl.SeparableConv(
        f,
        (3, 3),
        padding="VALID",
        depthwise_init=jax.nn.initializers.ones,
        pointwise_init=jax.nn.initializers.ones,
        bias_init=jax.nn.initializers.constant(0.5),
    )
    x = jnp.ones((1, 5, 5, c))
    y = layer.apply(layer.init(KEY, x), x)
    np.testing.assert_array_equal(np.asarray(y), np.full((1, 3, 3, f), c * 9 + 0.5))


# ----------------------------------------------------------------------------- transforms


class _Block(nn.Module):
    """A small model built from all three modules."""

    @nn.compact
    def __call__(self, x):
        x = sl.DepthwiseConv((3, 3), depth_multiplier=2, precision=HIGHEST)(x)
        x = nn.relu(x)
        x = sl.PointwiseConv(5, precision=HIGHEST)(x)
        return sl.SeparableConv(4, (3, 3), strides=2, precision=HIGHEST)(x)


def test_jit_matches_eager_and_does_not_retrace():
    model = _Block()
    x = _rand(0, (2, 8, 8, 3))
    v = _random_variables(model, x)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fwd(v, x):
        return model.apply(v, x)

    eager = model.apply(v, x)
    for seed in range(3):
        xs = _rand(seed, (2, 8, 8, 3))
        np.testing.assert_allclose(fwd(v, xs), model.apply(v, xs), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fwd(v, x), eager, rtol=1e-5, atol=1e-5)


def test_vmap_over_inputs_and_over_params():
    model = _Block()
    xs = _rand(0, (3, 2, 8, 8, 3))
    v = _random_variables(model, xs[0])
    apply = jax.jit(model.apply)
    batched = jax.jit(jax.vmap(model.apply, in_axes=(None, 0)))(v, xs)
    looped = np.stack([apply(v, x) for x in xs])
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-5)

    vs = jax.tree.map(lambda a: jnp.stack([a, 1.5 * a]), v)
    ys = jax.jit(jax.vmap(model.apply, in_axes=(0, None)))(vs, xs[0])
    for i in range(2):
        one = jax.tree.map(lambda a, i=i: a[i], vs)
        np.testing.assert_allclose(ys[i], apply(one, xs[0]), rtol=1e-5, atol=1e-5)


def test_grad_matches_finite_differences():
    layer = sl.SeparableConv(
        3, (3, 3), strides=2, depth_multiplier=2, use_depthwise_bias=True, precision=HIGHEST
    )
    x = _rand(0, (1, 5, 5, 2))
    params = layer.init(KEY, x)["params"]
    params = {k: jnp.asarray(_rand(i + 1, p.shape)) for i, (k, p) in enumerate(params.items())}

    @jax.jit
    def loss(params, x):
        return jnp.sum(jnp.sin(layer.apply({"params": params}, x)))

    check_grads(loss, (params, jnp.asarray(x)), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)
    grads = jax.grad(loss)(params, x)
    chex.assert_trees_all_equal_shapes(grads, params)


def test_tabulate_shows_modules_and_param_counts():
    x = jnp.ones((1, 8, 8, 3))
    table = nn.tabulate(_Block(), KEY, console_kwargs={"width": 250})(x)
    table = re.sub(r"\x1b\[[0-9;]*m", "", table)  # drop terminal colour codes
    for name in ["DepthwiseConv", "PointwiseConv", "SeparableConv"]:
        assert name in table
    # depthwise 3x3 x 3 x 2 + 6; pointwise 6 x 5 + 5; separable 9 x 5 + 5 x 4 + 4
    counts = [9 * 6 + 6, 6 * 5 + 5, 9 * 5 + 5 * 4 + 4]
    for count in counts:
        assert re.search(rf"\b{count}\b", table), count
    assert f"Total Parameters: {sum(counts)}" in table


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda: sl.DepthwiseConv(3), TypeError, "`kernel_size` must be a sequence"),
        (lambda: sl.DepthwiseConv((3, 3, 3, 3)), ValueError, "1, 2 or 3"),
        (lambda: sl.DepthwiseConv((3, 0)), ValueError, "`kernel_size` must be >= 1"),
        (lambda: sl.DepthwiseConv((3, 3), strides=(1, 2, 1)), ValueError, "`strides` has 3"),
        (lambda: sl.DepthwiseConv((3, 3), padding="FULL"), ValueError, "`padding` must be one"),
        (lambda: sl.DepthwiseConv((3, 3), padding_mode="edge"), ValueError, "`padding_mode`"),
        (lambda: sl.DepthwiseConv((3, 3), kernel_dilation=0), ValueError, "`kernel_dilation`"),
        (lambda: sl.DepthwiseConv((3, 3), depth_multiplier=0), ValueError, "`depth_multiplier`"),
        (lambda: sl.DepthwiseConv((3, 3), depth_multiplier=1.5), TypeError, "`depth_multiplier`"),
        (lambda: sl.DepthwiseConv((3, 3), data_format="NHWC"), ValueError, "`data_format`"),
        (lambda: sl.DepthwiseConv((3, 3), impl="magic"), ValueError, "`impl`"),
        (lambda: sl.DepthwiseConv((3, 3), dtype=jnp.int32), TypeError, "`dtype`"),
        (lambda: sl.DepthwiseConv((3, 3), precision="max"), ValueError, "`precision`"),
        (lambda: sl.DepthwiseConv((3, 3), use_bias="yes"), TypeError, "`use_bias`"),
        (lambda: sl.DepthwiseConv((3, 3), depthwise_init=0.1), TypeError, "`depthwise_init`"),
        (lambda: sl.PointwiseConv(0), ValueError, "`features` must be >= 1"),
        (lambda: sl.PointwiseConv(4, num_spatial_dims=-1), ValueError, "`num_spatial_dims`"),
        (lambda: sl.PointwiseConv(4, pointwise_init="lecun"), TypeError, "`pointwise_init`"),
        (lambda: sl.SeparableConv(4.0, (3, 3)), TypeError, "`features`"),
        (lambda: sl.SeparableConv(4, (3, 3), param_dtype=None), TypeError, "`param_dtype`"),
        (lambda: sl.SeparableConv(4, (3, 3), use_depthwise_bias=1), TypeError, "depthwise_bias"),
    ],
)
def test_bad_options_fail_at_construction(make, error, match):
    with pytest.raises(error, match=re.escape(match)):
        make()


def test_bad_inputs_fail_with_clear_errors():
    with pytest.raises(ValueError, match=re.escape("`x` has shape (8, 8) (rank 2)")):
        sl.DepthwiseConv((3, 3)).init(KEY, jnp.ones((8, 8)))
    with pytest.raises(ValueError, match="dilated window"):
        sl.SeparableConv(2, (5, 5), padding="VALID").init(KEY, jnp.ones((1, 3, 3, 2)))
    with pytest.raises(TypeError, match="numeric dtype"):
        sl.PointwiseConv(2).init(KEY, np.array([["a"]]))
