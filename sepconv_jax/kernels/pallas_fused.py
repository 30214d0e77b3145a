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
from collections.abc import Callable
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
    "fused_inverted_residual",
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


@dataclasses.dataclass(frozen=True)
class _Plan:
    """The static layout of one fused call: sizes, tiles and which bounds to check."""

    spec: ConvSpec
    taps: tuple[tuple[int, ...], ...]
    positions: int  # output positions over the batch and space
    s_in: int
    s_out: int
    mid: int  # intermediate channels (C * M, or the expanded width)
    c_out: int
    bp: int
    bk: int
    bn: int
    acc_dtype: np.dtype
    out_dtype: np.dtype
    lows: tuple[int, ...]
    check_low: tuple[bool, ...]
    check_high: tuple[bool, ...]

    @property
    def channel_tail(self) -> bool:
        return self.mid % self.bk != 0

    @property
    def out_tail(self) -> bool:
        return self.c_out % self.bn != 0


def _plan(
    spec: ConvSpec, n_batch: int, mid: int, c_out: int, blocks: Blocks, dtypes, out_dtype
) -> _Plan:
    in_sp, out_sp = spec.in_spatial, spec.out_spatial
    lows = tuple(lo for lo, _ in spec.padding)
    # A tap can leave the input only in a dim with padding (below) or where the
    # window reaches past the end (above); elsewhere its bounds checks are dropped.
    check_high = tuple(
        (o - 1) * s + (k - 1) * d - lo >= size
        for o, s, k, d, lo, size in zip(
            out_sp, spec.strides, spec.window, spec.dilation, lows, in_sp, strict=True
        )
    )
    return _Plan(
        spec=spec,
        taps=tuple(itertools.product(*(range(k) for k in spec.window))),
        positions=n_batch * math.prod(out_sp),
        s_in=math.prod(in_sp),
        s_out=math.prod(out_sp),
        mid=mid,
        c_out=c_out,
        bp=blocks.positions,
        bk=min(blocks.channels, _pow2_at_least(mid)),
        bn=min(blocks.out, _pow2_at_least(c_out)),
        acc_dtype=_accumulation_dtype(*dtypes),
        out_dtype=np.dtype(out_dtype),
        lows=lows,
        check_low=tuple(lo > 0 for lo in lows),
        check_high=check_high,
    )


@dataclasses.dataclass(frozen=True)
class _Expand:
    """The inverted-residual block's extra steps: ``c_in`` input channels expanded
    by a 1x1 kernel (plus bias, then ``activation``) before the depthwise step, and
    ``depthwise_activation`` after it (with the depthwise bias)."""

    c_in: int
    activation: Callable[[jax.Array], jax.Array]
    depthwise_activation: Callable[[jax.Array], jax.Array]


def _gather(ref, plt, channels_last, rows, flat, chans, mask):
    """Loads ``ref[row, position, channel]`` (or channels-first) for a tile."""
    at = ref.at[rows, flat, chans] if channels_last else ref.at[rows, chans, flat]
    return plt.load(at, mask=mask, other=0)


