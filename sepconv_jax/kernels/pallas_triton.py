"""Pallas kernels for the three depthwise maps, written for the Triton lowering (GPU).

The kernels work on 2-D channels-last arrays (``(N, H, W, C)``; a 1-D problem is
the case ``H == 1``) and address memory the way a hand-written Triton kernel does:
every ref is the whole array in global memory, and each program computes the
element indices of its tile (power-of-two blocks) and loads or stores them with a
mask for the edges and for the zero padding. Nothing is padded or copied in HBM
before or after a kernel. The same kernel bodies run in Pallas interpret mode on
any other backend (``interpret=True``), which is how the CPU test suite checks
their indexing, masks and accumulation.

Memory layout and tiles (``C`` contiguous, then ``W``, ``H``, ``N``):

* **forward** ``y = f(x, k)``: one program computes a tile of ``rows x cols x
  channels`` outputs, where ``rows`` runs over the flattened ``(n, oh)`` rows. Its
  taps are unrolled: each tap loads one shifted tile of ``x`` (a masked gather whose
  innermost dim is ``channels`` consecutive elements, so loads are coalesced) and
  one vector of weights, and multiply-accumulates in the accumulation dtype. The
  tiles of neighbouring taps overlap, so ``x`` comes from HBM about once per output
  tile and the repeats hit L1/L2.
* **input transpose** ``dx = f^T(g, k)``: the transposed convolution as a gather,
  one stride phase at a time. A program's ``dx`` columns are ``iw = r + s * j``
  for one phase ``r`` and consecutive ``j``; for a tap, the ``g`` column that
  reaches them is ``j + const`` when ``r + pad - tap * dilation`` is a multiple of
  the stride and none otherwise, so every load is contiguous and unstrided and no
  lane is wasted on positions a tap does not reach. Rows are split into phases
  the same way (the phase then varies per row and enters the mask).
* **kernel transpose** ``dk = f^T(x, g)``: a reduction over batch and positions.
  Each program loops over a run of position tiles of one channel block, keeps one
  accumulator tile per tap, and writes ``T x channels`` partial sums; the few
  partial sums per channel are added by a second, small reduction (``sum`` over the
  programs, outside the kernel). No dense convolution and no atomics.

Block sizes and launch parameters are :class:`Blocks`, one per map in
:data:`BLOCKS`; :func:`blocks` changes them for a block of code (what
``benchmarks/pallas_tune.py`` sweeps). They are read when a function is lowered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from sepconv_jax.kernels._jax_compat import struct_like

__all__ = [
    "BLOCKS",
    "Blocks",
    "Geometry",
    "blocks",
    "forward",
    "input_transpose",
    "kernel_transpose",
]


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Tile sizes and launch parameters of one Triton kernel (all powers of two).

    Attributes:
      rows: output rows per tile (rows of the flattened ``(batch, height)`` dim).
      cols: output columns per tile.
      channels: channels per tile position (consecutive in memory), capped by the
        channel count rounded up to a power of two.
      num_warps: warps per program (32 threads each).
      num_stages: software pipelining stages (loops only: the kernel transpose).
      programs: the kernel transpose only: about how many programs share the
        reduction (each writes one partial sum per tap and channel).
    """

    rows: int
    cols: int
    channels: int = 32
    num_warps: int = 4
    num_stages: int = 1
    programs: int = 1024

    def __post_init__(self):
        for name in ("rows", "cols", "channels", "num_warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"`{name}` must be a power of two, got {value}")
        if self.num_stages < 1 or self.programs < 1:
            raise ValueError(
                f"`num_stages` and `programs` must be >= 1, got {self.num_stages}, {self.programs}"
            )

    def channel_block(self, channels: int) -> int:
        """Channels per tile: :attr:`channels`, at most ``channels`` rounded up."""
        return min(self.channels, pl.next_power_of_2(channels))

    def tile(self, rows: int, cols: int) -> tuple[int, int]:
        """``(rows, cols)`` of a tile over ``rows x cols`` positions: at most the
        problem's extent (rounded up to a power of two), and when there are fewer
        rows than :attr:`rows` (a 1-D problem with a small batch), wider, so that a
        tile keeps ``rows * cols`` positions."""
        br = min(self.rows, pl.next_power_of_2(rows))
        bw = min(pl.next_power_of_2(cols), max(self.cols, self.rows * self.cols // br))
        return br, bw


# Defaults, from first principles for an H100 (132 SMs, 64K registers and 228 KiB of
# shared memory per SM, ~3.0 TB/s of HBM bandwidth), where the depthwise maps are
# memory-bound (9 or 25 multiply-adds per element moved):
#
# * Channels: 32 per position, consecutive in memory: 128 bytes of float32 or 64 of
#   bfloat16, whole 32-byte sectors, loaded as 16-byte vectors (8-byte for the
#   bfloat16 kernel transpose).
# * Forward and input transpose: a 4 x 8 position tile, 1024 outputs per program of
#   4 warps, 8 accumulators per thread. The tile's input halo (6 x 10 positions for
#   a 3x3 window) is 1.9x its output, read from L1, not from HBM. Each SM keeps
#   several programs resident, so tens of KiB of loads are in flight per SM: the
#   ~2 MB (3 TB/s x ~0.7 us) that saturating HBM takes across 132 SMs.
# * Kernel transpose: a 2 x 8 position tile with one float32 accumulator tile per
#   tap (9 or 25 x 16 x 32 values over 128 threads: 36 or 100 registers); ~1024
#   programs (several per SM, a few waves), each looping over its share of the
#   positions and writing 9 or 25 x 32 partial sums, a few MB at most, which the
#   second reduction reads once.
#
# Compiled offline for sm_90a (benchmarks/triton_offline_check.py: Triton 3.6 and
# ptxas on the MobileNetV2/EfficientNet-B0 layers at batch 64), every x and g load is
# a vector load and the registers per thread are: forward 34-54 (float32) and 64-90
# (bfloat16, the 5x5 window spilling 12 bytes), input transpose 44-90, kernel
# transpose 64-72 (3x3) and 168 (5x5), no spills. On the GPU these are the starting
# points of benchmarks/pallas_tune.py's sweep, not measured optima.
BLOCKS: dict[str, Blocks] = {
    "forward": Blocks(rows=4, cols=8),
    "input_transpose": Blocks(rows=4, cols=8),
    "kernel_transpose": Blocks(rows=2, cols=8, programs=1024),
}


@contextlib.contextmanager
def blocks(**per_map: Blocks) -> Iterator[None]:
    """Within the block, lowering uses the given :class:`Blocks` for these maps.

    Args:
      **per_map: ``forward=``, ``input_transpose=`` and/or ``kernel_transpose=``.

    Raises:
      ValueError: for an unknown map name. TypeError: for a non-:class:`Blocks`.
    """
    for name, value in per_map.items():
        if name not in BLOCKS:
            raise ValueError(f"`{name}` is not a map with blocks; expected one of {tuple(BLOCKS)}")
        if not isinstance(value, Blocks):
            raise TypeError(f"`{name}` must be a Blocks, got {type(value).__name__}")
    saved = dict(BLOCKS)
    BLOCKS.update(per_map)
    try:
        yield
    finally:
        BLOCKS.clear()
        BLOCKS.update(saved)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """A 2-D channels-last depthwise problem: every static fact the kernels need."""

    batch: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    channels: int
    multiplier: int
    window: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    pad_lo: tuple[int, int]

    @property
    def out_channels(self) -> int:
        return self.channels * self.multiplier

    @property
    def taps(self) -> int:
        return self.window[0] * self.window[1]


def _iota(n: int) -> jax.Array:
    return lax.iota(jnp.int32, n)


def _compiler_params(b: Blocks, interpret: bool):
    if interpret:
        return None
    from jax.experimental.pallas import triton as plt

    # jax 0.10+ names it CompilerParams; earlier releases TritonCompilerParams.
    params = next(
        getattr(plt, n) for n in ("CompilerParams", "TritonCompilerParams") if hasattr(plt, n)
    )
    return params(num_warps=b.num_warps, num_stages=b.num_stages)


def _load(ref, offsets, mask):
    """``ref[offsets]`` of a flattened array, zero where ``mask`` is false.

    Loads take flat element offsets (the pointer arithmetic of a Triton kernel); the
    lanes masked off may hold any offset, even outside the array: they are not read.
    """
    from jax.experimental.pallas import triton as plt

    return plt.load(ref.at[offsets], mask=mask, other=0)


def _store(ref, index, value, mask):
    """``ref[index] = value`` where ``mask``, with one index array per dim of ``ref``.

    Stores index every dim separately: the lanes masked off then lie outside the
    array in some dim, never on an element that another lane writes (interpret mode
    runs a masked store as a scatter, whose duplicate indices would race).
    """
    from jax.experimental.pallas import triton as plt

    plt.store(ref.at[index], value, mask=mask)


def _store_tile(ref, total, n, rows, row_ok, cols, col_ok, channels, channel_ok):
    """Stores the ``(rows, cols, channels)`` tile ``total`` of image ``n`` (per row) in
    ``ref (N, H, W, C)``, in ``ref``'s dtype, where all three masks hold."""
    mask = row_ok[:, None, None] & col_ok[None, :, None] & channel_ok[None, None, :]
    index = (n[:, None, None], rows[:, None, None], cols[None, :, None], channels[None, None, :])
    _store(ref, index, total.astype(ref.dtype), mask)


def _output_tiling(b: Blocks, geom: Geometry) -> tuple[int, int, int, int, int]:
    """``(br, bw, bc, tiles, channel_tiles)``: the blocks of output rows (over batch
    and height), columns and channels, the count of (row, column) tiles and of
    channel blocks."""
    oh_n, ow_n = geom.out_hw
    br, bw = b.tile(geom.batch * oh_n, ow_n)
    bc = b.channel_block(geom.out_channels)
    tiles = pl.cdiv(geom.batch * oh_n, br) * pl.cdiv(ow_n, bw)
    return br, bw, bc, tiles, pl.cdiv(geom.out_channels, bc)


def _launch(name: str, kernel_fn, b: Blocks, out_shape, out_dtype, grid: int, a, w, interpret):
    """``kernel_fn`` on a 1-D grid of ``grid`` programs over the flat operands ``a``, ``w``."""
    return pl.pallas_call(
        kernel_fn,
        out_shape=struct_like(out_shape, out_dtype, a),
        grid=(grid,),
        interpret=interpret,
        compiler_params=_compiler_params(b, interpret),
        name=f"depthwise_{name}",
    )(a.reshape(-1), w.reshape(-1))


def _div(a, b: int):
    return lax.div(a, np.int32(b))  # an int32 divisor, also when x64 is enabled


def _rem(a, b: int):
    return lax.rem(a, np.int32(b))


def _split(value, *sizes):
    """``value`` (a scalar program id) as mixed-radix digits, the first fastest."""
    digits = []
    for size in sizes:
        digits.append(_rem(value, size))
        value = _div(value, size)
    return (*digits, value)


def _rows(tile, block: int, extent: int, per_image: int):
    """Rows ``tile * block + [0, block)`` of a flattened ``(batch, per_image)`` dim:
    the batch index, the index within the image, and whether the row exists."""
    rows = tile * block + _iota(block)
    return _div(rows, per_image), _rem(rows, per_image), rows < extent


# ----------------------------------------------------------------------------- forward


def _input_taps(geom: Geometry, n, oh, row_ok, ow, ow_ok, c, j_ok) -> Iterator[tuple]:
    """Per tap, in row-major order: the flat offsets into ``x (N, H, W, C)`` that output
    rows ``(n, oh)``, columns ``ow`` and channels ``j`` (of input channel ``c``) read,
    and the mask of those inside the image."""
    (h, w), (kh, kw), (sh, sw) = geom.in_hw, geom.window, geom.strides
    (dh, dw), (lo_h, lo_w) = geom.dilation, geom.pad_lo
    for u in range(kh):
        ih = oh * sh + (u * dh - lo_h)
        ih_ok = row_ok & (ih >= 0) & (ih < h)
        row_start = (n * h + ih) * (w * geom.channels)
        for v in range(kw):
            iw = ow * sw + (v * dw - lo_w)
            iw_ok = ow_ok & (iw >= 0) & (iw < w)
            mask = ih_ok[:, None, None] & iw_ok[None, :, None] & j_ok[None, None, :]
            offsets = row_start[:, None, None] + (iw * geom.channels)[None, :, None]
            yield offsets + c[None, None, :], mask


def _forward_kernel(x_ref, w_ref, y_ref, *, geom: Geometry, br, bw, bc, acc):
    oh_n, ow_n = geom.out_hw
    cm, m = geom.out_channels, geom.multiplier
    ct, wt, rt = _split(pl.program_id(0), pl.cdiv(cm, bc), pl.cdiv(ow_n, bw))
    n, oh, row_ok = _rows(rt, br, geom.batch * oh_n, oh_n)
    ow = wt * bw + _iota(bw)
    ow_ok = ow < ow_n
    j = ct * bc + _iota(bc)
    j_ok = j < cm
    c = _div(j, m) if m > 1 else j
    total = jnp.zeros((br, bw, bc), acc)
    taps = _input_taps(geom, n, oh, row_ok, ow, ow_ok, c, j_ok)
    for t, (offsets, mask) in enumerate(taps):
        xs = _load(x_ref, offsets, mask)
        ws = _load(w_ref, t * cm + j, j_ok)
        total = total + xs.astype(acc) * ws.astype(acc)[None, None, :]
    _store_tile(y_ref, total, n, oh, row_ok, ow, ow_ok, j, j_ok)


def forward(x, kernel, geom: Geometry, *, acc, out_dtype, interpret: bool) -> jax.Array:
    """``y (N, OH, OW, C*M)`` from ``x (N, H, W, C)`` and ``kernel (kh*kw, C*M)``."""
    b = BLOCKS["forward"]
    br, bw, bc, tiles, n_ct = _output_tiling(b, geom)
    kernel_fn = functools.partial(_forward_kernel, geom=geom, br=br, bw=bw, bc=bc, acc=acc)
    out_shape = (geom.batch, *geom.out_hw, geom.out_channels)
    return _launch(
        "forward", kernel_fn, b, out_shape, out_dtype, tiles * n_ct, x, kernel, interpret
    )


# ----------------------------------------------------------------------------- input transpose


def _phase_offset(phase, lo: int, tap: int, stride: int):
    """For outputs ``i`` of phase ``phase``, the tap reaches ``g`` at ``i + shift`` when
    ``hit``: ``(phase + lo - tap) / stride`` must be whole. Kept non-negative for
    the integer division by adding a multiple of the stride."""
    if stride == 1:
        return phase + (lo - tap), True
    bias = stride * (tap // stride + 1)
    numerator = phase + (lo - tap + bias)
    return _div(numerator, stride) - bias // stride, _rem(numerator, stride) == 0


def _input_transpose_kernel(g_ref, w_ref, dx_ref, *, geom: Geometry, br, bw, bc, acc):
    (h, w), (oh_n, ow_n) = geom.in_hw, geom.out_hw
    (kh, kw), (sh, sw), (dh, dw), (lo_h, lo_w) = (
        geom.window,
        geom.strides,
        geom.dilation,
        geom.pad_lo,
    )
    c_n, cm, m = geom.channels, geom.out_channels, geom.multiplier
    hq, wq = pl.cdiv(h, sh), pl.cdiv(w, sw)  # positions per stride phase
    ct, wt, rw, rt = _split(pl.program_id(0), pl.cdiv(c_n, bc), pl.cdiv(wq, bw), sw)
    # Rows run over (n, phase, i) with input row ih = phase + sh * i.
    n, rest, row_ok = _rows(rt, br, geom.batch * sh * hq, sh * hq)
    rh, i = _div(rest, hq), _rem(rest, hq)
    ih = rh + sh * i
    row_ok = row_ok & (ih < h)
    jw = wt * bw + _iota(bw)
    iw = rw + sw * jw
    col_ok = iw < w
    c = ct * bc + _iota(bc)
    c_ok = c < c_n
    total = jnp.zeros((br, bw, bc), acc)
    for u in range(kh):
        shift_h, hit_h = _phase_offset(rh, lo_h, u * dh, sh)
        oh = i + shift_h
        oh_ok = row_ok & hit_h & (oh >= 0) & (oh < oh_n)
        row_start = (n * oh_n + oh) * (ow_n * cm)
        for v in range(kw):
            shift_w, hit_w = _phase_offset(rw, lo_w, v * dw, sw)
            ow = jw + shift_w
            ow_ok = col_ok & hit_w & (ow >= 0) & (ow < ow_n)
            mask = oh_ok[:, None, None] & ow_ok[None, :, None] & c_ok[None, None, :]
            position = row_start[:, None, None] + (ow * cm)[None, :, None]
            for k in range(m):
                ch = c * m + k if m > 1 else c
                gs = _load(g_ref, position + ch[None, None, :], mask)
                ws = _load(w_ref, (u * kw + v) * cm + ch, c_ok)
                total = total + gs.astype(acc) * ws.astype(acc)[None, None, :]
    _store_tile(dx_ref, total, n, ih, row_ok, iw, col_ok, c, c_ok)


def input_transpose(g, kernel, geom: Geometry, *, acc, out_dtype, interpret: bool) -> jax.Array:
    """``dx (N, H, W, C)`` from ``g (N, OH, OW, C*M)`` and ``kernel (kh*kw, C*M)``."""
    b = BLOCKS["input_transpose"]
    (h, w), (sh, sw) = geom.in_hw, geom.strides
    hq, wq = pl.cdiv(h, sh), pl.cdiv(w, sw)
    c_n = geom.channels
    rows = geom.batch * sh * hq
    br, bw = b.tile(rows, wq)
    bc = b.channel_block(c_n)
    grid = pl.cdiv(rows, br) * sw * pl.cdiv(wq, bw) * pl.cdiv(c_n, bc)
    kernel_fn = functools.partial(_input_transpose_kernel, geom=geom, br=br, bw=bw, bc=bc, acc=acc)
    out_shape = (geom.batch, h, w, c_n)
    return _launch(
        "input_transpose", kernel_fn, b, out_shape, out_dtype, grid, g, kernel, interpret
    )


# ----------------------------------------------------------------------------- kernel transpose


def _kernel_transpose_kernel(
    x_ref, g_ref, part_ref, *, geom: Geometry, br, bw, bc, steps, tiles, acc
):
    oh_n, ow_n = geom.out_hw
    cm, m = geom.out_channels, geom.multiplier
    n_wt = pl.cdiv(ow_n, bw)
    ct, p = _split(pl.program_id(0), pl.cdiv(cm, bc))
    j = ct * bc + _iota(bc)
    j_ok = j < cm
    c = _div(j, m) if m > 1 else j

    def step(s, totals):
        q = p * steps + s
        wt, rt = _split(q, n_wt)
        n, oh, row_ok = _rows(rt, br, geom.batch * oh_n, oh_n)
        row_ok = row_ok & (q < tiles)
        ow = wt * bw + _iota(bw)
        ow_ok = ow < ow_n
        mask = row_ok[:, None, None] & ow_ok[None, :, None] & j_ok[None, None, :]
        offsets = ((n * oh_n + oh) * (ow_n * cm))[:, None, None] + (ow * cm)[None, :, None]
        gs = _load(g_ref, offsets + j[None, None, :], mask).astype(acc)
        taps = _input_taps(geom, n, oh, row_ok, ow, ow_ok, c, j_ok)
        return tuple(
            total + _load(x_ref, offsets, tap_mask).astype(acc) * gs
            for total, (offsets, tap_mask) in zip(totals, taps, strict=True)
        )

    init = tuple(jnp.zeros((br, bw, bc), acc) for _ in range(geom.taps))
    totals = lax.fori_loop(0, steps, step, init)
    for t, total in enumerate(totals):
        _store(part_ref, (p, jnp.int32(t), pl.ds(ct * bc, bc)), total.sum(axis=0).sum(axis=0), j_ok)


def kernel_transpose(x, g, geom: Geometry, *, acc, out_dtype, interpret: bool) -> jax.Array:
    """``dk (kh*kw, C*M)`` from ``x (N, H, W, C)`` and ``g (N, OH, OW, C*M)``."""
    b = BLOCKS["kernel_transpose"]
    br, bw, bc, tiles, n_ct = _output_tiling(b, geom)
    steps = pl.cdiv(tiles, max(1, b.programs // n_ct))
    parts = pl.cdiv(tiles, steps)
    kernel_fn = functools.partial(
        _kernel_transpose_kernel,
        geom=geom,
        br=br,
        bw=bw,
        bc=bc,
        steps=steps,
        tiles=tiles,
        acc=acc,
    )
    out_shape = (parts, geom.taps, geom.out_channels)
    partial_sums = _launch(
        "kernel_transpose", kernel_fn, b, out_shape, acc, parts * n_ct, x, g, interpret
    )
    return partial_sums.sum(axis=0).astype(out_dtype)


def supports(*arrays: Any) -> bool:
    """Whether element indices of every array fit the kernels' int32 arithmetic."""
    return all(math.prod(a.shape) < 2**31 for a in arrays)
