"""Causal convolution over a stream: step functions and their state.

A causal layer (``padding="CAUSAL"``) computes output ``t`` from inputs up to
``t * stride`` only, so it can run on a live stream, a chunk of frames at a time,
if it remembers the end of what it has seen. :func:`depthwise_conv_step` and
:func:`separable_conv_step` do that: each takes a :class:`StreamState` and a chunk,
and returns the outputs that complete inside the chunk and the next state. For any
chunking of a sequence, the outputs joined along time equal the offline
``padding="CAUSAL"`` call on the whole sequence.

Time is the first spatial axis: the only one of a 1-D input ``(*batch, time, C)``,
and the first of a 2-D input such as spectrogram frames ``(*batch, time, freq,
C)``, whose other spatial axes are padded causally within each chunk, as the
offline call pads them. Chunks may have any length from one frame up, with any
stride and dilation along time: with stride ``s``, a chunk of ``n`` frames yields
the outputs whose last input frame falls inside it (a zero-length time axis when
there is none), and the state carries the phase (frames seen modulo ``s``) to the
next chunk.

The Flax modules stream through these functions with ``decode=True``
(:class:`sepconv_jax.linen.DepthwiseConv`, :class:`sepconv_jax.nnx.SeparableConv`
and their siblings).

Example:
  >>> import jax.numpy as jnp
  >>> from sepconv_jax import depthwise_conv, streaming
  >>> x = jnp.arange(10.0).reshape(1, 10, 1)  # (batch, time, channels)
  >>> kernel = jnp.ones((3, 1, 1))  # a running sum of 3 frames
  >>> state = streaming.init_state(x, kernel)
  >>> outputs = []
  >>> for chunk in (x[:, :4], x[:, 4:5], x[:, 5:]):
  ...     y, state = streaming.depthwise_conv_step(state, chunk, kernel)
  ...     outputs.append(y)
  >>> jnp.concatenate(outputs, axis=1)[0, :, 0].tolist()
  [0.0, 1.0, 3.0, 6.0, 9.0, 12.0, 15.0, 18.0, 21.0, 24.0]
  >>> offline = depthwise_conv(x, kernel, padding="CAUSAL")
  >>> bool(jnp.all(offline == jnp.concatenate(outputs, axis=1)))
  True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from sepconv_jax import _spec, ops
from sepconv_jax._spec import DataFormat, StreamSpec
from sepconv_jax.kernels.dispatch import Impl
from sepconv_jax.ops import PrecisionLike

__all__ = ["StreamState", "depthwise_conv_step", "init_state", "separable_conv_step"]


@dataclasses.dataclass(frozen=True)
class StreamState:
    """What a causal convolution remembers between chunks: a JAX pytree.

    Attributes:
      buffer: the last ``(k - 1) * d`` input frames along time (``k`` the window
        and ``d`` the dilation along time), in the chunks' layout: ``(*batch,
        (k - 1) * d, *rest, C)``, or ``(*batch, C, (k - 1) * d, *rest)``
        channels-first. Zeros at the start of a stream: the causal padding. A
        pytree child, so it can be carried through ``jax.jit`` and ``lax.scan``.
      phase: frames seen so far modulo the stride along time (0 for stride 1).
        A static field (pytree metadata), because the number of outputs of the
        next chunk depends on it: under ``jax.jit`` a step function is traced
        once per phase it meets, at most ``stride`` times for chunks of one length.
    """

    buffer: jax.Array
    phase: int = 0


jax.tree_util.register_dataclass(StreamState, data_fields=["buffer"], meta_fields=["phase"])


def _check_state(state: Any) -> StreamState:
    if not isinstance(state, StreamState):
        raise TypeError(
            f"`state` must be a StreamState (from `sepconv_jax.streaming.init_state` or a "
            f"previous step), got {type(state).__name__}"
        )
    return state


def init_state(
    x: Any,
    kernel: Any,
    *,
    dilation: int | Sequence[int] = 1,
    data_format: DataFormat = "channels_last",
    dtype: Any = None,
) -> StreamState:
    """The state at the start of a stream: ``(k - 1) * d`` zero frames, phase 0.

    Args:
      x: a chunk of the stream, or anything with its ``shape`` and ``dtype``
        (e.g. a :class:`jax.ShapeDtypeStruct`): ``(*batch, n, *rest, C)``, or
        ``(*batch, C, n, *rest)`` channels-first. Its batch dims, channels and
        spatial dims other than time set the state's; its length ``n`` along time
        does not matter.
      kernel: the depthwise kernel ``(*window, 1, C * M)`` (an array or anything
        with a ``shape``), or its window alone as a sequence of ints, e.g. ``(9,)``
        or ``(3, 5)``.
      dilation: the kernel dilation, one int or one per spatial dim.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      dtype: the buffer's dtype; default ``x``'s dtype (integers promoted to
        float32, as the convolution promotes them).

    Returns:
      A :class:`StreamState` with a zero buffer of shape ``x.shape`` with
      ``(k - 1) * d`` frames along time, and phase 0.

    Raises:
      ValueError: when ``x`` and ``kernel`` do not fit together (rank, channels).
      TypeError: for non-numeric arrays, a bad ``dtype`` or options of the wrong type.

    Example:
      >>> import jax
      >>> from sepconv_jax import streaming
      >>> chunk = jax.ShapeDtypeStruct((2, 1, 40, 8), "float32")  # (batch, time, freq, C)
      >>> streaming.init_state(chunk, (5, 3), dilation=(2, 1)).buffer.shape
      (2, 8, 40, 8)
    """
    window = _spec.stream_window(kernel, "kernel")
    if window is not None:
        data_format = _spec.check_choice(data_format, _spec.DATA_FORMATS, "data_format")
        channels = _spec.window_channels(
            x,
            _spec.WindowOptions(
                window=window,
                strides=(1,) * len(window),
                padding="CAUSAL",
                padding_mode="zeros",
                dilation=(1,) * len(window),
                depth_multiplier=1,
                data_format=data_format,
            ),
            "init_state",
        )
        kernel = jax.ShapeDtypeStruct((*window, 1, max(channels, 1)), jnp.float32)
    _, _, buffer_shape = _spec.stream_conv(
        x,
        kernel,
        strides=1,
        dilation=dilation,
        data_format=data_format,
        x_name="x",
        kernel_name="kernel",
    )
    if dtype is None:
        dtype = _spec.stream_dtype(x, "x")
    else:
        dtype = _spec.check_preferred_element_type(dtype)
    return StreamState(jnp.zeros(buffer_shape, dtype), 0)


def _join(state: StreamState, x_chunk: ArrayLike, spec: StreamSpec) -> tuple[jax.Array, jax.Array]:
    """``[buffer, chunk]`` from the step's first output frame on, and the next buffer."""
    axis = spec.time_axis
    joined = jnp.concatenate([state.buffer, jnp.asarray(x_chunk, state.buffer.dtype)], axis=axis)
    n = spec.chunk_length
    new_buffer = lax.slice_in_dim(joined, n, n + spec.history, axis=axis)
    # Past the end when the chunk completes no output (then the window goes unused).
    start = min(spec.offset, n + spec.history)
    window = lax.slice_in_dim(joined, start, n + spec.history, axis=axis)
    return window, new_buffer