def _kernel(plan: _Plan, precision: Any, expand: _Expand | None):
    """The kernel body. It stays one function (about 110 lines): Pallas traces it
    once per program, and its tap loop, masks and two matrix products share the
    tile's indices, which splitting would pass around as a dozen arguments."""
    from jax.experimental import pallas as pl

    plt = _triton()
    spec, bp, bk, bn, acc_dtype = plan.spec, plan.bp, plan.bk, plan.bn, plan.acc_dtype
    in_sp, out_sp, mult = spec.in_spatial, spec.out_spatial, spec.depth_multiplier
    channels_last = spec.channels_last
    cb = 0 if expand is None else _pow2_at_least(expand.c_in)
    dims = (((1,), (0,)), ((), ()))

    def dot(a, b):
        return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=acc_dtype)

    def body(*refs):
        if expand is None:
            x_ref, dk_ref, pk_ref, o_ref = refs
        else:
            x_ref, ek_ref, eb_ref, dk_ref, db_ref, pk_ref, o_ref = refs
        i32 = jnp.int32
        p = pl.program_id(0) * bp + lax.iota(i32, bp)
        p_ok = p < plan.positions
        batch, rest = lax.div(p, i32(plan.s_out)), lax.rem(p, i32(plan.s_out))
        coords = []  # output coordinate per spatial dim, row-major
        for size in reversed(out_sp):
            coords.append(lax.rem(rest, i32(size)))
            rest = lax.div(rest, i32(size))
        coords.reverse()
        base = [c * s - lo for c, s, lo in zip(coords, spec.strides, plan.lows, strict=True)]
        cols = pl.program_id(1) * bn + lax.iota(i32, bn)
        col_ok = cols < plan.c_out

        def step(j, acc):
            chan = j * bk + lax.iota(i32, bk)
            chan_ok = chan < plan.mid
            chan_b = jnp.broadcast_to(chan[None, :], (bp, bk))
            src_b = lax.div(chan_b, i32(mult)) if mult > 1 else chan_b
            if expand is not None:
                cin = lax.iota(i32, cb)
                cin_ok = cin < expand.c_in
                ek_mask = jnp.broadcast_to(cin_ok[:, None] & chan_ok[None, :], (cb, bk))
                ek_at = ek_ref.at[
                    jnp.broadcast_to(cin[:, None], (cb, bk)),
                    jnp.broadcast_to(chan[None, :], (cb, bk)),
                ]
                ek = plt.load(ek_at, mask=ek_mask, other=0).astype(acc_dtype)
                eb = plt.load(eb_ref.at[chan], mask=chan_ok, other=0).astype(acc_dtype)
            mid = jnp.zeros((bp, bk), acc_dtype)
            for t, offsets in enumerate(plan.taps):
                ok = p_ok
                flat = jnp.zeros((bp,), i32)
                for dim, (b, o) in enumerate(zip(base, offsets, strict=True)):
                    pos = b + o * spec.dilation[dim]
                    if plan.check_low[dim]:
                        ok = ok & (pos >= 0)
                    if plan.check_high[dim]:
                        ok = ok & (pos < in_sp[dim])
                    flat = flat * in_sp[dim] + pos
                # Out-of-range lanes are masked; their indices are made valid too, so
                # that interpret mode (which gathers them before masking) stays in range.
                flat, row = jnp.where(ok, flat, 0), jnp.where(ok, batch, 0)
                if expand is None:
                    mask = ok[:, None] & chan_ok[None, :] if plan.channel_tail else ok[:, None]
                    mask = jnp.broadcast_to(mask, (bp, bk))
                    xs = _gather(
                        x_ref,
                        plt,
                        channels_last,
                        jnp.broadcast_to(row[:, None], (bp, bk)),
                        jnp.broadcast_to(flat[:, None], (bp, bk)),
                        src_b,
                        mask,
                    )
                    xs = xs.astype(acc_dtype)
                else:  # expand the tap's input rows on chip; padding is zero after it
                    mask = jnp.broadcast_to(ok[:, None] & cin_ok[None, :], (bp, cb))
                    xin = _gather(
                        x_ref,
                        plt,
                        channels_last,
                        jnp.broadcast_to(row[:, None], (bp, cb)),
                        jnp.broadcast_to(flat[:, None], (bp, cb)),
                        jnp.broadcast_to(cin[None, :], (bp, cb)),
                        mask,
                    )
                    xs = expand.activation(dot(xin.astype(acc_dtype), ek) + eb[None, :])
                    xs = jnp.where(ok[:, None], xs, jnp.zeros_like(xs))
                w = (
                    plt.load(dk_ref.at[t, chan], mask=chan_ok, other=0)
                    if plan.channel_tail
                    else (plt.load(dk_ref.at[t, chan]))
                )
                mid = mid + xs * w.astype(acc_dtype)[None, :]
            if expand is not None:
                db = plt.load(db_ref.at[chan], mask=chan_ok, other=0).astype(acc_dtype)
                mid = expand.depthwise_activation(mid + db[None, :])
            rows_b = jnp.broadcast_to(chan[:, None], (bk, bn))
            cols_b = jnp.broadcast_to(cols[None, :], (bk, bn))
            pk_mask = None
            if plan.channel_tail or plan.out_tail:
                pk_mask = jnp.broadcast_to(chan_ok[:, None] & col_ok[None, :], (bk, bn))
            pk = plt.load(pk_ref.at[rows_b, cols_b], mask=pk_mask, other=0)
            return acc + dot(mid, pk.astype(acc_dtype))

        steps = pl.cdiv(plan.mid, bk)
        acc = lax.fori_loop(0, steps, step, jnp.zeros((bp, bn), acc_dtype))
        out_mask = jnp.broadcast_to(p_ok[:, None] & col_ok[None, :], (bp, bn))
        # Masked lanes point past the end of the batch or the channels: dropped.
        batch_b = jnp.broadcast_to(batch[:, None], (bp, bn))
        pos_b = jnp.broadcast_to(lax.rem(p, i32(plan.s_out))[:, None], (bp, bn))
        cols_b = jnp.broadcast_to(cols[None, :], (bp, bn))
        at = o_ref.at[batch_b, pos_b, cols_b] if channels_last else o_ref.at[batch_b, cols_b, pos_b]
        plt.store(at, acc.astype(plan.out_dtype), mask=out_mask)

    return body


