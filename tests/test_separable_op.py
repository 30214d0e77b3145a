"""The separable primitive and its fused Pallas kernel.

On this CPU the fused kernel runs in Pallas interpret mode (``impl="fused"``): the
same kernel that Triton compiles on GPU, so its indexing, masks and tiling are
checked here against the float64 NumPy references of ``tests/reference.py``. The
tests marked ``accelerator`` run the compiled kernel on a GPU and are skipped
elsewhere.
"""

from __future__ import annotations

import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from sepconv_jax import _spec, separable_conv
from sepconv_jax.cost import count, depthwise_conv_cost, pointwise_conv_cost
from sepconv_jax.kernels import dispatch, pallas_fused
from sepconv_jax.kernels import separable as sep_op
from sepconv_jax.kernels._jax_compat import quiet_triton_deprecation
from tests import reference as ref
from tests.helpers import HIGHEST, gpu_lowering_here, rand, to_first, to_last

BF16 = jnp.bfloat16


def _reference(x, dk, pk, **kw):
    """float64 separable conv of channels-last ``x``: the depthwise then the 1x1 loop."""
    return ref.pointwise_conv_nd(ref.depthwise_conv_nd(x, dk, **kw), pk)


def _as64(a):
    return np.asarray(jnp.asarray(a, jnp.float32), np.float64)


def _fused(x, dk, pk, *, data_format="channels_last", **kw):
    n = dk.ndim - 2
    if data_format == "channels_first":
        x = to_first(x, n)
    f = functools.partial(separable_conv, data_format=data_format, impl="fused", **kw)
    y = np.asarray(jnp.asarray(jax.jit(f)(x, dk, pk), jnp.float32))
    return to_last(y, n) if data_format == "channels_first" else y


# ----------------------------------------------------------------------------- the kernel

# (x shape channels-last, depthwise kernel shape, out channels, options)
CASES = {
    "2d-same-stride2-m2": ((2, 7, 6, 3), (3, 3, 1, 6), 5, dict(strides=2)),
    "2d-valid-dilation2": ((1, 9, 8, 4), (3, 3, 1, 4), 7, dict(padding="VALID", dilation=2)),
    "2d-causal": ((2, 6, 6, 2), (3, 2, 1, 2), 3, dict(padding="CAUSAL")),
    "2d-int-padding": ((1, 5, 7, 3), (5, 3, 1, 3), 4, dict(padding=1, strides=(1, 2))),
    "2d-pairs-m3": (
        (2, 8, 5, 2),
        (2, 3, 1, 6),
        9,
        dict(padding=((2, 0), (1, 3)), strides=(2, 1), dilation=(1, 2)),
    ),
    "2d-reflect": ((1, 6, 6, 3), (3, 3, 1, 3), 4, dict(padding_mode="reflect")),
    "1d-same-stride3": ((2, 13, 4), (5, 1, 8), 6, dict(strides=3)),
    "1d-causal-dilation": ((3, 10, 2), (3, 1, 2), 5, dict(padding="CAUSAL", dilation=3)),
    "3d-same": ((1, 4, 5, 3, 2), (3, 2, 3, 1, 4), 3, dict(strides=(1, 2, 1))),
}


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_kernel_matches_float64_reference(case, data_format):
    x_shape, dk_shape, out, kw = CASES[case]
    x, dk, pk = rand(0, x_shape), rand(1, dk_shape), rand(2, (dk_shape[-1], out))
    got = _fused(x, dk, pk, data_format=data_format, precision=HIGHEST, **kw)
    np.testing.assert_allclose(got, _reference(x, dk, pk, **kw), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("case", ["2d-same-stride2-m2", "1d-same-stride3"])
def test_fused_bfloat16_keeps_a_float32_intermediate(case):
    x_shape, dk_shape, _, kw = CASES[case]
    x = jnp.asarray(rand(0, x_shape), BF16)
    dk = jnp.asarray(rand(1, dk_shape), BF16)
    pk = jnp.asarray(rand(2, (dk_shape[-1], 12)), BF16)
    want = _reference(_as64(x), _as64(dk), _as64(pk), **kw)
    scale = np.abs(want).max()
    kw = dict(kw, precision=HIGHEST)
    fused = jax.jit(functools.partial(separable_conv, impl="fused", **kw))(x, dk, pk)
    pair = jax.jit(functools.partial(separable_conv, impl="xla", **kw))(x, dk, pk)
    assert fused.dtype == pair.dtype == BF16
    fused_err = np.abs(_as64(fused) - want)
    pair_err = np.abs(_as64(pair) - want)
    # One bfloat16 rounding of the output (2^-8 relative) and nothing else...
    np.testing.assert_array_less(fused_err, 2**-8 * np.abs(want) + 1e-6 * scale)
    # ...where the pair also rounds the intermediate: on average the fused kernel
    # is closer to the exact result.
    assert fused_err.mean() < pair_err.mean()


def test_fused_preferred_element_type_and_mixed_dtypes():
    x, dk, pk = rand(0, (2, 6, 6, 4)), rand(1, (3, 3, 1, 8)), rand(2, (8, 5))
    xb, dkb, pkb = (jnp.asarray(a, BF16) for a in (x, dk, pk))
    want = _reference(_as64(xb), _as64(dkb), _as64(pkb))
    # bfloat16 inputs, float32 accumulation and output: no rounding but the inputs'.
    y = separable_conv(
        xb, dkb, pkb, impl="fused", preferred_element_type=jnp.float32, precision=HIGHEST
    )
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)
    # A float32 pointwise kernel makes the pointwise step (and the output) float32.
    y = separable_conv(xb, dkb, pk, impl="fused", precision=HIGHEST)
    assert y.dtype == jnp.float32
    want = _reference(_as64(xb), _as64(dkb), pk)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)


