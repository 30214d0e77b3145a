"""Pallas kernels for the depthwise maps, written for the Mosaic lowering (TPU).

Simple by design (no TPU has measured them): XLA first lays the input out so that
every tap of the window is a plain slice of a block, and the kernels only
multiply-accumulate.

* **Layout.** ``x (N, H, W, C)`` is zero-padded, split into its stride phases and
  transposed to ``(phases, H', W', N, C)``: batch and channels are the last two dims,
  tiled ``(sublanes, 128)`` (8 sublanes for 32-bit dtypes, 16 for 16-bit ones), so a
  block's last two dims are one vreg tile; the spatial dims are major dims, where a
  tap's shift is an address offset, never a lane or sublane shuffle. A tap at
  window offset ``o`` reads rows ``i + e`` of phase ``r``, with
  ``(e, r) = divmod(o * dilation, stride)``: a unit-stride slice.
* **Rows.** The grid runs over row blocks of ``BH`` output rows; a block's taps reach
  at most ``BH`` rows further, so each program reads its own row block of the input
  and the next one (two block specs on the same array), which keeps every block
  aligned to the grid (no overlapping windows). Columns are not split.
* **forward**: ``y = f(x, k)`` with a depth multiplier ``M > 1`` handled by
  repeating each input channel ``M`` times in the layout step.
* **input transpose**: the forward kernel on ``g`` dilated by the strides (zeros
  between its positions, inserted by the same padding step), with the window
  flipped, over the ``C * M`` channels; the ``M`` results per input channel are
  summed afterwards.
* **kernel transpose**: per tap, ``sum x_tap * g`` over the positions and the batch,
  accumulated in a ``(taps, sublanes, 128)`` output block that stays in VMEM across
  the reduction's grid steps; the sublanes are summed at the end.

Accumulation is in ``acc`` (float32 for 16-bit inputs).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from sepconv_jax.kernels._jax_compat import struct_like
from sepconv_jax.kernels.pallas_triton import Geometry

__all__ = ["BLOCK_BYTES", "LANES", "conv", "forward", "input_transpose", "kernel_transpose"]

#: Channels per block: the 128 lanes of a vreg.
LANES = 128
#: Target size of one input block in VMEM. Each program holds two input blocks
#: (its rows and the next), double-buffered, plus its output block: about 5x this,
#: inside the 16 MiB of scoped VMEM the smallest TPU generations allow by default.
BLOCK_BYTES = 2 * 2**20
#: Row blocks are at most this many output rows.
MAX_BLOCK_ROWS = 8


def _sublanes(dtype) -> int:
    return 8 * max(1, 4 // np.dtype(dtype).itemsize)


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def _compiler_params(semantics: tuple[str, ...], interpret: bool):
    if interpret:
        return None
    from jax.experimental.pallas import tpu as pltpu

    # jax 0.10+ names it CompilerParams; earlier releases TPUCompilerParams.
    params = next(
        getattr(pltpu, n) for n in ("CompilerParams", "TPUCompilerParams") if hasattr(pltpu, n)
    )
    return params(dimension_semantics=semantics)


class _Layout:
    """The padded, phase-split ``(phases, H', W', N', C')`` layout of one convolution.

    Args:
      in_hw: spatial shape of the input, before ``lhs_dilation``.
      out_hw: spatial shape of the result.
      batch, channels: of the input.
      window, strides, dilation: of the convolution.
      pad_lo: zero padding before each spatial dim (negative: cropping).
      lhs_dilation: zeros inserted between input positions (``s - 1``), as in a
        transposed convolution.
      dtype: of the input.
    """

    def __init__(
        self, in_hw, out_hw, batch, channels, window, strides, dilation, pad_lo, lhs_dilation, dtype
    ):
        self.in_hw, self.out_hw = tuple(in_hw), tuple(out_hw)
        self.window, self.strides, self.dilation = tuple(window), tuple(strides), tuple(dilation)
        self.pad_lo, self.lhs_dilation = tuple(pad_lo), tuple(lhs_dilation)
        self.batch, self.channels = batch, channels
        self.sub = _sublanes(dtype)
        self.batch_p = _round_up(batch, self.sub)
        self.channels_p = _round_up(channels, LANES)
        (kh, kw), (sh, sw), (dh, dw) = self.window, self.strides, self.dilation
        self.phases = sh * sw
        self.reach_h = (kh - 1) * dh // sh  # rows past a block's own that its taps read
        reach_w = (kw - 1) * dw // sw
        self.cols = out_hw[1] + reach_w
        itemsize = np.dtype(dtype).itemsize
        row_bytes = self.phases * self.cols * self.sub * LANES * itemsize
        rows = max(1, min(MAX_BLOCK_ROWS, BLOCK_BYTES // row_bytes, out_hw[0]))
        self.block_rows = max(rows, self.reach_h)
        self.row_blocks = -(-out_hw[0] // self.block_rows)
        self.rows = (self.row_blocks + 1) * self.block_rows

    def prepare(self, x: jax.Array) -> jax.Array:
        """``(N, H, W, C)`` -> ``(phases, rows, cols, N', C')``, zero-filled."""
        (sh, sw) = self.strides
        config = [(0, self.batch_p - self.batch, 0)]
        for size, lo, lhs, extent in zip(
            self.in_hw,
            self.pad_lo,
            self.lhs_dilation,
            (self.rows * sh, self.cols * sw),
            strict=True,
        ):
            dilated = (size - 1) * lhs + 1
            config.append((lo, extent - lo - dilated, lhs - 1))
        config.append((0, self.channels_p - self.channels, 0))
        x = lax.pad(x, jnp.zeros((), x.dtype), config)
        x = x.reshape(self.batch_p, self.rows, sh, self.cols, sw, self.channels_p)
        x = x.transpose(2, 4, 1, 3, 0, 5)
        return x.reshape(self.phases, self.rows, self.cols, self.batch_p, self.channels_p)

    def taps(self):
        """Per tap: (phase, row offset, column offset) in the prepared layout."""
        (kh, kw), (sh, sw), (dh, dw) = self.window, self.strides, self.dilation
        out = []
        for u in range(kh):
            eh, rh = divmod(u * dh, sh)
            for v in range(kw):
                ew, rw = divmod(v * dw, sw)
                out.append((rh * sw + rw, eh, ew))
        return out

    def x_specs(self, order):
        """The two block specs (a row block and the next) of the prepared input.

        ``order`` maps the grid indices to ``(batch block, channel block, row block)``."""
        shape = (self.phases, self.block_rows, self.cols, self.sub, LANES)

        def spec(ahead):
            def index(*grid):
                nb, cb, r = order(*grid)
                return (0, r + ahead, 0, nb, cb)

            return pl.BlockSpec(shape, index)

        return [spec(0), spec(1)]

    def window_rows(self, cur_ref, next_ref):
        """The block's rows and the next block's, as one value."""
        if self.reach_h == 0:
            return cur_ref[...]
        return jnp.concatenate([cur_ref[...], next_ref[...]], axis=1)

    def tap_slices(self, rows):
        """Per tap, the ``(BH, OW, sublanes, 128)`` slice of :meth:`window_rows`."""
        bh, ow = self.block_rows, self.out_hw[1]
        for phase, eh, ew in self.taps():
            yield rows[phase, eh : eh + bh, ew : ew + ow]


# ----------------------------------------------------------------------------- forward


def _conv_kernel(cur_ref, next_ref, w_ref, y_ref, *, layout: _Layout, acc):
    rows = layout.window_rows(cur_ref, next_ref)
    total = jnp.zeros(y_ref.shape, acc)
    for t, xs in enumerate(layout.tap_slices(rows)):
        total = total + xs.astype(acc) * w_ref[t].astype(acc)[None, None]
    y_ref[...] = total.astype(y_ref.dtype)


def conv(x, w, layout: _Layout, *, acc, out_dtype, interpret: bool = False) -> jax.Array:
    """Per-channel correlation of ``x (N, H, W, K)`` with ``w (taps, K)`` in ``layout``:
    ``(N, OH, OW, K)``."""
    xp = layout.prepare(x)
    k, kp = layout.channels, layout.channels_p
    w = jnp.pad(w, ((0, 0), (0, kp - k)))[:, None, :]
    oh, ow = layout.out_hw
    sub, bh = layout.sub, layout.block_rows
    grid = (layout.batch_p // sub, kp // LANES, layout.row_blocks)
    order = lambda nb, cb, r: (nb, cb, r)
    y = pl.pallas_call(
        functools.partial(_conv_kernel, layout=layout, acc=acc),
        out_shape=struct_like((layout.row_blocks * bh, ow, layout.batch_p, kp), out_dtype, xp),
        grid=grid,
        in_specs=[
            *layout.x_specs(order),
            pl.BlockSpec((w.shape[0], 1, LANES), lambda nb, cb, r: (0, 0, cb)),
        ],
        out_specs=pl.BlockSpec((bh, ow, sub, LANES), lambda nb, cb, r: (r, 0, nb, cb)),
        interpret=interpret,
        compiler_params=_compiler_params(("parallel", "parallel", "parallel"), interpret),
        name="depthwise_conv_tpu",
    )(xp, xp, w)
    return y[:oh].transpose(2, 0, 1, 3)[: layout.batch, :, :, :k]


def _forward_layout(geom: Geometry, dtype) -> _Layout:
    return _Layout(
        geom.in_hw,
        geom.out_hw,
        geom.batch,
        geom.out_channels,
        geom.window,
        geom.strides,
        geom.dilation,
        geom.pad_lo,
        (1, 1),
        dtype,
    )


def _repeat_channels(x: jax.Array, m: int) -> jax.Array:
    return x if m == 1 else jnp.repeat(x, m, axis=-1)


def forward(x, kernel, geom: Geometry, *, acc, out_dtype, interpret: bool = False):
    """``y (N, OH, OW, C*M)`` from ``x (N, H, W, C)`` and ``kernel (taps, C*M)``."""
    layout = _forward_layout(geom, x.dtype)
    x = _repeat_channels(x, geom.multiplier)
    return conv(x, kernel, layout, acc=acc, out_dtype=out_dtype, interpret=interpret)


def input_transpose(g, kernel, geom: Geometry, *, acc, out_dtype, interpret: bool = False):
    """``dx (N, H, W, C)`` from ``g (N, OH, OW, C*M)`` and ``kernel (taps, C*M)``."""
    (kh, kw), (dh, dw) = geom.window, geom.dilation
    layout = _Layout(
        geom.out_hw,
        geom.in_hw,
        geom.batch,
        geom.out_channels,
        geom.window,
        (1, 1),
        geom.dilation,
        ((kh - 1) * dh - geom.pad_lo[0], (kw - 1) * dw - geom.pad_lo[1]),
        geom.strides,
        g.dtype,
    )
    flipped = kernel.reshape(kh, kw, -1)[::-1, ::-1].reshape(kh * kw, -1)
    dx = conv(g, flipped, layout, acc=acc, out_dtype=acc, interpret=interpret)
    dx = dx.reshape(*dx.shape[:-1], geom.channels, geom.multiplier).sum(axis=-1)
    return dx.astype(out_dtype)


# ----------------------------------------------------------------------------- kernel transpose


def _kernel_transpose_kernel(cur_ref, next_ref, g_ref, out_ref, *, layout: _Layout, acc):
    @pl.when((pl.program_id(1) == 0) & (pl.program_id(2) == 0))
    def _():
        out_ref[...] = jnp.zeros(out_ref.shape, out_ref.dtype)

    rows = layout.window_rows(cur_ref, next_ref)
    gs = g_ref[...].astype(acc)
    for t, xs in enumerate(layout.tap_slices(rows)):
        out_ref[t] += (xs.astype(acc) * gs).sum(axis=(0, 1)).astype(out_ref.dtype)


def kernel_transpose(x, g, geom: Geometry, *, acc, out_dtype, interpret: bool = False):
    """``dk (taps, C*M)`` from ``x (N, H, W, C)`` and ``g (N, OH, OW, C*M)``."""
    dtype = np.dtype(jnp.result_type(x.dtype, g.dtype))  # one dtype for both operands
    layout = _forward_layout(geom, dtype)
    xp = layout.prepare(_repeat_channels(x, geom.multiplier).astype(dtype))
    oh, ow = layout.out_hw
    sub, bh, kp = layout.sub, layout.block_rows, layout.channels_p
    gp = g.astype(dtype).transpose(1, 2, 0, 3)  # (OH, OW, N, CM)
    gp = jnp.pad(
        gp,
        (
            (0, layout.row_blocks * bh - oh),
            (0, 0),
            (0, layout.batch_p - geom.batch),
            (0, kp - geom.out_channels),
        ),
    )
    order = lambda cb, nb, r: (nb, cb, r)
    sums = pl.pallas_call(
        functools.partial(_kernel_transpose_kernel, layout=layout, acc=acc),
        out_shape=struct_like((geom.taps, sub, kp), acc, xp),
        grid=(kp // LANES, layout.batch_p // sub, layout.row_blocks),
        in_specs=[
            *layout.x_specs(order),
            pl.BlockSpec((bh, ow, sub, LANES), lambda cb, nb, r: (r, 0, nb, cb)),
        ],
        out_specs=pl.BlockSpec((geom.taps, sub, LANES), lambda cb, nb, r: (0, 0, cb)),
        interpret=interpret,
        compiler_params=_compiler_params(("parallel", "arbitrary", "arbitrary"), interpret),
        name="depthwise_kernel_transpose_tpu",
    )(xp, xp, gp)
    return sums.sum(axis=1)[:, : geom.out_channels].astype(out_dtype)