def _call(plan: _Plan, body, x: jax.Array, operands, *, platform, blocks: Blocks, name: str):
    """Launches ``body`` over the output tiles on ``x`` (flattened to 3-D) and the
    other ``operands``; returns the output in ``x``'s layout."""
    from jax.experimental import pallas as pl

    spec, n_batch = plan.spec, x.shape[0]
    c_in = x.shape[spec.channel_axis]
    if spec.channels_last:
        x3, out_shape = x.reshape(n_batch, plan.s_in, c_in), (n_batch, plan.s_out, plan.c_out)
    else:
        x3, out_shape = x.reshape(n_batch, c_in, plan.s_in), (n_batch, plan.c_out, plan.s_out)
    interpret = platform == "cpu"
    params = {}
    if not interpret:
        params["compiler_params"] = _triton().CompilerParams(
            num_warps=blocks.num_warps, num_stages=blocks.num_stages
        )
    call = pl.pallas_call(
        body,
        out_shape=struct_like(out_shape, plan.out_dtype, x3),
        grid=(pl.cdiv(plan.positions, plan.bp), pl.cdiv(plan.c_out, plan.bn)),
        interpret=interpret,
        name=name,
        **params,
    )
    y = call(x3, *operands)
    return y.reshape(spec.flat_shape(spec.out_spatial, plan.c_out))


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
    blocks = DEFAULT_BLOCKS if blocks is None else blocks
    dtypes = (x.dtype, pointwise_kernel.dtype, depthwise_kernel.dtype, preferred_element_type)
    plan = _plan(
        spec, x.shape[0], spec.out_channels, pointwise_kernel.shape[1], blocks, dtypes, out_dtype
    )
    dk2 = depthwise_kernel.reshape(len(plan.taps), spec.out_channels)
    body = _kernel(plan, precision, None)
    return _call(
        plan,
        body,
        x,
        (dk2, pointwise_kernel),
        platform=platform,
        blocks=blocks,
        name="sepconv_fused_separable",
    )