def test_fused_in_float64():
    x, dk, pk = rand(0, (2, 7, 5, 3)), rand(1, (3, 3, 1, 6)), rand(2, (6, 4))
    with jax.enable_x64(True):
        args = [jnp.asarray(a, jnp.float64) for a in (x, dk, pk)]
        y = separable_conv(*args, strides=2, impl="fused")
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(
            np.asarray(y), _reference(x, dk, pk, strides=2), rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_fused_tiles_with_tails_in_every_dim(data_format):
    # 16-wide tiles on 5 * 7 * 7 = 245 positions (15 tiles + 5), 40 intermediate
    # channels (2 steps + 8) and 37 outputs (2 tiles + 5): every tail is masked.
    x, dk, pk = rand(0, (5, 7, 7, 20)), rand(1, (3, 3, 1, 40)), rand(2, (40, 37))
    spec = _spec.make_spec(
        to_first(x, 2) if data_format == "channels_first" else x,
        dk,
        groups=None,
        strides=1,
        padding="SAME",
        dilation=1,
        padding_mode="zeros",
        data_format=data_format,
    )
    blocks = pallas_fused.Blocks(positions=16, channels=16, out=16)
    f = jax.jit(
        lambda x, dk, pk: sep_op.separable(
            x, dk, pk, spec, impl="fused", precision=HIGHEST, blocks=blocks
        )
    )
    got = np.asarray(f(to_first(x, 2) if data_format == "channels_first" else x, dk, pk))
    got = to_last(got, 2) if data_format == "channels_first" else got
    np.testing.assert_allclose(got, _reference(x, dk, pk), rtol=2e-5, atol=2e-5)


def test_fused_with_several_or_no_batch_dims():
    x, dk, pk = rand(0, (2, 3, 5, 5, 2)), rand(1, (3, 3, 1, 2)), rand(2, (2, 3))
    got = separable_conv(x, dk, pk, impl="fused", precision=HIGHEST)
    want = _reference(x.reshape(6, 5, 5, 2), dk, pk).reshape(2, 3, 5, 5, 3)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)
    got = separable_conv(x[0, 0], dk, pk, impl="fused", precision=HIGHEST)
    np.testing.assert_allclose(np.asarray(got), want[0, 0], rtol=2e-5, atol=2e-5)


