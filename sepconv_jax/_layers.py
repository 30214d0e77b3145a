"""What the linen and NNX layers share: default initializers, option checks, forward calls.

The modules in :mod:`sepconv_jax.linen` and :mod:`sepconv_jax.nnx` own parameters
(and, when they stream, a cache) and nothing else. What both APIs do the same way
lives here, so they cannot drift apart: the same defaults, the same option checks
(with the same messages), and the same calls into :mod:`sepconv_jax.ops` and, with
``decode=True``, :mod:`sepconv_jax.streaming`. Window options and input channels are
validated by :mod:`sepconv_jax._spec`; inputs and parameters are promoted to one
dtype by each API's own ``promote_dtype`` before the call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from sepconv_jax import _spec, ops, streaming
from sepconv_jax._spec import DataFormat, WindowOptions
from sepconv_jax.kernels import dispatch
from sepconv_jax.kernels.dispatch import Impl

Initializer = Callable[..., jax.Array]

#: Default depthwise initializer. LeCun normal (truncated normal with variance
#: ``1 / fan_in``) where, for the ``(*window, 1, C * M)`` layout, the fan-in is the
#: true fan-in of a depthwise output: ``prod(window)`` taps of a single input channel.
default_depthwise_init: Initializer = jax.nn.initializers.variance_scaling(
    1.0, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1
)
#: Default pointwise initializer. LeCun normal over the ``(C_in, C_out)`` kernel:
#: variance ``1 / C_in``, the fan-in of a 1x1 channel mix.
default_pointwise_init: Initializer = jax.nn.initializers.variance_scaling(
    1.0, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1
)
#: Default bias initializer: zeros.
default_bias_init: Initializer = jax.nn.initializers.zeros


# ----------------------------------------------------------------------------- option checks


def check_dtype(value: Any, name: str, *, allow_none: bool) -> None:
    """A floating or complex dtype (or ``None`` when allowed)."""
    if value is None:
        if allow_none:
            return
        raise TypeError(f"`{name}` must be a dtype such as jnp.float32, got None")
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise TypeError(f"`{name}` must be a dtype such as jnp.float32, got {value!r}") from None
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"`{name}` must be a floating or complex dtype such as jnp.float32 or jnp.bfloat16, "
            f"got {dtype}"
        )


def check_initializer(value: Any, name: str) -> None:
    """Initializers are callables ``(key, shape, dtype) -> array``."""
    if not callable(value):
        raise TypeError(
            f"`{name}` must be an initializer, a callable (key, shape, dtype) -> array such as "
            f"jax.nn.initializers.lecun_normal(), got {type(value).__name__} {value!r}"
        )


def check_bool(value: Any, name: str) -> None:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__} {value!r}")


def check_data_format(data_format: Any) -> DataFormat:
    return _spec.check_choice(data_format, _spec.DATA_FORMATS, "data_format")


def check_impl(impl: Any) -> Impl:
    return _spec.check_choice(impl, dispatch.IMPLS, "impl")


def check_axis(value: Any, name: str) -> str | None:
    """A mesh axis name for parameter sharding annotations, or ``None``."""
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(
            f"`{name}` must be None or the name of a mesh axis such as 'model', got "
            f"{type(value).__name__} {value!r}"
        )
    return value


def partition_names(ndim: int, axes: dict[int, str | None]) -> tuple[str | None, ...] | None:
    """Per-dim mesh axis names of an ``ndim`` parameter from ``{dim: axis}`` (negative
    dims count from the end); ``None`` when no dim is sharded, so that the parameter
    carries no annotation.

    Example:
      >>> from sepconv_jax._layers import partition_names
      >>> partition_names(4, {-1: "model"}), partition_names(2, {0: None, 1: None})
      ((None, None, None, 'model'), None)
    """
    if all(axis is None for axis in axes.values()):
        return None
    names: list[str | None] = [None] * ndim
    for dim, axis in axes.items():
        names[dim] = axis
    return tuple(names)


def check_common(*, dtype: Any, param_dtype: Any, precision: Any, use_bias: Any) -> None:
    """Options every layer has."""
    check_dtype(dtype, "dtype", allow_none=True)
    check_dtype(param_dtype, "param_dtype", allow_none=False)
    _spec.check_precision(precision)
    check_bool(use_bias, "use_bias")


# ----------------------------------------------------------------------------- forward


#: A windowed layer's parameters: ``(depthwise_kernel, depthwise_bias, pointwise_kernel,
#: bias)``; a DepthwiseConv has no pointwise kernel and its bias in the second place.
Kernels = tuple[ArrayLike, ArrayLike | None, ArrayLike | None, ArrayLike | None]


def window_forward(
    x: ArrayLike, kernels: Kernels, opts: WindowOptions, *, impl: Impl, precision: Any
) -> jax.Array:
    """:func:`sepconv_jax.depthwise_conv` (no pointwise kernel) or
    :func:`sepconv_jax.separable_conv` with a layer's options."""
    depthwise_kernel, depthwise_bias, pointwise_kernel, bias = kernels
    options: dict[str, Any] = {
        "strides": opts.strides,
        "padding": opts.padding,
        "dilation": opts.dilation,
        "padding_mode": opts.padding_mode,
        "data_format": opts.data_format,
        "precision": precision,
        "impl": impl,
    }
    if pointwise_kernel is None:
        return ops.depthwise_conv(x, depthwise_kernel, bias=depthwise_bias, **options)
    return ops.separable_conv(
        x, depthwise_kernel, pointwise_kernel, depthwise_bias=depthwise_bias, bias=bias, **options
    )


