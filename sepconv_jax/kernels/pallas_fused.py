"""The fused separable kernel: depthwise then pointwise in one Pallas kernel.

One program instance computes a tile of ``block_positions`` output positions
(flattened over batch and space, so a 7x7 layer fills its tiles as well as a
112x112 one) by ``block_out`` output channels. It walks the ``C * M`` intermediate
channels in steps of ``block_channels``; for each step it

1. accumulates the depthwise convolution of that channel slice over every window
   tap, in float32 (float64 for float64 inputs), gathering the input rows of each
   tap with masks for the padding, the tile's tail and the channel tail;
2. multiplies the ``(block_positions, block_channels)`` intermediate by the
   matching ``(block_channels, block_out)`` slice of the pointwise kernel with one
   matrix multiply (``lax.dot_general``: tensor cores on GPU, every block dim a
   power of two >= 16), accumulating the output tile in float32.

The intermediate lives in registers and is never written to memory; the output
tile is cast to the output dtype and stored once. Zero padding is never
materialized: taps that fall outside the input load zeros through their mask.
Input and output are read and written in place in either layout (channels-last
``(N, *spatial, C)`` or channels-first ``(N, C, *spatial)``), so no transpose or
padded copy is made around the kernel.

Numerics: products and sums of the depthwise step in float32 (exact products for
16-bit inputs); the float32 intermediate enters the matrix multiply as float32,
whose ``precision`` is the caller's (on GPU, ``None``/``DEFAULT`` lets Triton use
TF32 tensor cores, as XLA does for a float32 convolution; ``HIGHEST`` asks for full
float32); the result is rounded to the output dtype once. The unfused pair instead
rounds the intermediate to the inputs' dtype between the steps, so for bfloat16
layers the fused result is the more accurate of the two.

Backends: on GPU the kernel is compiled by Pallas' Triton lowering; on CPU the same
kernel runs in Pallas interpret mode (slow, for tests); on TPU it is not used (see
:func:`supported`). Inside ``shard_map`` on CPU the unfused pair runs instead
(interpret mode cannot carry values that vary over manual axes). ``jax.export``
refuses Triton custom calls unless told otherwise (JAX gives them no compatibility
guarantee): export a fused layer for GPU with ``disabled_checks=
[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sepconv_jax._spec import ConvSpec
from sepconv_jax.kernels._jax_compat import struct_like

__all__ = [
    "DEFAULT_BLOCKS",
    "PLATFORMS",
    "Blocks",
    "fused_separable",
    "supported",
]

#: Platforms the fused kernel lowers for: Triton on GPU, interpret mode on CPU.
PLATFORMS = ("cuda", "rocm", "cpu")


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Tile sizes and launch options of the fused kernel.

    Attributes:
      positions: output positions per program (a power of two >= 16).
      channels: intermediate channels per step of the inner loop (a power of two
        >= 16).
      out: output channels per program at most (a power of two >= 16); layers with
        fewer output channels use the next power of two above their count.
      num_warps: Triton warps per program (GPU only).
      num_stages: Triton software-pipelining stages (GPU only).
    """

    positions: int = 64
    channels: int = 32
    out: int = 128
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for name in ("positions", "channels", "out"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 16 or value & (value - 1):
                raise ValueError(
                    f"`Blocks.{name}` must be a power of two >= 16 (a tensor-core tile dim), "
                    f"got {value!r}"
                )
        for name in ("num_warps", "num_stages"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`Blocks.{name}` must be an int >= 1, got {value!r}")


#: The tiles used unless the caller passes others (``benchmarks/fused_tune.py``
#: measures candidates).
DEFAULT_BLOCKS = Blocks()


def _pow2_at_least(n: int, floor: int = 16) -> int:
    return max(floor, 1 << max(0, (n - 1).bit_length()))


def supported(spec: ConvSpec, dtypes: tuple[Any, ...], platform: str | None) -> bool:
    """Whether the fused kernel can run ``spec`` on ``platform`` for these dtypes.

    Real floating dtypes on GPU (Triton) and CPU (interpret mode). Not on TPU: the
    kernel gathers its input rows with computed indices, which Mosaic does not
    lower; there the unfused pair runs.
    """
    if platform not in PLATFORMS:
        return False
    return all(jnp.issubdtype(np.dtype(d), jnp.floating) for d in dtypes)


def _accumulation_dtype(*dtypes: Any) -> np.dtype:
    wide = any(np.dtype(d) == np.float64 for d in dtypes if d is not None)
    return np.dtype(np.float64 if wide else np.float32)


def _triton():
    from jax.experimental.pallas import triton as plt

    return plt


def fused_separable(
    x: jax.Array,
    depthwise_kernel: jax.Array,
    pointwise_kernel: jax.Array,
    spec: ConvSpec,
    *,
    platform: str | None,
    precision: Any,
    preferred_element_type: Any,
    out_dtype: Any,
    blocks: Blocks | None = None,
) -> jax.Array:
    """``pointwise(depthwise(x, depthwise_kernel), pointwise_kernel)`` in one kernel.

    Args:
      x: ``spec.flat_shape(spec.in_spatial, spec.in_channels)`` (one batch dim).
      depthwise_kernel: ``(*spec.window, 1, spec.out_channels)``.
      pointwise_kernel: ``(spec.out_channels, out_channels)``.
      spec: the depthwise convolution; its ``padding`` is zero padding.
      platform: ``"cpu"`` runs the kernel in interpret mode, ``"cuda"``/``"rocm"``
        compile it with Triton.
      precision: the matrix multiply's ``precision``.
      preferred_element_type: accumulation dtype when wider than float32.
      out_dtype: the result's dtype.
      blocks: tile sizes, :data:`DEFAULT_BLOCKS` when ``None``.

    Returns:
      ``spec.flat_shape(spec.out_spatial, out_channels)`` of ``out_dtype``.
    """
    from jax.experimental import pallas as pl

    plt = _triton()
    blocks = DEFAULT_BLOCKS if blocks is None else blocks
    n_batch = x.shape[0]
    in_sp, out_sp = spec.in_spatial, spec.out_spatial
    s_in, s_out = math.prod(in_sp), math.prod(out_sp)
    c_in, cm = spec.in_channels, spec.out_channels
    mult = spec.depth_multiplier
    c_out = pointwise_kernel.shape[1]
    positions = n_batch * s_out
    taps = list(itertools.product(*(range(k) for k in spec.window)))
    acc_dtype = _accumulation_dtype(
        x.dtype, pointwise_kernel.dtype, depthwise_kernel.dtype, preferred_element_type
    )
    out_dtype = np.dtype(out_dtype)
    channels_last = spec.channels_last

    bp = blocks.positions
    bk = min(blocks.channels, _pow2_at_least(cm))
    bn = min(blocks.out, _pow2_at_least(c_out))
    steps = pl.cdiv(cm, bk)
    channel_tail = cm % bk != 0
    out_tail = c_out % bn != 0
    lows = [lo for lo, _ in spec.padding]
    # A tap can leave the input only in a dim with padding (below) or where the
    # window reaches past the end (above); elsewhere its bounds checks are dropped.
    check_low = [lo > 0 for lo in lows]
    check_high = [
        (o - 1) * s + (k - 1) * d - lo >= size
        for o, s, k, d, lo, size in zip(
            out_sp, spec.strides, spec.window, spec.dilation, lows, in_sp, strict=True
        )
    ]

    def kernel(x_ref, dk_ref, pk_ref, o_ref):
        i32 = jnp.int32
        p = pl.program_id(0) * bp + lax.iota(i32, bp)
        p_ok = p < positions
        batch = lax.div(p, i32(s_out))
        rest = lax.rem(p, i32(s_out))
        coords = []  # output coordinate per spatial dim, row-major
        for size in reversed(out_sp):
            coords.append(lax.rem(rest, i32(size)))
            rest = lax.div(rest, i32(size))
        coords.reverse()
        base = [c * s - lo for c, s, lo in zip(coords, spec.strides, lows, strict=True)]
        cols = pl.program_id(1) * bn + lax.iota(i32, bn)
        col_ok = cols < c_out

        def step(j, acc):
            chan = j * bk + lax.iota(i32, bk)
            chan_ok = chan < cm
            src = lax.div(chan, i32(mult)) if mult > 1 else chan
            src_b = jnp.broadcast_to(src[None, :], (bp, bk))
            mid = jnp.zeros((bp, bk), acc_dtype)
            for t, offsets in enumerate(taps):
                ok = p_ok
                flat = jnp.zeros((bp,), i32)
                for dim, (b, o) in enumerate(zip(base, offsets, strict=True)):
                    pos = b + o * spec.dilation[dim]
                    if check_low[dim]:
                        ok = ok & (pos >= 0)
                    if check_high[dim]:
                        ok = ok & (pos < in_sp[dim])
                    flat = flat * in_sp[dim] + pos
                # Out-of-range lanes are masked; their indices are made valid too, so
                # that interpret mode (which gathers them before masking) stays in range.
                flat = jnp.where(ok, flat, 0)
                row = jnp.where(ok, batch, 0)
                mask = ok[:, None] & chan_ok[None, :] if channel_tail else ok[:, None]
                mask = jnp.broadcast_to(mask, (bp, bk))
                row_b = jnp.broadcast_to(row[:, None], (bp, bk))
                flat_b = jnp.broadcast_to(flat[:, None], (bp, bk))
                if channels_last:
                    ref = x_ref.at[row_b, flat_b, src_b]
                else:
                    ref = x_ref.at[row_b, src_b, flat_b]
                xs = plt.load(ref, mask=mask, other=0)
                if channel_tail:
                    w = plt.load(dk_ref.at[t, chan], mask=chan_ok, other=0)
                else:
                    w = plt.load(dk_ref.at[t, chan])
                mid = mid + xs.astype(acc_dtype) * w.astype(acc_dtype)[None, :]
            rows_b = jnp.broadcast_to(chan[:, None], (bk, bn))
            cols_b = jnp.broadcast_to(cols[None, :], (bk, bn))
            if channel_tail or out_tail:
                pk_mask = jnp.broadcast_to(chan_ok[:, None] & col_ok[None, :], (bk, bn))
                pk = plt.load(pk_ref.at[rows_b, cols_b], mask=pk_mask, other=0)
            else:
                pk = plt.load(pk_ref.at[rows_b, cols_b])
            return acc + lax.dot_general(
                mid,
                pk.astype(acc_dtype),
                (((1,), (0,)), ((), ())),
                precision=precision,
                preferred_element_type=acc_dtype,
            )

        acc = lax.fori_loop(0, steps, step, jnp.zeros((bp, bn), acc_dtype))
        out_mask = jnp.broadcast_to(p_ok[:, None] & col_ok[None, :], (bp, bn))
        # Masked lanes point past the end of the batch or the channels: dropped.
        batch_b = jnp.broadcast_to(batch[:, None], (bp, bn))
        pos_b = jnp.broadcast_to(lax.rem(p, i32(s_out))[:, None], (bp, bn))
        cols_b = jnp.broadcast_to(cols[None, :], (bp, bn))
        if channels_last:
            ref = o_ref.at[batch_b, pos_b, cols_b]
        else:
            ref = o_ref.at[batch_b, cols_b, pos_b]
        plt.store(ref, acc.astype(out_dtype), mask=out_mask)

    if channels_last:
        x3 = x.reshape(n_batch, s_in, c_in)
        out_shape = (n_batch, s_out, c_out)
    else:
        x3 = x.reshape(n_batch, c_in, s_in)
        out_shape = (n_batch, c_out, s_out)
    dk2 = depthwise_kernel.reshape(len(taps), cm)
    interpret = platform == "cpu"
    params = {}
    if not interpret:
        params["compiler_params"] = plt.CompilerParams(
            num_warps=blocks.num_warps, num_stages=blocks.num_stages
        )
    call = pl.pallas_call(
        kernel,
        out_shape=struct_like(out_shape, out_dtype, x3),
        grid=(pl.cdiv(positions, bp), pl.cdiv(c_out, bn)),
        interpret=interpret,
        name="sepconv_fused_separable",
        **params,
    )
    y = call(x3, dk2, pointwise_kernel)
    return y.reshape(spec.flat_shape(out_sp, c_out))