def test_fused_lowers_without_the_pair():
    # Lowered for this CPU, the fused layer is the interpret-mode kernel (a loop with a
    # matrix multiply), the pair a depthwise kernel and a 1x1 convolution.
    args = rand(0, (1, 6, 6, 4)), rand(1, (3, 3, 1, 4)), rand(2, (4, 8))

    def text(impl):
        f = functools.partial(separable_conv, impl=impl)
        return _lowered_text(f, args, "cpu")

    assert "stablehlo.convolution" not in text("fused")
    assert "stablehlo.while" in text("fused")
    assert "stablehlo.convolution" in text("xla")


# ----------------------------------------------------------------------------- inverted residual


def _inverted_residual_reference(x, ek, eb, dk, db, pk, *, strides, channels_last):
    """float64 NumPy loop from the definition: expand (1x1 + bias, ReLU6), zero-pad
    the expanded activation by SAME, depthwise 3x3 (+ bias, ReLU6), project 1x1."""
    x = (
        np.asarray(x, np.float64)
        if channels_last
        else np.moveaxis(np.asarray(x, np.float64), 1, -1)
    )
    relu6 = lambda v: np.clip(v, 0.0, 6.0)
    e = relu6(
        np.einsum("nhwc,cd->nhwd", x, np.asarray(ek, np.float64)) + np.asarray(eb, np.float64)
    )
    n, size, _, mid = e.shape
    out = -(-size // strides)
    total = max((out - 1) * strides + 3 - size, 0)
    lo = total // 2
    padded = np.zeros((n, size + total, size + total, mid))
    padded[:, lo : lo + size, lo : lo + size] = e
    k = np.asarray(dk, np.float64)[:, :, 0, :]
    d = np.zeros((n, out, out, mid))
    for i in range(out):
        for j in range(out):
            window = padded[:, i * strides : i * strides + 3, j * strides : j * strides + 3]
            d[:, i, j] = np.einsum("nabc,abc->nc", window, k)
    y = np.einsum(
        "nhwd,de->nhwe", relu6(d + np.asarray(db, np.float64)), np.asarray(pk, np.float64)
    )
    return y if channels_last else np.moveaxis(y, -1, 1)


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_fused_inverted_residual_matches_float64_reference(strides, data_format):
    """Expand, depthwise and project in one interpret-mode kernel, with tails in the
    positions (2*6*6 or 2*3*3 over tiles of 16), the 20 expanded channels (tiles of
    16) and the 7 outputs."""
    c_in, mid, c_out = 5, 20, 7
    keys = jax.random.split(jax.random.key(0), 6)
    x = jax.random.normal(keys[0], (2, 6, 6, c_in))
    ek = jax.random.normal(keys[1], (c_in, mid)) * 0.5
    eb = jax.random.normal(keys[2], (mid,))
    dk = jax.random.normal(keys[3], (3, 3, 1, mid)) * 0.5
    db = jax.random.normal(keys[4], (mid,))
    pk = jax.random.normal(keys[5], (mid, c_out)) * 0.5
    channels_last = data_format == "channels_last"
    if not channels_last:
        x = jnp.moveaxis(x, -1, 1)
    expanded = jax.ShapeDtypeStruct((2, 6, 6, mid) if channels_last else (2, mid, 6, 6), x.dtype)
    spec = _spec.make_spec(
        expanded,
        dk,
        groups=None,
        strides=strides,
        padding="SAME",
        dilation=1,
        padding_mode="zeros",
        data_format=data_format,
    )
    blocks = pallas_fused.Blocks(positions=16, channels=16, out=16)
    run = jax.jit(
        functools.partial(
            pallas_fused.fused_inverted_residual,
            spec=spec,
            platform="cpu",
            precision=HIGHEST,
            blocks=blocks,
        )
    )
    y = run(x, ek, eb, dk, db, pk)
    want = _inverted_residual_reference(
        x, ek, eb, dk, db, pk, strides=strides, channels_last=channels_last
    )
    assert y.shape == want.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
    assert (want != 0).mean() > 0.5  # ReLU6 leaves most outputs nonzero: a real check


def test_fused_inverted_residual_checks_its_shapes():
    x = jnp.ones((1, 4, 4, 3))
    spec = _spec.make_spec(
        jnp.ones((1, 4, 4, 8)),
        jnp.ones((3, 3, 1, 8)),
        groups=None,
        strides=1,
        padding="SAME",
        dilation=1,
        padding_mode="zeros",
        data_format="channels_last",
    )
    good = dict(
        expand_kernel=jnp.ones((3, 8)),
        expand_bias=jnp.ones(8),
        depthwise_kernel=jnp.ones((3, 3, 1, 8)),
        depthwise_bias=jnp.ones(8),
        project_kernel=jnp.ones((8, 4)),
    )
    bad = dict(good, expand_kernel=jnp.ones((4, 8)))
    with pytest.raises(
        ValueError, match=r"`expand_kernel` has shape \(4, 8\) but the block needs \(3, 8\)"
    ):
        pallas_fused.fused_inverted_residual(x, **bad, spec=spec, platform="cpu")
    bad = dict(good, depthwise_bias=jnp.ones(7))
    with pytest.raises(ValueError, match="`depthwise_bias` has shape"):
        pallas_fused.fused_inverted_residual(x, **bad, spec=spec, platform="cpu")


def test_blocks_are_checked():
    with pytest.raises(ValueError, match=r"`Blocks.positions` must be a power of two >= 16"):
        pallas_fused.Blocks(positions=24)
    with pytest.raises(ValueError, match=r"`Blocks.out` must be a power of two >= 16"):
        pallas_fused.Blocks(out=8)
    with pytest.raises(ValueError, match=r"`Blocks.num_warps` must be an int >= 1"):
        pallas_fused.Blocks(num_warps=0)


def test_unknown_impl_is_a_clear_error():
    args = rand(0, (1, 6, 6, 4)), rand(1, (3, 3, 1, 4)), rand(2, (4, 8))
    with pytest.raises(ValueError, match=r"`impl` must be one of .*'fused'.*got 'fuse'"):
        separable_conv(*args, impl="fuse")


# ----------------------------------------------------------------------------- transformations


@pytest.mark.parametrize("impl", ["fused", "xla"])
def test_check_grads_second_order(impl):
    # float64, so that finite differences pin the derivatives down tightly.
    x, dk, pk = rand(0, (2, 5, 6, 2)), rand(1, (3, 3, 1, 4)), rand(2, (4, 3))
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a, jnp.float64) for a in (x, dk, pk))
        f = functools.partial(separable_conv, strides=2, dilation=(1, 2), impl=impl)
        check_grads(f, args, order=2, modes=("fwd", "rev"))