# ----------------------------------------------------------------------------- decode


def check_decode(opts: WindowOptions, owner: str) -> None:
    """``decode=True`` streams a causal layer with zero padding, and nothing else."""
    if opts.padding != "CAUSAL":
        raise ValueError(
            f"`decode=True` streams a causal layer, but this {owner} has padding="
            f"{opts.padding!r}; build it with padding='CAUSAL' (all padding before, so output "
            f"t sees inputs up to t only) to stream it"
        )
    if opts.padding_mode != "zeros":
        raise ValueError(
            f"`decode=True` needs padding_mode='zeros' (a stream starts from zeros, the causal "
            f"padding), but this {owner} has padding_mode={opts.padding_mode!r}"
        )


def zero_buffer(x: Any, opts: WindowOptions, dtype: Any) -> jax.Array:
    """The cache at the start of a stream: ``(k - 1) * d`` zero frames for chunks like ``x``."""
    state = streaming.init_state(
        x, opts.window, dilation=opts.dilation, data_format=opts.data_format, dtype=dtype
    )
    return state.buffer


def check_stream(
    x: Any, kernel: Any, buffer: Any, opts: WindowOptions, owner: str, kernel_name: str
) -> None:
    """A chunk against a module's kernel and cache, before a step.

    The cache holds arrays only, so it cannot carry a stride phase: with a stride
    ``s > 1`` along time every chunk must hold a multiple of ``s`` frames (the phase
    then stays 0).
    """
    spec = _spec.stream_spec(
        x,
        kernel,
        buffer,
        0,
        strides=opts.strides,
        dilation=opts.dilation,
        data_format=opts.data_format,
        x_name="x",
        kernel_name=kernel_name,
        state_name="cache",
    )
    stride = opts.strides[0]
    if spec.chunk_length % stride:
        step = "separable_conv_step" if owner == "SeparableConv" else "depthwise_conv_step"
        raise ValueError(
            f"`x` has {spec.chunk_length} frames along time but this {owner} has stride {stride} "
            f"along time: with decode=True its chunks must hold a multiple of {stride} frames, "
            f"because the cache holds arrays only and cannot carry the stride phase between "
            f"chunks; feed chunks of a multiple of {stride} frames, or use "
            f"`sepconv_jax.streaming.{step}`, whose state carries the phase"
        )


def window_step(
    buffer: jax.Array,
    x: ArrayLike,
    kernels: Kernels,
    opts: WindowOptions,
    *,
    impl: Impl,
    precision: Any,
) -> tuple[jax.Array, jax.Array]:
    """:func:`sepconv_jax.streaming.depthwise_conv_step` (no pointwise kernel) or
    :func:`sepconv_jax.streaming.separable_conv_step` with a layer's options and
    cache; returns the output and the next cache."""
    depthwise_kernel, depthwise_bias, pointwise_kernel, bias = kernels
    state = streaming.StreamState(buffer, 0)
    options: dict[str, Any] = {
        "strides": opts.strides,
        "dilation": opts.dilation,
        "data_format": opts.data_format,
        "precision": precision,
        "impl": impl,
    }
    if pointwise_kernel is None:
        y, state = streaming.depthwise_conv_step(
            state, x, depthwise_kernel, bias=depthwise_bias, **options
        )
    else:
        y, state = streaming.separable_conv_step(
            state, x, depthwise_kernel, pointwise_kernel, depthwise_bias=depthwise_bias,
            bias=bias, **options,
        )  # fmt: skip
    return y, state.buffer
