"""The spec of one step of a causal depthwise convolution over a stream of chunks."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
from jax import numpy as jnp

from sepconv_jax._spec.checks import (
    PaddingPairs,
    canonicalize_tuple,
    check_numeric,
    is_int,
    shape_of,
)
from sepconv_jax._spec.conv import ConvSpec, make_spec


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