def _eqns(f, *args):
    return [eqn.primitive.name for eqn in jax.make_jaxpr(f)(*args).jaxpr.eqns]


def _all_eqns(jaxpr):
    """Primitive names of a jaxpr and of every jaxpr nested in it."""
    names = []
    for eqn in jaxpr.eqns:
        names.append(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if isinstance(inner, jax.extend.core.Jaxpr):
                    names += _all_eqns(inner)
    return names


def test_jvp_is_three_fused_terms_and_skips_zeros():
    x, dk, pk = rand(0, (2, 6, 6, 2)), rand(1, (3, 3, 1, 2)), rand(2, (2, 3))
    f = functools.partial(separable_conv, impl="fused")

    def all_tangents(x, dk, pk):
        return jax.jvp(f, (x, dk, pk), (x, dk, pk))

    def one_tangent(x, dk, pk):
        return jax.jvp(lambda pk: f(x, dk, pk), (pk,), (pk,))

    names = _eqns(all_tangents, x, dk, pk)
    assert names.count("separable_conv") == 4  # the primal and three tangent terms
    assert not {"depthwise_conv", "conv_general_dilated"} & set(names)
    assert _eqns(one_tangent, x, dk, pk).count("separable_conv") == 2


def test_gradients_are_depthwise_transposes_and_1x1_steps():
    x, dk, pk = rand(0, (2, 6, 6, 2)), rand(1, (3, 3, 1, 2)), rand(2, (2, 3))

    def loss(x, dk, pk):
        return jnp.sum(jnp.sin(separable_conv(x, dk, pk, impl="fused")))

    names = _all_eqns(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(x, dk, pk).jaxpr)
    assert names.count("separable_conv") == 1  # the forward pass, fused
    assert names.count("depthwise_conv_input_transpose") == 1
    assert names.count("depthwise_conv_kernel_transpose") == 1
    assert names.count("depthwise_conv") == 1  # the intermediate, recomputed for dpk


def test_vmap_over_inputs_stays_one_fused_op_and_kernels_fall_back_to_the_pair():
    x, dk, pk = rand(0, (2, 6, 6, 2)), rand(1, (3, 3, 1, 2)), rand(2, (2, 3))
    f = functools.partial(separable_conv, impl="fused", precision=HIGHEST)
    xs = np.stack([x, 2 * x, -x])
    jaxpr = jax.make_jaxpr(jax.vmap(f, in_axes=(0, None, None)))(xs, dk, pk).jaxpr
    (eqn,) = [e for e in jaxpr.eqns if e.primitive.name == "separable_conv"]
    assert eqn.params["spec"].batch_shape == (6,)
    got = jax.vmap(f, in_axes=(0, None, None))(xs, dk, pk)
    want = np.stack([_reference(a, dk, pk) for a in xs])
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)

    pks = np.stack([pk, -pk, 0.5 * pk])
    names = _all_eqns(jax.make_jaxpr(jax.vmap(f, in_axes=(None, None, 0)))(x, dk, pks).jaxpr)
    assert "separable_conv" not in names and names.count("depthwise_conv") == 1
    assert not {"while", "scan"} & set(names)
    got = jax.vmap(f, in_axes=(None, None, 0))(x, dk, pks)
    want = np.stack([_reference(x, dk, p) for p in pks])
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


