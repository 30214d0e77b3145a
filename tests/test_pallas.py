"""The Pallas kernels beyond the shared reference suite of ``test_kernels.py``.

* the Triton kernels with tiny tiles, so that every dim has several tiles and a
  masked edge, and the kernel transpose's programs loop over several steps;
* the TPU kernels in Pallas' TPU interpret mode;
* lowering for ``cuda`` (Triton) and ``tpu`` (Mosaic) on this CPU-only machine;
* block settings and their errors, and the float64 gradient references.

Expected values are the float64 NumPy references of ``tests/reference.py``.
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sepconv_jax import _spec
from sepconv_jax.kernels import pallas, pallas_triton
from sepconv_jax.kernels.pallas_triton import Blocks
from tests import reference as ref
from tests.helpers import gpu_lowering_here, rand
from tests.helpers import to_first as _to_first
from tests.helpers import to_last as _to_last

# (x shape channels-last, kernel shape, keyword arguments)
CASES = [
    ((2, 13, 3), (3, 1, 6), dict(padding="CAUSAL", dilation=2)),
    ((1, 12, 4), (4, 1, 4), dict(padding=((3, 5),), strides=3)),  # padding past the window
    ((2, 7, 9, 3), (3, 3, 1, 3), dict(padding="SAME")),
    ((1, 9, 10, 3), (3, 2, 1, 6), dict(padding=((2, 0), (1, 3)), strides=(2, 3), dilation=(1, 2))),
    ((2, 9, 8, 5), (5, 5, 1, 5), dict(padding="SAME", strides=2)),
]
CASE_IDS = ["1d-causal-dilated", "1d-wide-padding", "2d-same", "2d-mixed", "2d-5x5-stride2"]


def _problem(seed, xshape, kshape, kw):
    x, kernel = rand(seed, xshape), rand(seed + 1, kshape)
    y = ref.depthwise_conv_nd(x, kernel, **kw)
    g = rand(seed + 2, y.shape)
    dx = ref.depthwise_input_grad_nd(g, kernel, x.shape, **kw)
    dk = ref.depthwise_kernel_grad_nd(x, g, kshape[:-2], **kw)
    return (x, kernel, g), (y, dx, dk)


def _spec_of(x, kernel, kw, data_format="channels_last"):
    n = kernel.ndim - 2
    shape = _to_first(x, n).shape if data_format == "channels_first" else x.shape
    kw = dict(strides=1, padding="SAME", dilation=1) | kw
    return _spec.make_spec(
        jax.ShapeDtypeStruct(shape, x.dtype),
        jax.ShapeDtypeStruct(kernel.shape, kernel.dtype),
        groups=None,
        padding_mode="zeros",
        data_format=data_format,
        **kw,
    )


def _maps(spec, platform, dtype=np.float32, preferred_element_type=None):
    """The three maps of ``pallas`` for ``platform``, each jitted."""
    common = dict(
        platform=platform,
        precision=None,
        preferred_element_type=preferred_element_type,
        out_dtype=np.dtype(preferred_element_type or dtype),
    )
    grad = dict(common, out_dtype=np.dtype(dtype))
    return (
        jax.jit(lambda x, k: pallas.forward(x, k, spec, **common)),
        jax.jit(lambda g, k: pallas.input_transpose(g, k, spec, **grad)),
        jax.jit(lambda x, g: pallas.kernel_transpose(x, g, spec, **grad)),
    )


def _check(maps, inputs, want, rtol=2e-5, atol=1e-4, layout=lambda a: a, unlayout=None):
    forward, input_t, kernel_t = maps
    x, kernel, g = inputs
    unlayout = unlayout or (lambda a: a)
    y = forward(layout(x), kernel)
    dx = input_t(layout(g), kernel)
    dk = kernel_t(layout(x), layout(g))
    for got, expected in zip((unlayout(y), unlayout(dx), dk), want, strict=True):
        np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- Triton kernels

# Two channels per tile, 2 x 2 positions: several tiles in every
# dim, each with a masked edge; the kernel transpose spread over three programs, each
# looping over several position tiles (the last one past the end).
TINY = Blocks(rows=2, cols=2, channels=2)
TINY_REDUCTION = Blocks(rows=1, cols=2, channels=2, programs=3)


@pytest.mark.parametrize(
    "xshape,kshape,kw,data_format",
    [(*case, "channels_last") for case in CASES] + [(*CASES[i], "channels_first") for i in (0, 3)],
    ids=[*CASE_IDS, f"{CASE_IDS[0]}-channels_first", f"{CASE_IDS[3]}-channels_first"],
)
def test_triton_kernels_with_tiny_tiles(xshape, kshape, kw, data_format):
    inputs, want = _problem(0, xshape, kshape, kw)
    n = len(kshape) - 2
    first = data_format == "channels_first"
    spec = _spec_of(inputs[0], inputs[1], kw, data_format)
    with pallas_triton.blocks(forward=TINY, input_transpose=TINY, kernel_transpose=TINY_REDUCTION):
        _check(
            _maps(spec, "cpu"),
            inputs,
            want,
            layout=functools.partial(_to_first, n=n) if first else (lambda a: a),
            unlayout=functools.partial(_to_last, n=n) if first else None,
        )


def test_blocks_are_restored_and_validated():
    before = dict(pallas_triton.BLOCKS)
    with pallas_triton.blocks(forward=TINY):
        assert pallas_triton.BLOCKS["forward"] is TINY
        assert pallas_triton.BLOCKS["kernel_transpose"] is before["kernel_transpose"]
    assert before == pallas_triton.BLOCKS
    with pytest.raises(ValueError, match="`backward`"):
        with pallas_triton.blocks(backward=TINY):
            pass
    with pytest.raises(TypeError, match="`forward` must be a Blocks"):
        with pallas_triton.blocks(forward=(2, 2)):
            pass
    with pytest.raises(ValueError, match="`cols` must be a power of two, got 6"):
        Blocks(rows=2, cols=6)
    with pytest.raises(ValueError, match="`programs`"):
        Blocks(rows=2, cols=2, programs=0)


def test_tiles_keep_their_area_for_few_rows():
    b = Blocks(rows=4, cols=8)
    assert b.tile(rows=1000, cols=1000) == (4, 8)
    assert b.tile(rows=3, cols=5) == (4, 8)  # a small problem: one tile, never wider
    assert b.tile(rows=2, cols=1000) == (2, 16)  # 1-D with batch 2: as many positions
    assert b.tile(rows=1, cols=7) == (1, 8)
    assert b.channel_block(channels=144) == 32
    assert b.channel_block(channels=3) == 4


# ----------------------------------------------------------------------------- TPU kernels

_force_tpu_interpret = getattr(
    __import__("jax.experimental.pallas.tpu", fromlist=["tpu"]), "force_tpu_interpret_mode", None
)


@pytest.mark.skipif(
    _force_tpu_interpret is None, reason="this JAX has no pltpu.force_tpu_interpret_mode"
)
@pytest.mark.parametrize("xshape,kshape,kw", CASES, ids=CASE_IDS)
def test_tpu_kernels_in_interpret_mode(xshape, kshape, kw):
    inputs, want = _problem(10, xshape, kshape, kw)
    with _force_tpu_interpret():
        _check(_maps(_spec_of(inputs[0], inputs[1], kw), "tpu"), inputs, want)


@pytest.mark.skipif(
    _force_tpu_interpret is None, reason="this JAX has no pltpu.force_tpu_interpret_mode"
)
@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_bfloat16_accumulates_in_float32(platform):
    """bfloat16 operands, float32 results: exact up to float32 sums on both kernel
    families; bfloat16 results: within bfloat16 rounding."""
    xshape, kshape, kw = CASES[3]
    inputs, _ = _problem(20, xshape, kshape, kw)
    inputs = tuple(np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32) for a in inputs)
    x, kernel, g = inputs
    want = (
        ref.depthwise_conv_nd(x, kernel, **kw),
        ref.depthwise_input_grad_nd(g, kernel, x.shape, **kw),
        ref.depthwise_kernel_grad_nd(x, g, kshape[:-2], **kw),
    )
    spec = _spec_of(x, kernel, kw)
    bf16 = tuple(jnp.asarray(a, jnp.bfloat16) for a in inputs)
    context = _force_tpu_interpret() if platform == "tpu" else jax.enable_x64(False)
    with context:
        forward, _, _ = _maps(spec, platform, jnp.bfloat16, preferred_element_type=jnp.float32)
        y = forward(bf16[0], bf16[1])
        assert y.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(y), want[0], rtol=1e-5, atol=1e-5)
        maps = _maps(spec, platform, jnp.bfloat16)
        got = (maps[0](bf16[0], bf16[1]), maps[1](bf16[2], bf16[1]), maps[2](bf16[0], bf16[2]))
    for a, expected in zip(got, want, strict=True):
        assert a.dtype == jnp.bfloat16
        scale = np.abs(expected).max()
        np.testing.assert_allclose(np.asarray(a, np.float64), expected, atol=1e-2 * scale)


# ----------------------------------------------------------------------------- lowering


def _lowered_text(platform, xshape, kshape, kw, dtype=jnp.float32):
    """The module of a jitted forward and both gradients with ``impl="pallas"``,
    lowered for ``platform`` on this machine."""
    from sepconv_jax import ops

    def f(x, kernel, g):
        y, vjp = jax.vjp(lambda x, k: ops.depthwise_conv(x, k, impl="pallas", **kw), x, kernel)
        return y, *vjp(g)

    x = jax.ShapeDtypeStruct(xshape, dtype)
    kernel = jax.ShapeDtypeStruct(kshape, dtype)
    y = jax.eval_shape(lambda x, k: ops.depthwise_conv(x, k, impl="xla", **kw), x, kernel)
    with gpu_lowering_here():
        return jax.jit(f).trace(x, kernel, y).lower(lowering_platforms=(platform,)).as_text()


# The custom call each backend's Pallas lowering emits (newer JAX names its Triton
# target in `pallas.triton`).
_TRITON_CALL = getattr(
    __import__("jax.experimental.pallas.triton", fromlist=["triton"]),
    "CUSTOM_CALL_TARGET_NAME",
    "__gpu$xla.gpu.triton",
)
CUSTOM_CALLS = {"cuda": _TRITON_CALL, "rocm": _TRITON_CALL, "tpu": "tpu_custom_call"}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("xshape,kshape,kw", CASES[::2], ids=CASE_IDS[::2])
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_lowers_to_the_backend_kernels(platform, xshape, kshape, kw, dtype):
    """Forward, input and kernel transposes: one Pallas custom call each, and no
    convolution left for XLA."""
    text = _lowered_text(platform, xshape, kshape, kw, dtype)
    assert text.count(f"custom_call @{CUSTOM_CALLS[platform]}") == 3
    assert "convolution" not in text


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_3d_delegates_to_the_xla_kernel(platform):
    text = _lowered_text(platform, (1, 4, 5, 6, 2), (3, 3, 3, 1, 2), dict(strides=2))
    assert CUSTOM_CALLS[platform] not in text
    assert "stablehlo.convolution" in text


def test_triton_compiler_params_reach_the_kernel():
    with pallas_triton.blocks(forward=Blocks(rows=4, cols=8, num_warps=8, num_stages=3)):
        text = _lowered_text("cuda", *CASES[2])
    assert "num_warps = 8" in text and "num_stages = 3" in text


# ----------------------------------------------------------------------------- references


@pytest.mark.parametrize("xshape,kshape,kw", CASES, ids=CASE_IDS)
def test_gradient_references_are_the_adjoints_of_the_forward_reference(xshape, kshape, kw):
    """``<h, dx(g)> = <f(h, k), g>`` and ``<H, dk(x, g)> = <f(x, H), g>`` in float64:
    the gradient references used here and on the device, pinned to the forward one."""
    (x, kernel, g), (_, dx, dk) = _problem(30, xshape, kshape, kw)
    h, hk = rand(40, x.shape).astype(np.float64), rand(41, kernel.shape).astype(np.float64)
    np.testing.assert_allclose(
        np.sum(h * dx), np.sum(ref.depthwise_conv_nd(h, kernel, **kw) * g), rtol=1e-10
    )
    np.testing.assert_allclose(
        np.sum(hk * dk), np.sum(ref.depthwise_conv_nd(x, hk, **kw) * g), rtol=1e-10
    )


# ----------------------------------------------------------------------------- tuning script


def test_tuning_script_quick_run(tmp_path, capsys, monkeypatch):
    """``benchmarks/pallas_tune.py --quick``: every planned job timed, JSON and Markdown
    written, the table printed (interpret mode on this CPU)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "pallas_tune.py"
    spec = importlib.util.spec_from_file_location("pallas_tune", path)
    tune = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pallas_tune", tune)  # dataclasses look their module up
    spec.loader.exec_module(tune)
    assert len(tune.depthwise_shapes()) == 19  # 21 layers, 19 distinct depthwise shapes
    assert tune.main(["--quick", "--no-torch", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "tune.json").read_text())
    records = result["records"]
    assert records and all(r["ms"] > 0 and r["gbs"] > 0 for r in records), records
    assert {(r["section"], r["impl"]) for r in records} == {
        ("layers", "xla"),
        ("layers", "shift"),
        ("layers", "pallas"),
        ("sweep", "xla"),
        ("sweep", "shift"),
        ("sweep", "pallas"),
    }
    assert {r["pass_name"] for r in records} == {"fwd", "fwd+bwd", "dx", "dk"}
    assert {r["variant"] for r in records if r["section"] == "sweep"} >= {"", "default", "2x16"}
    assert result["machine"]["torch"] == {"error": "disabled"}
    text = (tmp_path / "tune.md").read_text()
    assert text.startswith("## Pallas depthwise kernels") and "| 8x8 C8 k3 s2 |" in text
    assert text in capsys.readouterr().out
