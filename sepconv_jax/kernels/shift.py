"""Depthwise convolution as shifted multiply-accumulates, with hand-written gradients.

A depthwise convolution with a ``k_1 x ... x k_n`` window is the sum, over the
``T = k_1 * ... * k_n`` window taps, of a strided slice of the zero-padded input
times that tap's per-channel weight::

    y[b, i, c*M + m] = sum_t xpad[b, i * s + o_t * d, c] * kernel[o_t, 0, c*M + m]

where ``o_t`` is the tap's offset in the window, ``s`` the strides and ``d`` the
dilation. XLA fuses the ``T`` slices, products and sums into one loop that reads
``x`` once and writes ``y`` once, which is what a memory-bound depthwise layer
needs. ``lax.conv_general_dilated`` with ``feature_group_count=C`` is much slower on
XLA:CPU, where it does not map to a vectorized depthwise routine.

Strides are handled by splitting the padded input into its ``s^n`` stride phases
(position ``a * s + r`` of a dim becomes ``[a, r]``, a free reshape), so that every
tap reads a unit-stride window of one phase; the loop then has no strided or
bounds-checked reads. Inputs whose padded copy would reach ``MATERIALIZE_BYTES`` are
read in place instead, with zeros filled in per tap (see that constant).

The three bilinear maps of a depthwise layer (the operation of
:mod:`sepconv_jax.kernels.op` and its two transposes) are implemented the same way,
so every order of differentiation, forward or reverse, runs through shifted loops
rather than through ``lax`` convolutions:

* ``forward(x, kernel) -> y``: the convolution above.
* ``input_grad(g, kernel) -> dx``: the transposed convolution. Each tap's
  contribution ``g * kernel[o_t]`` is shifted back to ``i + o_t * d - pad_low`` with
  ``lax.pad`` (negative edge padding crops the zero padding) and the ``T`` shifts are
  summed in one fusion; with strides, per stride phase, and the phases interleaved.
* ``kernel_grad(x, g) -> dkernel``: ``T`` windowed reductions
  ``sum_{b,i} xpad[b, i * s + o_t * d, c] * g[b, i, c*M + m]``, computed by one
  variadic ``lax.reduce`` so that ``x`` and ``g`` are read once for all taps.

With ``<a, b>`` the (non-conjugating) sum of elementwise products,
``<h, input_grad(g, k)> = <forward(h, k), g>`` and
``<H, kernel_grad(x, g)> = <forward(x, H), g>``: each map is the transpose of the
forward map in one argument, as :mod:`sepconv_jax.kernels.op` declares.

Numerics: products and sums are formed in the accumulation dtype, which is
``preferred_element_type`` when given, ``float32`` for 16-bit floating inputs, and
the inputs' dtype otherwise; results are cast to the output dtype at the end.
``precision`` is accepted for API parity with the ``xla`` kernel and has no
effect: no matrix unit is involved, and elementwise products and sums run at the
accumulation dtype's full precision on every backend (what ``Precision.HIGHEST``
asks of a convolution).

Limitations: the loop over taps is unrolled when lowered, so very large windows
compile slowly (``"auto"`` falls back to ``"xla"`` for them).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import operator
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sepconv_jax._spec import ConvSpec

__all__ = ["MATERIALIZE_BYTES", "TILE_BYTES", "forward", "input_transpose", "kernel_transpose"]


#: Inputs whose zero-padded copy is smaller than this are padded once up front (the
#: fastest loop); larger ones are read in place with zero fill per tap, because
#: glibc hands allocations of 32 MiB or more straight back to the OS, so a large
#: temporary costs a page fault per 4 KiB on every call.
MATERIALIZE_BYTES = 32 * 2**20

#: Inputs whose padded copy would reach :data:`MATERIALIZE_BYTES` are split into
#: tiles of whole images, each with a padded copy below this size, and the three maps
#: run on one tile at a time in a loop (:func:`lax.map`). Read in place instead, such
#: an input lets XLA:CPU fuse the elementwise layers before the depthwise one (batch
#: norm, SiLU) into the tap loop and recompute them once per tap: EfficientNet-B0's
#: 80x80 C96 stride-2 layer (batch 32, 160x160 input) then took 2.4 s of a 4.3 s
#: inference call (``benchmarks/results/cpu_profile``). The loop's input is a
#: buffer, so the producer runs once, and each tile's padded copy stays in cache.
#: ``0`` turns tiling off (large inputs are then read in place).
TILE_BYTES = 8 * 2**20

# Also tile inputs that are padded up front when their padded copy exceeds
# TILE_BYTES (an experiment of benchmarks/tile_probe.py; off).
_TILE_PADDED = False

# Unstrided input transposes of windows of more than _FLIP_MIN_TAPS taps run as
# forward loops over g with the flipped kernel (see _flipped); the others place each
# tap's contribution with its own lax.pad. Measured (benchmarks/shift_backward.py,
# results/shift_backward; batch 8, channels-last, 2-core AMD EPYC): the flipped loop
# is 2.0-5.2x faster on ConvNeXt-T's four 7x7 layers and 3.4x on a 5x5 at 28x28 C192,
# but a 3x3 at 56x56 C144 took 4.4 against 1.7 ms in a first probe. False turns it off.
_FLIP_INPUT_TRANSPOSE = True
_FLIP_MIN_TAPS = 9

# Kernel transposes of windows of more than _KERNEL_GRAD_GROUP_MIN_TAPS taps reduce
# whole window rows at a time, as many as fit in _KERNEL_GRAD_GROUP_TAPS taps, instead
# of all taps in one variadic reduce. Off (0): on the layer alone it is 1.4-6.2x
# faster for ConvNeXt-T's 7x7 layers (benchmarks/shift_backward.py), but in the
# training step XLA fuses the forward tap loop and the layer norm's backward into
# each group's reduce, so they are recomputed once per group: ConvNeXt-T's kernel
# transposes alone took 1.0-1.2 s of CPU per training step (batch 8, 224x224), where
# both transposes together had taken 0.78 s with one reduce.
_KERNEL_GRAD_GROUP_TAPS = 0
_KERNEL_GRAD_GROUP_MIN_TAPS = 25


def _phase_extents(in_spatial, strides, padding) -> tuple[int, ...]:
    return tuple(
        -(-(size + lo + hi) // s)
        for size, s, (lo, hi) in zip(in_spatial, strides, padding, strict=True)
    )


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """The static facts the three maps need (hashable: a ``nondiff_argnums`` entry)."""

    channels_last: bool
    batch: int
    in_spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]
    channels: int
    multiplier: int
    window: tuple[int, ...]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    materialize: bool = True

    @classmethod
    def from_spec(cls, spec: ConvSpec, batch: int, itemsize: int = 4) -> _Geometry:
        padded = math.prod(
            e * s
            for e, s in zip(
                _phase_extents(spec.in_spatial, spec.strides, spec.padding),
                spec.strides,
                strict=True,
            )
        )
        nbytes = batch * padded * spec.in_channels * itemsize
        return cls(
            channels_last=spec.channels_last,
            batch=batch,
            in_spatial=spec.in_spatial,
            out_spatial=spec.out_spatial,
            channels=spec.in_channels,
            multiplier=spec.depth_multiplier,
            window=spec.window,
            strides=spec.strides,
            dilation=spec.dilation,
            padding=spec.padding,
            materialize=nbytes < MATERIALIZE_BYTES,
        )

    @property
    def n(self) -> int:
        return len(self.window)

    def padded_bytes(self, batch: int, itemsize: int = 4) -> int:
        padded = math.prod(e * s for e, s in zip(self.phase_extents, self.strides, strict=True))
        return batch * padded * self.channels * itemsize

    def tile(self, itemsize: int) -> int:
        """Images per tile: the batch, or for inputs that are not padded up front (too
        large) the largest divisor of the batch whose padded copy stays below
        :data:`TILE_BYTES` (at least one image); see :data:`TILE_BYTES`."""
        if self.batch == 1 or TILE_BYTES <= 0:
            return self.batch
        if self.materialize and not (
            _TILE_PADDED and self.padded_bytes(self.batch, itemsize) > TILE_BYTES
        ):
            return self.batch
        per_image = self.padded_bytes(1, itemsize)
        if per_image >= MATERIALIZE_BYTES:
            return self.batch
        fits = max(1, TILE_BYTES // per_image)
        return max(d for d in range(1, min(fits, self.batch) + 1) if self.batch % d == 0)

    @property
    def taps(self) -> list[tuple[int, ...]]:
        """Window offsets in row-major order (the order of the kernel's flattened window)."""
        return list(itertools.product(*(range(k) for k in self.window)))

    def spatial_axis(self, i: int) -> int:
        return 1 + i if self.channels_last else 2 + i

    def channel_shape(self, spatial: tuple[int, ...], *channel_dims: int) -> tuple[int, ...]:
        """Shape ``(batch, *spatial, *channel_dims)`` or ``(batch, *channel_dims, *spatial)``."""
        if self.channels_last:
            return (self.batch, *spatial, *channel_dims)
        return (self.batch, *channel_dims, *spatial)

    def weight_shape(self, *channel_dims: int) -> tuple[int, ...]:
        """Shape that broadcasts per-channel weights against :meth:`channel_shape`."""
        ones = (1,) * self.n
        if self.channels_last:
            return (1, *ones, *channel_dims)
        return (1, *channel_dims, *ones)

    @property
    def strided(self) -> bool:
        return any(s > 1 for s in self.strides)

    @property
    def phase_extents(self) -> tuple[int, ...]:
        """``L`` per dim: the padded input, rounded up to whole strides, is ``L * s``."""
        return _phase_extents(self.in_spatial, self.strides, self.padding)

    def prepare(self, x: jax.Array) -> jax.Array:
        """What :meth:`tap_view` reads: ``x`` zero-padded, split into stride phases.

        The padded input, of extent ``L * s`` per dim, is viewed as ``(L, s)``
        (position ``a * s + r`` at ``[a, r]``): then every tap reads a unit-stride
        window of one phase ``r``. With strides the result is materialized
        (``lax.optimization_barrier``); fused into the tap loop instead, the padding
        costs bounds checks per element and tap, several times slower on XLA:CPU.
        """
        if not self.materialize:
            return x
        config = [(0, 0, 0)] * x.ndim
        for i, ((lo, _), size, s, extent) in enumerate(
            zip(self.padding, self.in_spatial, self.strides, self.phase_extents, strict=True)
        ):
            config[self.spatial_axis(i)] = (lo, extent * s - size - lo, 0)
        padded = lax.pad(x, jnp.zeros((), x.dtype), config)
        if not self.strided:
            return padded
        split = []
        for i, size in enumerate(padded.shape):
            if i in self.spatial_axes:
                s = self.strides[self.spatial_axes.index(i)]
                split += [size // s, s]
            else:
                split.append(size)
        return lax.optimization_barrier(padded.reshape(split))

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        return tuple(self.spatial_axis(i) for i in range(self.n))

    def tap_view(self, source: jax.Array, offsets: tuple[int, ...]) -> jax.Array:
        """``xpad[..., i * s + o * d, ...]`` over the output positions ``i`` for one tap.

        ``source`` comes from :meth:`prepare`: with ``(e, r) = divmod(o * d, s)`` the
        tap reads positions ``i + e`` of phase ``r``, a unit-stride slice. Without
        the padded copy (large inputs), the tap slices the positions ``i`` whose input
        index ``i * s + o * d - lo`` lies inside ``x`` and fills in zeros around them.
        """
        if not self.materialize:
            return self._tap_fill(source, offsets)
        start = [0] * source.ndim
        limit = list(source.shape)
        for i, (o, s, d, out) in enumerate(
            zip(offsets, self.strides, self.dilation, self.out_spatial, strict=True)
        ):
            e, r = divmod(o * d, s)
            # In the split layout dim i's (L, s) pair sits at 1 + 2i (+1 channels-first).
            axis = self.spatial_axis(i) + (i if self.strided else 0)
            start[axis], limit[axis] = e, e + out
            if self.strided:
                start[axis + 1], limit[axis + 1] = r, r + 1
        view = lax.slice(source, start, limit)
        if not self.strided:
            return view
        return view.reshape(self.channel_shape(self.out_spatial, view.shape[self.channel_axis]))

    def _tap_axes(self, offsets: tuple[int, ...]) -> Iterator[tuple[int, int, int, int, int]]:
        """Per spatial dim of the tap at ``offsets``: ``(axis, shift, stride, out, size)``,
        ``shift`` the input index output 0 reads there (negative in the low padding)."""
        dims = zip(offsets, self.strides, self.dilation, self.out_spatial, self.in_spatial,
                   self.padding, strict=True)  # fmt: skip
        for i, (o, s, d, out, size, (lo, _)) in enumerate(dims):
            yield self.spatial_axis(i), o * d - lo, s, out, size

    def _tap_fill(self, x: jax.Array, offsets: tuple[int, ...]) -> jax.Array:
        start = [0] * x.ndim
        limit = list(x.shape)
        step = [1] * x.ndim
        fill = [(0, 0, 0)] * x.ndim
        for axis, shift, s, out, size in self._tap_axes(offsets):
            first = min(out, max(0, -(shift // s)))  # first i with i * s + shift >= 0
            last = max(first, min(out, (size - 1 - shift) // s + 1))
            fill[axis] = (first, out - last, 0)
            if last == first:  # this tap reads only padding
                start[axis] = limit[axis] = 0
            else:
                start[axis] = first * s + shift
                limit[axis] = start[axis] + (last - first - 1) * s + 1
            step[axis] = s
        view = lax.slice(x, start, limit, step)
        return lax.pad(view, jnp.zeros((), view.dtype), fill)

    @property
    def channel_axis(self) -> int:
        return -1 if self.channels_last else 1

    def place_tap(self, contribution: jax.Array, offsets: tuple[int, ...]) -> jax.Array:
        """Transpose of :meth:`tap_view`, cropped to ``x``'s extent: one ``lax.pad``."""
        config = [(0, 0, 0)] * contribution.ndim
        for axis, low, s, out, size in self._tap_axes(offsets):
            high = size - low - (out - 1) * s - 1
            config[axis] = (low, high, s - 1)
        return lax.pad(contribution, jnp.zeros((), contribution.dtype), config)


def _accumulation_dtype(dtype: Any, preferred_element_type: Any) -> np.dtype:
    if preferred_element_type is not None:
        return np.dtype(preferred_element_type)
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return np.dtype(np.float32)
    return dtype


def _split_channels(a: jax.Array, geom: _Geometry, spatial: tuple[int, ...]) -> jax.Array:
    """``(..., C*M, ...)`` -> ``(..., C, M, ...)`` (a view when M == 1 is not needed)."""
    return a.reshape(geom.channel_shape(spatial, geom.channels, geom.multiplier))


def _kernel_taps(kernel: jax.Array, geom: _Geometry, acc: np.dtype) -> jax.Array:
    """``(*window, 1, C*M)`` -> ``(T, C, M)`` in the accumulation dtype."""
    return kernel.reshape(-1, geom.channels, geom.multiplier).astype(acc)


# ----------------------------------------------------------------------------- raw maps


def _forward_raw(x, kernel, geom: _Geometry, acc: np.dtype, out: np.dtype) -> jax.Array:
    source = geom.prepare(x.astype(acc))
    weights = _kernel_taps(kernel, geom, acc)
    m = geom.multiplier
    terms = []
    for t, offsets in enumerate(geom.taps):
        xs = geom.tap_view(source, offsets)
        if m == 1:
            terms.append(xs * weights[t, :, 0].reshape(geom.weight_shape(geom.channels)))
        else:
            xs = xs.reshape(geom.channel_shape(geom.out_spatial, geom.channels, 1))
            terms.append(xs * weights[t].reshape(geom.weight_shape(geom.channels, m)))
    total = functools.reduce(operator.add, terms)  # in tap order, left to right
    y = total.reshape(geom.channel_shape(geom.out_spatial, geom.channels * m))
    return y.astype(out)


def _flipped(geom: _Geometry) -> _Geometry | None:
    """The forward geometry whose map is this one's input transpose, or ``None``.

    Without strides and with one output channel per input channel, the transposed
    convolution is a convolution of ``g`` with the spatially flipped kernel, padded
    by ``(k - 1) * d - lo`` before and ``(k - 1) * d - hi`` after: output position
    ``i`` reads ``x`` at ``i + o * d - lo``, so ``dx[j] = sum_o g[j - o * d + lo] *
    k[o]``, and with ``o' = k - 1 - o`` that is a forward tap loop over ``g`` (for
    paddings wider than the window, ``None``).
    """
    if (
        geom.strided
        or geom.multiplier != 1
        or len(geom.taps) <= _FLIP_MIN_TAPS
        or not _FLIP_INPUT_TRANSPOSE
    ):
        return None
    padding = tuple(
        ((k - 1) * d - lo, (k - 1) * d - hi)
        for k, d, (lo, hi) in zip(geom.window, geom.dilation, geom.padding, strict=True)
    )
    if any(lo < 0 or hi < 0 for lo, hi in padding):
        return None
    return dataclasses.replace(
        geom, in_spatial=geom.out_spatial, out_spatial=geom.in_spatial, padding=padding
    )


def _input_grad_raw(g, kernel, geom: _Geometry, acc: np.dtype, out: np.dtype) -> jax.Array:
    flipped = _flipped(geom)
    if flipped is not None:
        return _forward_raw(g, lax.rev(kernel, tuple(range(geom.n))), flipped, acc, out)
    g = g.astype(acc)
    weights = _kernel_taps(kernel, geom, acc)
    m = geom.multiplier
    if m > 1:
        g = _split_channels(g, geom, geom.out_spatial)
        m_axis = -1 if geom.channels_last else 2
    contributions = []
    for t in range(len(geom.taps)):
        if m == 1:
            contributions.append(g * weights[t, :, 0].reshape(geom.weight_shape(geom.channels)))
        else:
            product = g * weights[t].reshape(geom.weight_shape(geom.channels, m))
            contributions.append(product.sum(axis=m_axis))
    if geom.strided:
        return _interleave_phases(contributions, geom, acc).astype(out)
    placed = [
        geom.place_tap(contribution, offsets)
        for contribution, offsets in zip(contributions, geom.taps, strict=True)
    ]
    return functools.reduce(operator.add, placed).astype(out)  # in tap order, left to right


def _interleave_phases(contributions: list[jax.Array], geom: _Geometry, acc: np.dtype):
    """The strided transposed convolution, one stride phase at a time.

    A tap at offset ``o`` sends output ``i`` to padded input position
    ``i * s + o * d = (i + e) * s + r`` with ``(e, r) = divmod(o * d, s)``: phase ``r``
    receives unit-stride shifted copies of its taps' contributions. The ``s^n`` phase
    images are interleaved (stacked next to their dims and reshaped, the inverse of
    :meth:`_Geometry.prepare`) and cropped to ``x``. Placing each tap with an
    interior-padded ``lax.pad`` instead is several times slower on XLA:CPU for 5x5
    windows.
    """
    n = geom.n
    extents = geom.phase_extents
    phases: dict[tuple[int, ...], jax.Array] = {}
    for contribution, offsets in zip(contributions, geom.taps, strict=True):
        config = [(0, 0, 0)] * contribution.ndim
        phase = []
        for i, (o, s, d, out, extent) in enumerate(
            zip(offsets, geom.strides, geom.dilation, geom.out_spatial, extents, strict=True)
        ):
            e, r = divmod(o * d, s)
            config[geom.spatial_axis(i)] = (e, extent - out - e, 0)
            phase.append(r)
        shifted = lax.pad(contribution, jnp.zeros((), acc), config)
        key = tuple(phase)
        phases[key] = shifted if key not in phases else phases[key] + shifted
    zeros = jnp.zeros(next(iter(phases.values())).shape, acc)

    def interleave(prefix: tuple[int, ...]) -> jax.Array:
        # Stack dim i's phases right after its axis, innermost dims first, so the
        # layout becomes (..., L_i, s_i, ...) with the channels still contiguous.
        i = len(prefix)
        if i == n:
            return phases.get(prefix, zeros)
        parts = [interleave((*prefix, r)) for r in range(geom.strides[i])]
        return jnp.stack(parts, axis=geom.spatial_axis(i) + 1)

    padded_extent = tuple(e * s for e, s in zip(extents, geom.strides, strict=True))
    merged = interleave(()).reshape(geom.channel_shape(padded_extent, geom.channels))
    start = [0] * merged.ndim
    limit = list(merged.shape)
    for i, ((lo, _), size) in enumerate(zip(geom.padding, geom.in_spatial, strict=True)):
        start[geom.spatial_axis(i)] = lo
        limit[geom.spatial_axis(i)] = lo + size
    return lax.slice(merged, start, limit)


def _kernel_grad_raw(x, g, geom: _Geometry, acc: np.dtype, out: np.dtype) -> jax.Array:
    # The barrier keeps XLA from merging these tap views with the forward pass's
    # identical ones when both run in one program: shared by two fusions, the T views
    # would each be materialized (T copies of the output's size) instead of fused.
    source = lax.optimization_barrier(geom.prepare(x.astype(acc)))
    g = g.astype(acc)
    m = geom.multiplier
    cm = geom.channels * m
    if m > 1:
        g = _split_channels(g, geom, geom.out_spatial)
    products = []
    for offsets in geom.taps:
        xs = geom.tap_view(source, offsets)
        if m > 1:
            xs = xs.reshape(geom.channel_shape(geom.out_spatial, geom.channels, 1))
        products.append(xs * g)
    # A variadic reduce forms its products in a single pass over x and g. It sums
    # the axis next to the channels first (channels-last: the innermost spatial dim;
    # channels-first: all spatial dims, which are innermost): consecutive outputs then
    # read consecutive memory, which XLA:CPU runs several times faster than reducing
    # the outer dims first. The small remainder is summed afterwards.
    n = geom.n
    first = (n,) if geom.channels_last else tuple(range(products[0].ndim - n, products[0].ndim))
    zero = jnp.zeros((), acc)
    group = len(products)
    if group > _KERNEL_GRAD_GROUP_MIN_TAPS and _KERNEL_GRAD_GROUP_TAPS:
        row = geom.window[-1]
        group = row * max(1, _KERNEL_GRAD_GROUP_TAPS // row)
    partials = []
    for start in range(0, len(products), group):
        chunk = tuple(products[start : start + group])
        partials += lax.reduce(
            chunk,
            (zero,) * len(chunk),
            lambda a, b: tuple(ai + bi for ai, bi in zip(a, b, strict=True)),
            first,
        )
    rest = tuple(range(n)) if geom.channels_last else (0,)
    sums = jnp.stack([p.sum(axis=rest).reshape(cm) for p in partials])
    return sums.reshape(*geom.window, 1, cm).astype(out)


# ----------------------------------------------------------------------------- tiling


def _tiled(raw, a, b, geom: _Geometry, acc: np.dtype, out: np.dtype, *, reduce: bool):
    """``raw(a, b, geom, ...)`` one tile of whole images of ``a`` at a time (see
    :data:`TILE_BYTES`); ``reduce``: the results of the tiles are summed (the kernel
    transpose), else they are the tiles of the result. ``b`` is per image like ``a``
    when ``reduce``, else it is the kernel, shared by all tiles."""
    tile = geom.tile(acc.itemsize)
    if tile == geom.batch:
        return raw(a, b, geom, acc, out)
    count = geom.batch // tile
    sub = dataclasses.replace(geom, batch=tile, materialize=True)

    def split(v):
        return v.reshape(count, tile, *v.shape[1:])

    if reduce:
        parts = lax.map(lambda ab: raw(ab[0], ab[1], sub, acc, acc), (split(a), split(b)))
        return parts.sum(axis=0).astype(out)
    parts = lax.map(lambda at: raw(at, b, sub, acc, out), split(a))
    return parts.reshape(geom.batch, *parts.shape[2:])


# ----------------------------------------------------------------------------- the maps


def _numerics(a, b, preferred_element_type, out_dtype) -> np.dtype:
    """The accumulation dtype: ``preferred_element_type``, else the widest of the
    operands and the result, with 16-bit floats widened to ``float32``."""
    widest = jnp.result_type(a.dtype, b.dtype, out_dtype)
    return _accumulation_dtype(widest, preferred_element_type)


def _run(raw, a, b, spec: ConvSpec, preferred_element_type, out_dtype, *, reduce: bool):
    """The map ``raw`` of ``a`` and ``b``, tiled, in the accumulation dtype of :func:`_numerics`."""
    acc = _numerics(a, b, preferred_element_type, out_dtype)
    geom = _Geometry.from_spec(spec, spec.batch_shape[0], acc.itemsize)
    return _tiled(raw, a, b, geom, acc, np.dtype(out_dtype), reduce=reduce)


def forward(x, kernel, spec: ConvSpec, *, platform, precision, preferred_element_type, out_dtype):
    """``y = f(x, kernel)`` by shifted multiply-accumulates.

    The signature shared by every kernel's maps (see :mod:`sepconv_jax.kernels.op`):
    ``x`` is ``spec.flat_shape(spec.in_spatial, spec.in_channels)``, ``kernel`` is
    ``(*window, 1, C * M)``, ``spec.padding`` is zero padding, and ``precision`` is
    accepted and ignored (see the module docstring).

    Example:
      >>> import jax.numpy as jnp
      >>> from sepconv_jax import depthwise_conv
      >>> y = depthwise_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 2)), impl="shift")
      >>> y[0, :, :, 0].tolist()  # 4, 6 or 9 taps inside the image
      [[4.0, 6.0, 6.0, 4.0], [6.0, 9.0, 9.0, 6.0], [6.0, 9.0, 9.0, 6.0], [4.0, 6.0, 6.0, 4.0]]
    """
    del platform, precision
    return _run(_forward_raw, x, kernel, spec, preferred_element_type, out_dtype, reduce=False)


def input_transpose(
    g, kernel, spec: ConvSpec, *, platform, precision, preferred_element_type, out_dtype
):
    """``dx``: the transposed convolution of ``g`` (see :func:`forward` for the signature)."""
    del platform, precision
    return _run(_input_grad_raw, g, kernel, spec, preferred_element_type, out_dtype, reduce=False)


def kernel_transpose(
    x, g, spec: ConvSpec, *, platform, precision, preferred_element_type, out_dtype
):
    """``dkernel``: per tap and channel, ``sum xpad * g`` (see :func:`forward`)."""
    del platform, precision
    return _run(_kernel_grad_raw, x, g, spec, preferred_element_type, out_dtype, reduce=True)