def test_a_depthwise_bias_keeps_the_two_steps():
    x, dk, pk = rand(0, (1, 6, 6, 2)), rand(1, (3, 3, 1, 2)), rand(2, (2, 3))
    f = functools.partial(separable_conv, depthwise_bias=jnp.ones(2), impl="fused")
    names = _eqns(f, x, dk, pk)
    assert "separable_conv" not in names
    assert "depthwise_conv" in names and "conv_general_dilated" in names
    got = f(x, dk, pk)
    want = ref.pointwise_conv_nd(ref.depthwise_conv_nd(x, dk, bias=np.ones(2)), pk)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


def test_auto_rule_keeps_the_pair_everywhere_for_now():
    spec = _spec.make_spec(
        np.ones((1, 8, 8, 4)),
        np.ones((3, 3, 1, 4)),
        groups=None,
        strides=1,
        padding="SAME",
        dilation=1,
        padding_mode="zeros",
        data_format="channels_last",
    )
    f32 = (np.float32,) * 3
    for platform in ("cpu", "cuda", "rocm", "tpu", None):
        assert not dispatch.separable_is_fused("auto", spec, 8, f32, platform)
        assert not dispatch.separable_is_fused("xla", spec, 8, f32, platform)
    for platform in ("cpu", "cuda", "rocm"):
        assert dispatch.separable_is_fused("fused", spec, 8, f32, platform)
    # No Mosaic (TPU) lowering, and no complex arithmetic: the pair runs there.
    assert not dispatch.separable_is_fused("fused", spec, 8, f32, "tpu")
    assert not dispatch.separable_is_fused("fused", spec, 8, (np.complex64,) * 3, "cuda")


