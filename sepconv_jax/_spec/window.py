"""A module's window options, canonical but not yet bound to an input."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from sepconv_jax._spec.checks import (
    DATA_FORMATS,
    PADDING_MODES,
    DataFormat,
    PaddingMode,
    PaddingPairs,
    PaddingString,
    canonicalize_padding,
    canonicalize_tuple,
    check_choice,
    check_numeric,
    check_positive_int,
    is_int,
    shape_of,
)
from sepconv_jax._spec.conv import _split_x


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
