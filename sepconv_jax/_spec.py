"""Argument canonicalization and validation: one place, one frozen record out.

Every public function in :mod:`sepconv_jax.ops` calls into this module before it
touches ``lax``, and so do the modules of :mod:`sepconv_jax.linen` and
:mod:`sepconv_jax.nnx` for their options and input channels. Shapes are static under
``jax.jit``, so every check here runs at trace time and a bad argument never
reaches XLA.

Records out: :class:`ConvSpec` (a windowed convolution, resolved against its input),
:class:`PointwiseSpec` (a 1x1 convolution) and :class:`WindowOptions` (a module's
window options, canonical but not yet bound to an input).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import typing
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import numpy as np
from jax import lax
from jax import numpy as jnp

PaddingLike = str | int | Sequence[int | tuple[int, int] | Sequence[int]]
#: Where the channels are: last, ``(*batch, *spatial, C)``, or first, ``(*batch, C, *spatial)``.
DataFormat = Literal["channels_last", "channels_first"]
#: How padded positions are filled (PyTorch's names).
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
#: The padding strings, upper case (any case is accepted on input).
PaddingString = Literal["SAME", "VALID", "CAUSAL"]
#: One ``(low, high)`` pair per spatial dim.
PaddingPairs = tuple[tuple[int, int], ...]

PADDING_STRINGS: tuple[PaddingString, ...] = typing.get_args(PaddingString)
PADDING_MODES: tuple[PaddingMode, ...] = typing.get_args(PaddingMode)
DATA_FORMATS: tuple[DataFormat, ...] = typing.get_args(DataFormat)
# Our names for the modes, mapped to ``numpy.pad`` / ``jax.numpy.pad`` modes.
NP_PAD_MODES: dict[PaddingMode, str] = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
}

_Choice = TypeVar("_Choice", bound=str)


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


# ----------------------------------------------------------------------------- scalars


def is_int(value: Any) -> bool:
    """True for Python and NumPy integers, False for bools and everything else."""
    if isinstance(value, bool | np.bool_):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1 (bools rejected), or an error naming ``name``."""
    if not is_int(value):
        raise TypeError(f"`{name}` must be an int >= 1, got {type(value).__name__} {value!r}")
    value = operator.index(value)
    if value < 1:
        raise ValueError(f"`{name}` must be >= 1, got {value}")
    return value


def canonicalize_tuple(value: Any, n: int, name: str, *, minimum: int = 1) -> tuple[int, ...]:
    """An int or a length-``n`` sequence of ints -> a tuple of ``n`` ints >= ``minimum``."""
    if is_int(value):
        values = (operator.index(value),) * n
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            raise ValueError(
                f"`{name}` has {len(value)} entries {tuple(value)!r} but the kernel has {n} spatial "
                f"dim(s); pass one int for all dims or exactly {n} ints"
            )
        if not all(is_int(v) for v in value):
            raise TypeError(f"`{name}` must contain only ints, got {tuple(value)!r}")
        values = tuple(operator.index(v) for v in value)
    else:
        raise TypeError(
            f"`{name}` must be an int or a sequence of {n} ints, got {type(value).__name__} {value!r}"
        )
    bad = [v for v in values if v < minimum]
    if bad:
        raise ValueError(f"`{name}` must be >= {minimum} in every dim, got {values!r}")
    return values


def canonicalize_padding(padding: Any, n: int) -> PaddingString | PaddingPairs:
    """Normalizes every accepted padding form.

    Returns an upper-case string (``"SAME"``, ``"VALID"``, ``"CAUSAL"``) or one
    ``(low, high)`` pair per spatial dim.
    """
    if isinstance(padding, str):
        upper = padding.upper()
        if upper not in PADDING_STRINGS:
            raise ValueError(
                f"`padding` must be one of {PADDING_STRINGS} (any case), an int, or per-dim ints or "
                f"(low, high) pairs; got {padding!r}"
            )
        return upper
    pairs: list[tuple[int, int]]
    if is_int(padding):
        index = operator.index(padding)
        pairs = [(index, index)] * n
    elif isinstance(padding, Sequence):
        if len(padding) != n:
            raise ValueError(
                f"`padding` has {len(padding)} entries {tuple(padding)!r} but the kernel has {n} "
                f"spatial dim(s); give one int or one (low, high) pair per spatial dim"
            )
        pairs = []
        for entry in padding:
            if is_int(entry):
                index = operator.index(entry)
                pairs.append((index, index))
            elif (
                isinstance(entry, Sequence)
                and not isinstance(entry, str)
                and len(entry) == 2
                and all(is_int(v) for v in entry)
            ):
                pairs.append((operator.index(entry[0]), operator.index(entry[1])))
            else:
                raise TypeError(
                    f"each entry of `padding` must be an int or a (low, high) pair of ints, got {entry!r} "
                    f"in {padding!r}"
                )
    else:
        raise TypeError(
            f"`padding` must be a string, an int or a sequence, got {type(padding).__name__} "
            f"{padding!r}"
        )
    result = tuple(pairs)
    if any(v < 0 for pair in result for v in pair):
        raise ValueError(f"`padding` must be non-negative, got {result!r}")
    return result