def test_complex_inputs_run_the_pair():
    x = rand(0, (1, 5, 5, 2)) + 1j * rand(3, (1, 5, 5, 2))
    dk, pk = rand(1, (3, 3, 1, 2)), rand(2, (2, 3))
    got = separable_conv(x, dk, pk, impl="fused", precision=HIGHEST)
    want = _reference(x.real, dk, pk) + 1j * _reference(x.imag, dk, pk)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


# ----------------------------------------------------------------------------- cost


def test_cost_of_the_fused_layer_and_its_gradient():
    x = jax.ShapeDtypeStruct((2, 9, 9, 3), jnp.float32)
    dk = jax.ShapeDtypeStruct((3, 3, 1, 6), jnp.float32)
    pk = jax.ShapeDtypeStruct((6, 10), jnp.float32)
    dw = depthwise_conv_cost(3, 3, depth_multiplier=2, output_spatial=5).mult_adds * 2
    pw = pointwise_conv_cost(6, 10, output_spatial=5, use_bias=False).mult_adds * 2
    f = functools.partial(separable_conv, strides=2, impl="fused")
    c = count(f, x, dk, pk)
    assert [(op.kind, op.primitive, op.mult_adds) for op in c.ops] == [
        ("depthwise", "separable_conv", dw),
        ("pointwise", "separable_conv", pw),
    ]
    assert [op.output_shape for op in c.ops] == [(2, 5, 5, 6), (2, 5, 5, 10)]

    def loss(x, dk, pk):
        return jnp.sum(f(x, dk, pk))

    c = count(jax.grad(loss, argnums=(0, 1, 2)), x, dk, pk)
    # The forward pass (fused), then per operand one 1x1 step and one depthwise map:
    # dx and ddk each transpose the 1x1 step (XLA merges the two under jit), dpk
    # recomputes the intermediate.
    assert c.by_kind["depthwise"] == 4 * dw and c.by_kind["pointwise"] == 4 * pw
    assert c.unattributed == {}


# ----------------------------------------------------------------------------- lowering


def _sep_args(dtype=np.float32):
    return (
        jnp.asarray(rand(0, (2, 9, 8, 24)), dtype),
        jnp.asarray(rand(1, (3, 3, 1, 24)), dtype),
        jnp.asarray(rand(2, (24, 40)), dtype),
    )


def _lowered_text(f, args, platform):
    with gpu_lowering_here():
        return jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("dtype", [np.float32, BF16])
def test_lowers_for_cuda_as_a_triton_kernel(dtype):
    args = _sep_args(dtype)

    def f(impl):
        return functools.partial(separable_conv, strides=2, impl=impl)

    fused = _lowered_text(f("fused"), args, "cuda")
    assert "__gpu$xla.gpu.triton" in fused and "sepconv_fused_separable" in fused
    assert "stablehlo.convolution" not in fused
    # The rule keeps the pair on GPU for now: a strided 3x3 depthwise step runs the
    # depthwise Triton kernel, then the 1x1 step is a convolution.
    auto = _lowered_text(f("auto"), args, "cuda")
    assert "sepconv_fused_separable" not in auto
    assert "__gpu$xla.gpu.triton" in auto and "stablehlo.convolution" in auto

    def loss(x, dk, pk):
        return jnp.sum(f("fused")(x, dk, pk).astype(jnp.float32) ** 2)

    # Forward+backward: the fused forward once, then the unfused transposes, whose
    # depthwise steps are the Pallas kernels of impl="fused" (no grouped convolution)
    # and whose pointwise steps are 1x1 convolutions.
    grad = _lowered_text(jax.grad(loss, argnums=(0, 1, 2)), args, "cuda")
    calls = [line for line in grad.splitlines() if "__gpu$xla.gpu.triton" in line]
    assert sum("sepconv_fused_separable" in line for line in calls) == 1
    assert "depthwise_input_transpose" in grad and "depthwise_kernel_transpose" in grad
    assert "stablehlo.convolution" in grad
    groups = [int(g) for g in re.findall(r"feature_group_count\s*=\s*(\d+)", grad)]
    assert all(g == 1 for g in groups)