def _empty(call: Any, window: jax.Array, spec: StreamSpec) -> jax.Array:
    """A zero-length time axis with the shape and dtype ``call`` would give otherwise."""
    shape = list(window.shape)
    shape[spec.time_axis] = spec.history + 1  # a window that yields one output
    out = jax.eval_shape(call, jax.ShapeDtypeStruct(tuple(shape), window.dtype))
    empty = list(out.shape)
    empty[spec.time_axis] = 0
    return jnp.zeros(tuple(empty), out.dtype)


def _step(
    state: Any, x_chunk: ArrayLike, kernel: ArrayLike, kernel_name: str,
    options: dict[str, Any], check: Callable[[StreamSpec], None], conv: Callable[..., jax.Array],
) -> tuple[jax.Array, StreamState]:  # fmt: skip
    """One chunk of a causal convolution over a stream, either step's common part.

    The chunk is validated against ``kernel`` and the state (``options`` are the
    window options the caller was given, ``check`` validates the biases), joined to
    the state's frames, and ``conv(window, **window options)`` runs on the frames
    that complete outputs.
    """
    state = _check_state(state)
    spec = _spec.stream_spec(
        x_chunk, kernel, state.buffer, state.phase, kernel_name=kernel_name, **options
    )
    check(spec)
    window, new_buffer = _join(state, x_chunk, spec)
    conv_options = {
        "strides": spec.conv.strides,
        "padding": spec.padding,
        "dilation": spec.conv.dilation,
        "data_format": spec.conv.data_format,
    }

    def call(w: jax.Array) -> jax.Array:
        return conv(w, **conv_options)

    y = _empty(call, window, spec) if spec.num_out == 0 else call(window)
    return y, StreamState(new_buffer, spec.next_phase)