def resolve_padding(
    padding: PaddingString | PaddingPairs,
    in_spatial: Sequence[int],
    window: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
) -> PaddingPairs:
    """Turns a canonical padding into explicit ``(low, high)`` pairs for this input.

    * ``SAME``: output size ``ceil(in / stride)``; the total pad
      ``max((out - 1) * stride + eff_k - in, 0)`` is split with the odd element at the
      end (TensorFlow / ``lax`` semantics).
    * ``VALID``: no padding.
    * ``CAUSAL``: ``eff_k - 1`` before, nothing after, so output ``t`` sees inputs
      ``<= t * stride`` only.
    """
    if not isinstance(padding, str):
        return padding
    pairs: list[tuple[int, int]] = []
    for size, k, s, d in zip(in_spatial, window, strides, dilation, strict=True):
        eff = (k - 1) * d + 1
        if padding == "VALID":
            pairs.append((0, 0))
        elif padding == "CAUSAL":
            pairs.append((eff - 1, 0))
        else:  # SAME
            out = -(-size // s)
            total = max((out - 1) * s + eff - size, 0)
            pairs.append((total // 2, total - total // 2))
    return tuple(pairs)


def check_choice(value: Any, choices: Sequence[_Choice], name: str) -> _Choice:
    """Checks that ``value`` is one of the string ``choices``, and returns it."""
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a string, one of {tuple(choices)}, got {value!r}")
    for choice in choices:
        if value == choice:
            return choice
    raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}")


def check_precision(precision: Any) -> None:
    """``None``, a :class:`jax.lax.Precision`, one of its names, or a pair of them."""
    if precision is None:
        return
    values = precision if isinstance(precision, tuple | list) else (precision,)
    if len(values) not in (1, 2):
        raise ValueError(f"`precision` must be one value or a pair, got {precision!r}")
    for value in values:
        if isinstance(value, lax.Precision):
            continue
        try:
            lax.Precision(value)
        except (ValueError, TypeError, KeyError):
            raise ValueError(
                f"`precision` must be None, a `jax.lax.Precision` or one of 'default', 'high', "
                f"'highest', got {precision!r}"
            ) from None


def check_preferred_element_type(preferred_element_type: Any) -> np.dtype | None:
    """``None`` or a floating or complex dtype, as a NumPy dtype."""
    if preferred_element_type is None:
        return None
    try:
        dtype = np.dtype(preferred_element_type)
    except TypeError:
        raise TypeError(
            f"`preferred_element_type` must be None or a dtype such as jnp.float32, got "
            f"{preferred_element_type!r}"
        ) from None
    if not np.issubdtype(dtype, np.inexact):
        raise TypeError(
            f"`preferred_element_type` must be a floating or complex dtype, got {dtype}"
        )
    return dtype


def check_num_spatial_dims(num_spatial_dims: Any) -> int | None:
    """``None``, or how many trailing dims of a channels-first input are spatial (>= 0)."""
    if num_spatial_dims is None:
        return None
    return canonicalize_tuple(num_spatial_dims, 1, "num_spatial_dims", minimum=0)[0]


# ----------------------------------------------------------------------------- arrays


def check_numeric(value: Any, name: str) -> np.dtype:
    """Returns the dtype of an array-like, raising ``TypeError`` unless it is numeric."""
    if value is None:
        raise TypeError(f"`{name}` must be an array, got None")
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(value).dtype
        except Exception as e:  # ragged lists and other junk
            raise TypeError(f"`{name}` could not be read as an array: {e}") from None
    dtype = np.dtype(dtype)
    if dtype == np.bool_ or not jnp.issubdtype(dtype, jnp.number):
        raise TypeError(
            f"`{name}` must have a numeric dtype (integer, floating or complex), got {dtype}; "
            f"cast it with `.astype(jnp.float32)`"
        )
    return dtype


def shape_of(value: Any) -> tuple[int, ...]:
    """Static shape of an array-like (works on tracers, NumPy arrays and lists)."""
    shape = getattr(value, "shape", None)
    if shape is None:
        shape = np.shape(value)
    return tuple(shape)


def check_bias(bias: Any, channels: int, name: str) -> None:
    """A bias must be a 1-D numeric array with one entry per output channel."""
    if bias is None:
        return
    check_numeric(bias, name)
    shape = shape_of(bias)
    if shape != (channels,):
        raise ValueError(
            f"`{name}` has shape {shape} but the output has {channels} channels; "
            f"expected shape ({channels},)"
        )


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
    window, k_in, k_out = k_shape[:n], k_shape[-2], k_shape[-1]
    if any(w < 1 for w in window) or k_out < 1:
        raise ValueError(f"`{kernel_name}` has shape {k_shape}; every dim must be >= 1")
    batch_shape, in_spatial, channels = _split_x(
        shape_of(x), n, data_format, x_name, f"`{kernel_name}` has {n} spatial dim(s)"
    )
    if channels < 1:
        raise ValueError(f"`{x_name}` has shape {shape_of(x)} with 0 channels")

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
        groups = channels
    else:
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

    strides = canonicalize_tuple(strides, n, "strides")
    dilation = canonicalize_tuple(dilation, n, "dilation")
    pad = resolve_padding(canonicalize_padding(padding, n), in_spatial, window, strides, dilation)

    out_spatial: list[int] = []
    for i, (size, k, s, d, (lo, hi)) in enumerate(
        zip(in_spatial, window, strides, dilation, pad, strict=True)
    ):
        eff = (k - 1) * d + 1
        if size < 1:
            raise ValueError(f"`{x_name}` has shape {shape_of(x)} with an empty spatial dim {i}")
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


# ----------------------------------------------------------------------------- module options


@dataclasses.dataclass(frozen=True)
class WindowOptions:
    """The canonical window options of a module, before an input is bound.

    Attributes:
      window: the kernel's spatial shape (``kernel_size``), 1 to 3 dims.
      strides: one stride per spatial dim.
      padding: a padding string or one ``(low, high)`` pair per spatial dim.
      padding_mode: how padded positions are filled.
      dilation: one kernel dilation per spatial dim (``kernel_dilation``).
      depth_multiplier: depthwise outputs per input channel.
      data_format: ``"channels_last"`` or ``"channels_first"``.
    """

    window: tuple[int, ...]
    strides: tuple[int, ...]
    padding: PaddingString | PaddingPairs
    padding_mode: PaddingMode
    dilation: tuple[int, ...]
    depth_multiplier: int
    data_format: DataFormat

    @property
    def num_spatial(self) -> int:
        return len(self.window)

    def depthwise_kernel_shape(self, channels: int) -> tuple[int, ...]:
        """``(*window, 1, channels * depth_multiplier)``."""
        return (*self.window, 1, channels * self.depth_multiplier)


def check_kernel_size(kernel_size: Any) -> tuple[int, ...]:
    """A module's ``kernel_size``: a sequence of 1, 2 or 3 positive ints, one per spatial dim."""
    if is_int(kernel_size):
        raise TypeError(
            f"`kernel_size` must be a sequence with one int per spatial dim, e.g. (3, 3) for "
            f"images or (3,) for sequences; got the int {kernel_size!r}. A bare int is ambiguous "
            f"here because inputs may carry extra leading batch dims"
        )
    if not isinstance(kernel_size, Sequence) or isinstance(kernel_size, str):
        raise TypeError(
            f"`kernel_size` must be a sequence of 1, 2 or 3 ints, got "
            f"{type(kernel_size).__name__} {kernel_size!r}"
        )
    if len(kernel_size) not in (1, 2, 3):
        raise ValueError(
            f"`kernel_size` has {len(kernel_size)} entries {tuple(kernel_size)!r}; 1, 2 or 3 "
            f"spatial dims are supported"
        )
    return canonicalize_tuple(tuple(kernel_size), len(kernel_size), "kernel_size")


def window_options(
    *,
    kernel_size: Any,
    strides: Any,
    padding: Any,
    padding_mode: Any,
    kernel_dilation: Any,
    depth_multiplier: Any,
    data_format: Any,
) -> WindowOptions:
    """Validates the options of a module with a spatial window, canonicalized."""
    window = check_kernel_size(kernel_size)
    n = len(window)
    strides = canonicalize_tuple(strides, n, "strides")
    dilation = canonicalize_tuple(kernel_dilation, n, "kernel_dilation")
    padding = canonicalize_padding(padding, n)
    return WindowOptions(
        window=window,
        strides=strides,
        padding=padding,
        padding_mode=check_choice(padding_mode, PADDING_MODES, "padding_mode"),
        dilation=dilation,
        data_format=check_choice(data_format, DATA_FORMATS, "data_format"),
        depth_multiplier=check_positive_int(depth_multiplier, "depth_multiplier"),
    )


def window_channels(x: Any, opts: WindowOptions, owner: str) -> int:
    """The channel count of ``x`` for the module ``owner`` with window options ``opts``."""
    check_numeric(x, "x")
    n = opts.num_spatial
    why = f"this {owner} has a {n}-d `kernel_size` {opts.window}"
    return _split_x(shape_of(x), n, opts.data_format, "x", why)[2]


# ----------------------------------------------------------------------------- streaming


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """A validated step of a causal depthwise convolution over a stream of chunks.

    The step convolves ``[buffer, chunk]`` (joined along time, the first spatial
    axis) without padding along time and with causal padding along the other
    spatial axes, starting at frame ``offset`` of the joined window.

    Attributes:
      conv: the depthwise convolution of the chunk alone with ``"CAUSAL"`` padding
        (window, strides, dilation, channels, batch dims, layout).
      time_axis: the axis of time in the chunk and in the buffer.
      chunk_length: frames in the chunk, ``n``.
      history: frames the state keeps, ``(k - 1) * d`` of the time axis.
      buffer_shape: the shape the state's buffer must have for this chunk.
      padding: the ``(low, high)`` pairs of the step's convolution: ``(0, 0)`` along
        time, ``((k - 1) * d, 0)`` along every other spatial axis.
      offset: the first frame of the joined window whose output completes in this
        chunk, ``(s - phase) % s``.
      num_out: outputs along time this chunk yields, ``len(range(offset, n, s))``.
      next_phase: the phase after the chunk, ``(phase + n) % s``.
    """

    conv: ConvSpec
    time_axis: int
    chunk_length: int
    history: int
    buffer_shape: tuple[int, ...]
    padding: PaddingPairs
    offset: int
    num_out: int
    next_phase: int


def stream_window(kernel: Any, name: str) -> tuple[int, ...] | None:
    """The window of ``kernel`` when it is given as a sequence of ints, else ``None``.

    :func:`sepconv_jax.streaming.init_state` takes a kernel array or its window.
    """
    if isinstance(kernel, Sequence) and not isinstance(kernel, str):
        if kernel and all(is_int(k) for k in kernel):
            if len(kernel) not in (1, 2, 3):
                raise ValueError(
                    f"`{name}` as a window has {len(kernel)} entries {tuple(kernel)!r}; 1, 2 or 3 "
                    f"spatial dims are supported"
                )
            return canonicalize_tuple(tuple(kernel), len(kernel), name)
    return None


def stream_dtype(x: Any, name: str) -> np.dtype:
    """The dtype a chunk is convolved in: its own, integers promoted to float32."""
    dtype = np.dtype(jnp.result_type(check_numeric(x, name)))
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = np.dtype(jnp.promote_types(dtype, jnp.float32))
    return dtype


def stream_conv(
    x: Any,
    kernel: Any,
    *,
    strides: Any,
    dilation: Any,
    data_format: Any,
    x_name: str,
    kernel_name: str,
) -> tuple[ConvSpec, int, tuple[int, ...]]:
    """Validates a chunk against a depthwise kernel for a causal stream.

    Returns:
      ``(spec, time_axis, buffer_shape)``: the chunk's causal :class:`ConvSpec`,
      the axis of time (the first spatial axis) and the shape of the state's
      buffer, the chunk's shape with ``(k - 1) * d`` frames along time.
    """
    spec = make_spec(
        x,
        kernel,
        groups=None,
        strides=strides,
        padding="CAUSAL",
        dilation=dilation,
        padding_mode="zeros",
        data_format=data_format,
        x_name=x_name,
        kernel_name=kernel_name,
    )
    x_shape = shape_of(x)
    time_axis = len(spec.batch_shape) + (0 if spec.channels_last else 1)
    history = (spec.window[0] - 1) * spec.dilation[0]
    buffer_shape = (*x_shape[:time_axis], history, *x_shape[time_axis + 1 :])
    return spec, time_axis, buffer_shape


def stream_spec(
    x: Any,
    kernel: Any,
    buffer: Any,
    phase: Any,
    *,
    strides: Any,
    dilation: Any,
    data_format: Any,
    x_name: str = "x_chunk",
    kernel_name: str = "kernel",
    state_name: str = "state",
) -> StreamSpec:
    """Validates one streaming step of a causal depthwise convolution.

    Args:
      x: the chunk, ``(*batch, n, *rest, C)`` or channels-first ``(*batch, C, n, *rest)``.
      kernel: the depthwise kernel ``(*window, 1, C * M)``.
      buffer: the state's buffer, ``x``'s shape with ``(k - 1) * d`` frames along time.
      phase: frames seen so far modulo the time stride.
      strides, dilation, data_format: as in :func:`sepconv_jax.depthwise_conv`.
      x_name, kernel_name, state_name: names used in error messages.
    """
    spec, time_axis, expected = stream_conv(
        x,
        kernel,
        strides=strides,
        dilation=dilation,
        data_format=data_format,
        x_name=x_name,
        kernel_name=kernel_name,
    )
    x_shape = shape_of(x)
    buffer_dtype = check_numeric(buffer, f"{state_name}.buffer")
    got = shape_of(buffer)
    history = expected[time_axis]
    if got != expected:
        if len(got) == len(expected) and got[:time_axis] + got[time_axis + 1 :] == (
            expected[:time_axis] + expected[time_axis + 1 :]
        ):
            raise ValueError(
                f"`{state_name}` holds {got[time_axis]} frames along time but `{kernel_name}` "
                f"(window {spec.window[0]}, dilation {spec.dilation[0]} along time) needs "
                f"(k - 1) * d = {history}; make the state for this kernel"
            )
        pattern = [str(v) for v in got]
        if len(pattern) > time_axis:
            pattern[time_axis] = "n"
        raise ValueError(
            f"`{x_name}` has shape {x_shape} but `{state_name}` was made for chunks of shape "
            f"({', '.join(map(str, pattern))}) (any n along time, axis {time_axis}): the batch "
            f"dims, the channels and the spatial dims other than time must match"
        )
    x_dtype = stream_dtype(x, x_name)
    if x_dtype != buffer_dtype:
        raise TypeError(
            f"`{x_name}` computes in {x_dtype} but `{state_name}` holds {buffer_dtype} frames; "
            f"make the state with dtype {x_dtype} or cast the chunk to {buffer_dtype}"
        )
    stride = spec.strides[0]
    if not is_int(phase):
        raise TypeError(f"`{state_name}.phase` must be an int, got {type(phase).__name__}")
    phase = operator.index(phase)
    if not 0 <= phase < stride:
        raise ValueError(
            f"`{state_name}.phase` is {phase} but the stride along time is {stride}: the phase "
            f"counts frames modulo the stride, so it must be in [0, {stride}); was the state "
            f"made for another stride?"
        )
    n = x_shape[time_axis]
    offset = (stride - phase) % stride
    padding = ((0, 0), *((eff - 1, 0) for eff in spec.effective_window[1:]))
    return StreamSpec(
        conv=spec,
        time_axis=time_axis,
        chunk_length=n,
        history=history,
        buffer_shape=expected,
        padding=padding,
        offset=offset,
        num_out=len(range(offset, n, stride)),
        next_phase=(phase + n) % stride,
    )