def test_exported_for_several_platforms_carries_each_ones_lowering():
    # One trace, exported for CPU, GPU and TPU: the interpret-mode kernel, the Triton
    # kernel (a custom call without JAX's stability guarantee, which export must be
    # told to accept) and the unfused pair.
    from jax import export

    args = _sep_args()
    f = jax.jit(functools.partial(separable_conv, strides=2, impl="fused", precision=HIGHEST))
    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    with gpu_lowering_here():
        exported = export.export(f, platforms=("cpu", "cuda", "tpu"), disabled_checks=checks)(*args)
    text = exported.mlir_module()
    assert "__gpu$xla.gpu.triton" in text
    assert "stablehlo.while" in text and "stablehlo.convolution" in text
    x, dk, pk = (np.asarray(a) for a in args)
    want = _reference(x, dk, pk, strides=2)
    got = export.deserialize(exported.serialize()).call(*args)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


def test_only_the_triton_deprecation_notice_is_quieted():
    import warnings

    # JAX 0.11 warns on every Pallas Triton lowering; the lowering rule quiets that
    # notice and nothing else.
    notice = "The Pallas Triton backend is deprecated and will be removed in a future JAX"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_triton_deprecation():
            warnings.warn(notice, DeprecationWarning, stacklevel=1)
            warnings.warn("something else is deprecated", DeprecationWarning, stacklevel=1)
            warnings.warn("another", UserWarning, stacklevel=1)
        warnings.warn(notice, DeprecationWarning, stacklevel=1)  # outside: shown again
    assert [str(w.message) for w in caught] == ["something else is deprecated", "another", notice]


def test_lowers_for_tpu_as_the_pair():
    # No fused kernel on TPU: the pair, whose depthwise step is the "pallas" family's
    # Mosaic kernel (impl="fused" on a depthwise step) and whose 1x1 step a convolution.
    text = _lowered_text(functools.partial(separable_conv, impl="fused"), _sep_args(), "tpu")
    assert "sepconv_fused_separable" not in text and "triton" not in text
    assert "tpu_custom_call" in text and "stablehlo.convolution" in text


# ----------------------------------------------------------------------------- on a GPU

on_gpu = pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="needs a GPU: the fused kernel compiled by Triton"
)


@pytest.mark.accelerator
@on_gpu
@pytest.mark.parametrize("dtype", [np.float32, BF16])
@pytest.mark.parametrize("case", ["2d-same-stride2-m2", "2d-valid-dilation2", "1d-same-stride3"])
def test_fused_kernel_on_gpu(case, dtype):
    x_shape, dk_shape, out, kw = CASES[case]
    args = [
        jnp.asarray(rand(s, shape), dtype)
        for s, shape in enumerate((x_shape, dk_shape, (dk_shape[-1], out)))
    ]
    x64, dk64, pk64 = (_as64(a) for a in args)
    want = _reference(x64, dk64, pk64, **kw)
    f = functools.partial(separable_conv, impl="fused", precision=HIGHEST, **kw)
    got = _as64(jax.jit(f)(*args))
    bf16 = dtype == BF16
    tol = 2**-7 if bf16 else 2e-5
    scale = 1.0 + np.abs(want)
    np.testing.assert_array_less(np.abs(got - want), tol * scale)

    # Gradients of sum(y * w): the float64 transposes written out with the references.
    w = rand(9, want.shape)

    def loss(*a):
        return jnp.sum(f(*a).astype(jnp.float32) * w)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
    with jax.enable_x64(True):

        def loss64(x, dk, pk):
            return jnp.sum(_jnp_separable(x, dk, pk, **kw) * w)

        want_grads = jax.grad(loss64, argnums=(0, 1, 2))(x64, dk64, pk64)
        want_grads = [np.asarray(g) for g in want_grads]
    for got_g, want_g in zip(grads, want_grads, strict=True):
        scale = 1.0 + np.abs(want_g).max()
        np.testing.assert_array_less(np.abs(_as64(got_g) - want_g), 4 * tol * scale)