def fused_inverted_residual(
    x: jax.Array,
    expand_kernel: jax.Array,
    expand_bias: jax.Array,
    depthwise_kernel: jax.Array,
    depthwise_bias: jax.Array,
    project_kernel: jax.Array,
    spec: ConvSpec,
    *,
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu6,
    platform: str | None,
    precision: Any = None,
    out_dtype: Any = None,
    blocks: Blocks | None = None,
) -> jax.Array:
    """An inverted-residual block's body (MobileNetV2, inference form) in one kernel:
    ``project(act(depthwise(act(x @ expand_kernel + expand_bias)) + depthwise_bias))``.

    The expanded activation never leaves the chip: for each tap of the window the
    kernel gathers the tap's input rows (``C_in`` channels), expands them with one
    matrix multiply, applies the bias and ``activation``, zeroes the taps that fall
    in the padding (the block pads the *expanded* activation), and accumulates the
    depthwise step; the depthwise bias and ``activation`` follow, then the 1x1
    projection. The expansion is recomputed once per tap (``k*k`` times the
    expansion's multiply-adds) in exchange for never writing or reading the
    ``t * C_in`` wide intermediate. Batch norm folds into the kernels and biases
    (inference); the projection's bias and the residual add are left to the caller.

    Args:
      x: ``spec.flat_shape(spec.in_spatial, C_in)``.
      expand_kernel: ``(C_in, spec.in_channels)``, the 1x1 expansion.
      expand_bias: ``(spec.in_channels,)``.
      depthwise_kernel: ``(*spec.window, 1, spec.in_channels)`` (multiplier 1).
      depthwise_bias: ``(spec.in_channels,)``.
      project_kernel: ``(spec.in_channels, C_out)``.
      spec: the depthwise step on the expanded activation (zero padding, multiplier 1).
      activation: applied after the expansion and after the depthwise step.
      platform: ``"cpu"`` (interpret mode) or ``"cuda"``/``"rocm"`` (Triton).
      precision: the matrix multiplies' ``precision``.
      out_dtype: the result's dtype (default ``x``'s).
      blocks: tile sizes, :data:`DEFAULT_BLOCKS` when ``None``.

    Returns:
      ``spec.flat_shape(spec.out_spatial, C_out)``.

    Raises:
      ValueError: for kernels that do not fit ``spec``, or a multiplier above 1.
    """
    mid, c_in = spec.in_channels, x.shape[spec.channel_axis]
    _check_block_shapes(
        x, expand_kernel, expand_bias, depthwise_kernel, depthwise_bias, project_kernel, spec
    )
    blocks = DEFAULT_BLOCKS if blocks is None else blocks
    out_dtype = x.dtype if out_dtype is None else out_dtype
    dtypes = (x.dtype, expand_kernel.dtype, depthwise_kernel.dtype, project_kernel.dtype)
    plan = _plan(spec, x.shape[0], mid, project_kernel.shape[1], blocks, dtypes, out_dtype)
    body = _kernel(plan, precision, _Expand(c_in, activation, activation))
    operands = (
        expand_kernel,
        expand_bias,
        depthwise_kernel.reshape(len(plan.taps), mid),
        depthwise_bias,
        project_kernel,
    )
    return _call(
        plan,
        body,
        x,
        operands,
        platform=platform,
        blocks=blocks,
        name="sepconv_fused_inverted_residual",
    )


def _check_block_shapes(x, ek, eb, dk, db, pk, spec: ConvSpec) -> None:
    mid, c_in = spec.in_channels, x.shape[spec.channel_axis]
    expected = {
        "expand_kernel": (ek.shape, (c_in, mid)),
        "expand_bias": (eb.shape, (mid,)),
        "depthwise_kernel": (dk.shape, (*spec.window, 1, mid)),
        "depthwise_bias": (db.shape, (mid,)),
        "project_kernel": (pk.shape[:1], (mid,)),
    }
    if spec.depth_multiplier != 1:
        raise ValueError(
            f"`spec` must have a depth multiplier of 1 in an inverted-residual block, "
            f"got {spec.depth_multiplier}"
        )
    for name, (shape, want) in expected.items():
        if tuple(shape) != want:
            raise ValueError(
                f"`{name}` has shape {tuple(shape)} but the block needs {want} "
                f"({c_in} input channels expanded to {mid})"
            )