def depthwise_conv_step(
    state: StreamState,
    x_chunk: ArrayLike,
    kernel: ArrayLike,
    *,
    strides: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    bias: ArrayLike | None = None,
    data_format: DataFormat = "channels_last",
    precision: PrecisionLike = None,
    impl: Impl = "auto",
) -> tuple[jax.Array, StreamState]:
    """One chunk of a causal :func:`sepconv_jax.depthwise_conv` over a stream.

    Convolves ``[state.buffer, x_chunk]`` (joined along time) with no padding along
    time, starting at the first frame whose index in the stream is a multiple of
    the stride, and with ``"CAUSAL"`` padding along the other spatial axes. Joined
    over a stream's chunks, the outputs equal ``depthwise_conv(x, kernel,
    padding="CAUSAL", ...)`` on the whole sequence.

    Under ``jax.jit`` (``strides``, ``dilation`` and ``data_format`` static) the
    state's phase is static too: a chunk length that is a multiple of the stride
    keeps it fixed, so one trace serves the whole stream; other lengths trace
    once per phase, at most ``stride`` times.

    Args:
      state: the stream's :class:`StreamState` (:func:`init_state` at the start).
      x_chunk: ``(*batch, n, *rest, C)``, or ``(*batch, C, n, *rest)``
        channels-first, with ``n >= 1`` frames along time, the first spatial axis.
        Batch dims, channels and the other spatial dims must be the state's.
      kernel: ``(*window, 1, C * M)``, as in :func:`sepconv_jax.depthwise_conv`.
      strides: one int for every spatial dim, or one per dim; the first is along time.
      dilation: one int, or one per spatial dim.
      bias: optional ``(C * M,)``.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      precision, impl: as in :func:`sepconv_jax.depthwise_conv`.

    Returns:
      ``(y_chunk, new_state)``: the outputs that complete inside the chunk,
      ``(*batch, m, *out_rest, C * M)`` with ``m = len(range((s - phase) % s, n,
      s))`` (``m = n`` for stride 1, and possibly 0), and the state after it.

    Raises:
      ValueError: when the chunk, the kernel and the state do not fit together
        (rank, channels, batch or non-time dims, frames kept, phase vs stride).
      TypeError: for a ``state`` that is not a :class:`StreamState`, a chunk whose
        dtype is not the state's, non-numeric arrays or options of the wrong type.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax import streaming
      >>> kernel = jnp.ones((3, 1, 4))
      >>> state = streaming.init_state(jax.ShapeDtypeStruct((1, 1, 4), "float32"), kernel)
      >>> step = jax.jit(streaming.depthwise_conv_step, static_argnames="strides")
      >>> y, state = step(state, jnp.ones((1, 3, 4)), kernel, strides=2)
      >>> y.shape, state.phase  # frames 0 and 2 complete outputs; 3 frames seen
      ((1, 2, 4), 1)
      >>> y, state = step(state, jnp.ones((1, 1, 4)), kernel, strides=2)
      >>> y.shape, state.phase  # frame 3 completes none
      ((1, 0, 4), 0)
    """

    def check(spec: StreamSpec) -> None:
        _spec.check_bias(bias, spec.conv.out_channels, "bias")

    def conv(window: jax.Array, **options: Any) -> jax.Array:
        return ops.depthwise_conv(
            window, kernel, bias=bias, precision=precision, impl=impl, **options
        )

    options = {"strides": strides, "dilation": dilation, "data_format": data_format}
    return _step(state, x_chunk, kernel, "kernel", options, check, conv)