def _jnp_separable(x, dk, pk, *, strides=1, padding="SAME", dilation=1):
    """The separable conv from its definition in jax.numpy (float64 on the host):
    pad, one strided slice per tap, multiply, sum, then the 1x1 matrix product."""
    n = dk.ndim - 2
    strides = (strides,) * n if isinstance(strides, int) else strides
    dilation = (dilation,) * n if isinstance(dilation, int) else dilation
    pads = ref.explicit_padding(padding, x.shape[1:-1], dk.shape[:n], strides, dilation)
    xp = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    c, cm = x.shape[-1], dk.shape[-1]
    xp = jnp.repeat(xp, cm // c, axis=-1)
    out_sp = [
        (size - (d * (k - 1) + 1)) // s + 1
        for size, k, s, d in zip(xp.shape[1:-1], dk.shape[:n], strides, dilation, strict=True)
    ]
    mid = 0.0
    for offs in itertools.product(*(range(k) for k in dk.shape[:n])):
        idx = tuple(
            slice(o * d, o * d + (m - 1) * s + 1, s)
            for o, d, s, m in zip(offs, dilation, strides, out_sp, strict=True)
        )
        mid = mid + xp[(slice(None), *idx, slice(None))] * dk[offs].reshape((1,) * (n + 1) + (cm,))
    return mid @ pk


def test_jnp_separable_matches_the_numpy_reference():
    # The differentiable reference of the GPU test, pinned to the NumPy loops here.
    for case in ["2d-same-stride2-m2", "2d-valid-dilation2", "1d-same-stride3"]:
        x_shape, dk_shape, out, kw = CASES[case]
        x, dk, pk = rand(0, x_shape), rand(1, dk_shape), rand(2, (dk_shape[-1], out))
        with jax.enable_x64(True):
            got = _jnp_separable(*(jnp.asarray(a, jnp.float64) for a in (x, dk, pk)), **kw)
        np.testing.assert_allclose(np.asarray(got), _reference(x, dk, pk, **kw), rtol=1e-12)


# ----------------------------------------------------------------------------- benchmark


def _fused_tune():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fused_tune.py"
    spec = importlib.util.spec_from_file_location("fused_tune", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fused_tune_quick_runs_and_writes_its_reports(tmp_path):
    import json

    tune = _fused_tune()
    argv = ["--quick", "--dtypes", "float32", "--workers", "2", "--out", str(tmp_path)]
    assert tune.main(argv) == 0
    result = json.loads((tmp_path / "fused_tune.json").read_text())
    assert [r["layer"] for r in result["rows"]] == ["8x8 C16 k3 s1 N16", "6x6 C24 k5 s2 N20"]
    for row in result["rows"]:
        assert row["dtype"] == "float32" and row["batch"] == 2
        # The fused kernel computes what the pair computes (in float32 on this CPU; a
        # GPU runs both at its default matmul precision, TF32).
        assert row["max_rel_diff"] < (1e-5 if jax.default_backend() == "cpu" else 1e-2)
        for key in ("pair_fwd_s", "pair_fwdbwd_s", "fused_fwdbwd_s"):
            assert row[key] > 0
        assert row["fwd_speedup"] == row["pair_fwd_s"] / row["fused_fwd_s"][row["best_blocks"]]
    assert set(result["summary"]) == {"float32"} and result["skipped"] == []
    text = (tmp_path / "fused_tune.md").read_text()
    assert "| 8x8 C16 k3 s1 N16 | float32 |" in text and "## Summary" in text


def test_fused_tune_rejects_a_bad_candidate(capsys):
    tune = _fused_tune()
    with pytest.raises(SystemExit):
        tune.main(["--out", "unused", "--candidates", "64,32,100,4,2"])
    assert "`Blocks.out` must be a power of two >= 16" in capsys.readouterr().err
