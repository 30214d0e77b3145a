"""The spec of one convolution: :class:`ConvSpec` (windowed) and :class:`PointwiseSpec` (1x1)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from sepconv_jax._spec.checks import (
    DATA_FORMATS,
    PADDING_MODES,
    DataFormat,
    PaddingMode,
    PaddingPairs,
    canonicalize_padding,
    canonicalize_tuple,
    check_bias,
    check_choice,
    check_num_spatial_dims,
    check_numeric,
    check_positive_int,
    resolve_padding,
    shape_of,
)


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """Everything a kernel needs to compute one convolution, fully resolved.

    Attributes:
      num_spatial: number of spatial dimensions (1, 2 or 3).
      batch_shape: the leading batch dims of ``x`` as given (possibly empty).
      in_spatial: spatial shape of ``x``.
      out_spatial: spatial shape of the result.
      in_channels: channels of ``x``.
      out_channels: channels of the result.
      groups: feature groups (``in_channels`` for a depthwise conv, 1 for a standard one).
      window: spatial shape of the kernel.
      strides: one stride per spatial dim.
      dilation: one kernel dilation per spatial dim.
      padding: one ``(low, high)`` pair per spatial dim, resolved against the input.
      padding_mode: how padded positions are filled.
      data_format: ``"channels_last"`` or ``"channels_first"``.
    """

    num_spatial: int
    batch_shape: tuple[int, ...]
    in_spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]
    in_channels: int
    out_channels: int
    groups: int
    window: tuple[int, ...]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: PaddingPairs
    padding_mode: PaddingMode
    data_format: DataFormat

    @property
    def depth_multiplier(self) -> int:
        """Output channels per input channel of a depthwise conv (``out // in``)."""
        return self.out_channels // self.in_channels

    @property
    def channels_last(self) -> bool:
        return self.data_format == "channels_last"

    @property
    def channel_axis(self) -> int:
        """Axis of the channels in the flattened ``(batch, ...)`` layout."""
        return -1 if self.channels_last else 1

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """Axes of the spatial dims in the flattened ``(batch, ...)`` layout."""
        start = 1 if self.channels_last else 2
        return tuple(range(start, start + self.num_spatial))

    @property
    def effective_window(self) -> tuple[int, ...]:
        """Spatial extent of the dilated window: ``(k - 1) * d + 1`` per dim."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.window, self.dilation, strict=True))

    def flat_shape(self, spatial: Sequence[int], channels: int) -> tuple[int, ...]:
        """Shape of an array in the flattened ``(batch, ...)`` layout."""
        batch = math.prod(self.batch_shape)
        if self.channels_last:
            return (batch, *spatial, channels)
        return (batch, channels, *spatial)

    def output_shape(self) -> tuple[int, ...]:
        """Shape of the result, with the caller's batch dims restored."""
        if self.channels_last:
            return (*self.batch_shape, *self.out_spatial, self.out_channels)
        return (*self.batch_shape, self.out_channels, *self.out_spatial)


def _split_x(
    x_shape: tuple[int, ...], n: int, data_format: DataFormat, x_name: str, why: str
) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """Splits ``x``'s shape into (batch dims, spatial dims, channels) for ``n`` spatial dims.

    ``why`` says where ``n`` comes from, for the error message (e.g. "`kernel` has 2
    spatial dim(s)").
    """
    if len(x_shape) < n + 1:
        layout = (
            "(*batch, *spatial, channels)"
            if data_format == "channels_last"
            else ("(*batch, channels, *spatial)")
        )
        raise ValueError(
            f"`{x_name}` has shape {x_shape} (rank {len(x_shape)}) but {why}, so `{x_name}` needs "
            f"rank >= {n + 1}: {layout}"
        )
    if data_format == "channels_last":
        return x_shape[: -n - 1], x_shape[-n - 1 : -1], x_shape[-1]
    return x_shape[: -n - 1], x_shape[-n:], x_shape[-n - 1]


def _resolve_groups(
    groups: int | None,
    channels: int,
    k_shape: tuple[int, ...],
    x_name: str,
    kernel_name: str,
) -> int:
    """The feature groups of a kernel of shape ``k_shape`` on ``channels`` input channels.

    ``None`` means depthwise: the kernel's in-dim must be 1 and its out-dim a multiple
    of ``channels``; otherwise ``groups`` must divide both channel counts and the
    kernel's in-dim must be ``channels // groups``.
    """
    k_in, k_out = k_shape[-2], k_shape[-1]
    if groups is None:  # depthwise
        if k_in != 1:
            raise ValueError(
                f"`{kernel_name}` has shape {k_shape} but a depthwise kernel must have in-dim 1: "
                f"(*window, 1, channels * depth_multiplier); got in-dim {k_in}"
            )
        if k_out % channels:
            raise ValueError(
                f"`{kernel_name}` has {k_out} output channels but `{x_name}` has {channels} channels; "
                f"a depthwise kernel needs a multiple of {channels} "
                f"(depth_multiplier = {k_out} / {channels} must be whole)"
            )
        return channels
    groups = check_positive_int(groups, "groups")
    if channels % groups:
        raise ValueError(
            f"`{x_name}` has {channels} channels, which `groups`={groups} does not divide; "
            f"choose groups among the divisors of {channels}"
        )
    if k_out % groups:
        raise ValueError(
            f"`{kernel_name}` has {k_out} output channels, which `groups`={groups} does not divide"
        )
    if k_in != channels // groups:
        raise ValueError(
            f"`{kernel_name}` has in-dim {k_in} but `{x_name}` has {channels} channels in "
            f"{groups} group(s), so the kernel needs in-dim {channels // groups}: "
            f"shape (*window, {channels // groups}, out_channels)"
        )
    return groups


def _out_spatial(
    x_shape: tuple[int, ...],
    in_spatial: Sequence[int],
    window: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    pad: PaddingPairs,
    padding_mode: PaddingMode,
    x_name: str,
) -> list[int]:
    """The output size of every spatial dim, once the padding fits the input and window."""
    out_spatial: list[int] = []
    for i, (size, k, s, d, (lo, hi)) in enumerate(
        zip(in_spatial, window, strides, dilation, pad, strict=True)
    ):
        eff = (k - 1) * d + 1
        if size < 1:
            raise ValueError(f"`{x_name}` has shape {x_shape} with an empty spatial dim {i}")
        if padding_mode == "reflect" and max(lo, hi) >= size:
            raise ValueError(
                f"padding_mode='reflect' needs padding smaller than the input in every spatial dim, "
                f"but spatial dim {i} has size {size} and padding {(lo, hi)}; use a larger input, "
                f"less padding, or padding_mode='replicate'"
            )
        if padding_mode == "circular" and max(lo, hi) > size:
            raise ValueError(
                f"padding_mode='circular' needs padding no larger than the input in every spatial "
                f"dim, but spatial dim {i} has size {size} and padding {(lo, hi)}"
            )
        padded = size + lo + hi
        if padded < eff:
            raise ValueError(
                f"the dilated window ({eff}) is larger than the padded input ({padded} = {size} + "
                f"{lo} + {hi}) in spatial dim {i}; use a larger input, more padding, or "
                f"padding='SAME'"
            )
        out_spatial.append((padded - eff) // s + 1)
    return out_spatial


def make_spec(
    x: Any,
    kernel: Any,
    *,
    groups: int | None,
    strides: Any,
    padding: Any,
    dilation: Any,
    padding_mode: Any,
    data_format: Any,
    x_name: str = "x",
    kernel_name: str = "kernel",
) -> ConvSpec:
    """Validates a windowed convolution and returns its :class:`ConvSpec`.

    Args:
      x: the input, ``(*batch, *spatial, C)`` or channels-first.
      kernel: ``(*window, C // groups, out_channels)``.
      groups: feature groups; ``None`` means depthwise (``groups = C`` and the
        kernel's in-dim must be 1).
      strides, padding, dilation, padding_mode, data_format: as in the public API.
      x_name, kernel_name: names used in error messages.
    """
    check_numeric(x, x_name)
    check_numeric(kernel, kernel_name)
    data_format = check_choice(data_format, DATA_FORMATS, "data_format")
    padding_mode = check_choice(padding_mode, PADDING_MODES, "padding_mode")

    k_shape = shape_of(kernel)
    if len(k_shape) not in (3, 4, 5):
        raise ValueError(
            f"`{kernel_name}` has shape {k_shape} (rank {len(k_shape)}); expected rank 3, 4 or 5: "
            f"(*window, in_per_group, out_channels) for 1, 2 or 3 spatial dims"
        )
    n = len(k_shape) - 2
    window, k_out = k_shape[:n], k_shape[-1]
    if any(w < 1 for w in window) or k_out < 1:
        raise ValueError(f"`{kernel_name}` has shape {k_shape}; every dim must be >= 1")
    batch_shape, in_spatial, channels = _split_x(
        shape_of(x), n, data_format, x_name, f"`{kernel_name}` has {n} spatial dim(s)"
    )
    if channels < 1:
        raise ValueError(f"`{x_name}` has shape {shape_of(x)} with 0 channels")

    groups = _resolve_groups(groups, channels, k_shape, x_name, kernel_name)
    strides = canonicalize_tuple(strides, n, "strides")
    dilation = canonicalize_tuple(dilation, n, "dilation")
    pad = resolve_padding(canonicalize_padding(padding, n), in_spatial, window, strides, dilation)
    out_spatial = _out_spatial(
        shape_of(x), in_spatial, window, strides, dilation, pad, padding_mode, x_name
    )
    return ConvSpec(
        num_spatial=n,
        batch_shape=tuple(batch_shape),
        in_spatial=tuple(in_spatial),
        out_spatial=tuple(out_spatial),
        in_channels=channels,
        out_channels=k_out,
        groups=groups,
        window=tuple(window),
        strides=strides,
        dilation=dilation,
        padding=pad,
        padding_mode=padding_mode,
        data_format=data_format,
    )


# ----------------------------------------------------------------------------- pointwise


@dataclasses.dataclass(frozen=True)
class PointwiseSpec:
    """A validated pointwise (1x1) convolution: a channel mix at every position.

    Attributes:
      leading_shape: the dims of ``x`` before its channel axis (the batch dims, and
        the spatial dims when channels-last).
      trailing_shape: the dims after it (the spatial dims when channels-first).
      in_channels: channels of ``x``.
      out_channels: channels of the result.
      data_format: ``"channels_last"`` or ``"channels_first"``.
    """

    leading_shape: tuple[int, ...]
    trailing_shape: tuple[int, ...]
    in_channels: int
    out_channels: int
    data_format: DataFormat

    @property
    def channels_last(self) -> bool:
        return self.data_format == "channels_last"

    def output_shape(self) -> tuple[int, ...]:
        """Shape of the result: ``x``'s shape with ``out_channels`` channels."""
        return (*self.leading_shape, self.out_channels, *self.trailing_shape)


def _pointwise_channel_axis(
    x_shape: tuple[int, ...], data_format: DataFormat, num_spatial_dims: int | None
) -> int:
    """The axis of ``x``'s channels for a pointwise conv (arguments already checked)."""
    if num_spatial_dims is not None:
        need = num_spatial_dims + 1
        if len(x_shape) < need:
            raise ValueError(
                f"`x` has shape {x_shape} (rank {len(x_shape)}) but num_spatial_dims="
                f"{num_spatial_dims} with {data_format} needs rank >= {need}"
            )
    elif data_format == "channels_first" and len(x_shape) < 2:
        raise ValueError(
            f"`x` has shape {x_shape}; channels-first input needs rank >= 2: "
            f"(batch, channels, *spatial)"
        )
    if len(x_shape) < 1:
        raise ValueError("`x` is a scalar; pointwise_conv needs at least a channel dim")
    if data_format == "channels_last":
        return len(x_shape) - 1
    n = len(x_shape) - 2 if num_spatial_dims is None else num_spatial_dims
    return len(x_shape) - n - 1


def pointwise_channels(x: Any, data_format: DataFormat, num_spatial_dims: int | None) -> int:
    """The channel count of ``x`` as a pointwise conv reads it (a module's input lookup).

    Args:
      x: the input; it must be numeric.
      data_format: checked already (e.g. by the module's constructor).
      num_spatial_dims: canonical, from :func:`check_num_spatial_dims`.
    """
    check_numeric(x, "x")
    x_shape = shape_of(x)
    return x_shape[_pointwise_channel_axis(x_shape, data_format, num_spatial_dims)]


def pointwise_spec(
    x: Any, kernel: Any, bias: Any, *, data_format: Any, num_spatial_dims: Any
) -> PointwiseSpec:
    """Validates a pointwise conv of ``x`` with a ``(in_channels, out_channels)`` kernel.

    Args:
      x: the input, channels-last or channels-first.
      kernel: ``(in_channels, out_channels)``.
      bias: ``None`` or ``(out_channels,)``.
      data_format, num_spatial_dims: as in :func:`sepconv_jax.pointwise_conv`.
    """
    check_numeric(x, "x")
    check_numeric(kernel, "kernel")
    data_format = check_choice(data_format, DATA_FORMATS, "data_format")
    x_shape, k_shape = shape_of(x), shape_of(kernel)
    if len(k_shape) != 2:
        raise ValueError(
            f"`kernel` has shape {k_shape}; a pointwise kernel is (in_channels, out_channels)"
        )
    n = check_num_spatial_dims(num_spatial_dims)
    axis = _pointwise_channel_axis(x_shape, data_format, n)
    channels = x_shape[axis]
    if k_shape[0] != channels:
        raise ValueError(
            f"`kernel` has in-dim {k_shape[0]} but `x` has {channels} channels (axis {axis} of "
            f"shape {x_shape}); expected kernel shape ({channels}, out_channels)"
        )
    check_bias(bias, k_shape[1], "bias")
    return PointwiseSpec(x_shape[:axis], x_shape[axis + 1 :], channels, k_shape[1], data_format)


def pointwise_after(spec: ConvSpec, kernel: Any, bias: Any) -> PointwiseSpec:
    """Validates the pointwise step of a separable conv whose depthwise step is ``spec``.

    Args:
      spec: the validated depthwise step.
      kernel: the ``pointwise_kernel``, ``(spec.out_channels, out_channels)``.
      bias: ``None`` or ``(out_channels,)``.
    """
    check_numeric(kernel, "pointwise_kernel")
    k_shape = shape_of(kernel)
    if len(k_shape) != 2 or k_shape[0] != spec.out_channels:
        raise ValueError(
            f"`pointwise_kernel` has shape {k_shape} but the depthwise step gives "
            f"{spec.out_channels} channels; expected ({spec.out_channels}, out_channels)"
        )
    check_bias(bias, k_shape[1], "bias")
    leading: tuple[int, ...]
    trailing: tuple[int, ...]
    if spec.channels_last:
        leading, trailing = (*spec.batch_shape, *spec.out_spatial), ()
    else:
        leading, trailing = spec.batch_shape, spec.out_spatial
    return PointwiseSpec(leading, trailing, spec.out_channels, k_shape[1], spec.data_format)