def separable_conv_step(
    state: StreamState,
    x_chunk: ArrayLike,
    depthwise_kernel: ArrayLike,
    pointwise_kernel: ArrayLike,
    *,
    strides: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    depthwise_bias: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    data_format: DataFormat = "channels_last",
    precision: PrecisionLike = None,
    impl: Impl = "auto",
) -> tuple[jax.Array, StreamState]:
    """One chunk of a causal :func:`sepconv_jax.separable_conv` over a stream.

    The depthwise step as :func:`depthwise_conv_step` (the state holds the
    *input's* last ``(k - 1) * d`` frames), then the pointwise step on its outputs,
    with both biases. Joined over a stream's chunks, the outputs equal
    ``separable_conv(x, depthwise_kernel, pointwise_kernel, padding="CAUSAL",
    ...)`` on the whole sequence.

    Args:
      state: the stream's :class:`StreamState`; make it with :func:`init_state`
        from a chunk and the ``depthwise_kernel``.
      x_chunk: ``(*batch, n, *rest, C)`` or channels-first, ``n >= 1``.
      depthwise_kernel: ``(*window, 1, C * M)``.
      pointwise_kernel: ``(C * M, out_channels)``.
      strides, dilation, data_format, precision, impl: as in
        :func:`depthwise_conv_step`; the window options apply to the depthwise step.
      depthwise_bias: optional ``(C * M,)``, added between the steps.
      bias: optional ``(out_channels,)``.

    Returns:
      ``(y_chunk, new_state)``: ``(*batch, m, *out_rest, out_channels)`` with ``m``
      as in :func:`depthwise_conv_step`, and the state after the chunk.

    Raises:
      ValueError: as :func:`depthwise_conv_step`, and for a ``pointwise_kernel``
        whose in-dim is not the depthwise step's output channels.
      TypeError: as :func:`depthwise_conv_step`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax import streaming
      >>> dw, pw = jnp.ones((5, 1, 8)), jnp.ones((8, 16))
      >>> state = streaming.init_state(jax.ShapeDtypeStruct((2, 1, 8), "float32"), dw)
      >>> y, state = streaming.separable_conv_step(state, jnp.ones((2, 1, 8)), dw, pw)
      >>> y.shape, float(y[0, 0, 0])  # one frame of ones: 8 channels x 1 tap
      ((2, 1, 16), 8.0)
    """

    def check(spec: StreamSpec) -> None:
        _spec.check_bias(depthwise_bias, spec.conv.out_channels, "depthwise_bias")
        _spec.pointwise_after(spec.conv, pointwise_kernel, bias)

    def conv(window: jax.Array, **options: Any) -> jax.Array:
        return ops.separable_conv(
            window, depthwise_kernel, pointwise_kernel, depthwise_bias=depthwise_bias,
            bias=bias, precision=precision, impl=impl, **options,
        )  # fmt: skip

    options = {"strides": strides, "dilation": dilation, "data_format": data_format}
    return _step(state, x_chunk, depthwise_kernel, "depthwise_kernel", options, check, conv)
