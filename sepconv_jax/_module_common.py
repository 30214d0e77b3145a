"""What the linen and NNX modules share: argument checks, initializers, forward passes.

The modules in :mod:`sepconv_jax.linen` and :mod:`sepconv_jax.nnx` own parameters
and nothing else. Everything they have in common lives here so the two APIs cannot
drift apart: the same arguments are checked the same way, with the same messages,
and the forward pass is the same call into :mod:`sepconv_jax.ops`. The last
section holds the array checks of the weight converters in :mod:`sepconv_jax.interop`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sepconv_jax import _spec, ops
from sepconv_jax.kernels import dispatch

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


@dataclasses.dataclass(frozen=True)
class WindowOptions:
    """Canonical, validated options of a module with a spatial window."""

    window: tuple[int, ...]
    strides: tuple[int, ...]
    padding: str | tuple[tuple[int, int], ...]
    padding_mode: str
    dilation: tuple[int, ...]
    depth_multiplier: int
    data_format: str
    impl: str

    @property
    def num_spatial(self) -> int:
        return len(self.window)


# ----------------------------------------------------------------------------- checks


check_positive_int = _spec.check_positive_int
check_bias = _spec.check_bias


def check_kernel_size(kernel_size: Any) -> tuple[int, ...]:
    """A sequence of 1, 2 or 3 positive ints, one per spatial dim."""
    if _spec.is_int(kernel_size):
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
    return _spec.canonicalize_tuple(tuple(kernel_size), len(kernel_size), "kernel_size")


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


def check_data_format(data_format: Any) -> str:
    return _spec.check_choice(data_format, _spec.DATA_FORMATS, "data_format")


def check_common(*, dtype: Any, param_dtype: Any, precision: Any, use_bias: Any) -> None:
    """Options every module has."""
    check_dtype(dtype, "dtype", allow_none=True)
    check_dtype(param_dtype, "param_dtype", allow_none=False)
    ops._check_precision(precision)
    check_bool(use_bias, "use_bias")


def window_options(
    *,
    kernel_size: Any,
    strides: Any,
    padding: Any,
    padding_mode: Any,
    kernel_dilation: Any,
    depth_multiplier: Any,
    data_format: Any,
    impl: Any,
) -> WindowOptions:
    """Validates the options of a windowed module and returns them canonicalized."""
    window = check_kernel_size(kernel_size)
    n = len(window)
    strides = _spec.canonicalize_tuple(strides, n, "strides")
    dilation = _spec.canonicalize_tuple(kernel_dilation, n, "kernel_dilation")
    padding = _spec.canonicalize_padding(padding, n)
    _spec.check_choice(padding_mode, _spec.PADDING_MODES, "padding_mode")
    data_format = check_data_format(data_format)
    depth_multiplier = check_positive_int(depth_multiplier, "depth_multiplier")
    _spec.check_choice(impl, ("auto", *dispatch.KERNELS), "impl")
    return WindowOptions(
        window=window,
        strides=strides,
        padding=padding,
        padding_mode=padding_mode,
        dilation=dilation,
        depth_multiplier=depth_multiplier,
        data_format=data_format,
        impl=impl,
    )


def check_pointwise_spatial(num_spatial_dims: Any) -> int | None:
    if num_spatial_dims is None:
        return None
    return _spec.canonicalize_tuple(num_spatial_dims, 1, "num_spatial_dims", minimum=0)[0]


# ----------------------------------------------------------------------------- shapes


def window_channels(x: Any, opts: WindowOptions, owner: str) -> int:
    """The channel count of ``x`` for a module with a ``len(window)``-d window."""
    _spec.check_numeric(x, "x")
    shape = _spec.shape_of(x)
    n = opts.num_spatial
    if len(shape) < n + 1:
        layout = (
            "(*batch, *spatial, channels)"
            if opts.data_format == "channels_last"
            else "(*batch, channels, *spatial)"
        )
        raise ValueError(
            f"`x` has shape {shape} (rank {len(shape)}) but this {owner} has a {n}-d "
            f"`kernel_size` {opts.window}, so `x` needs rank >= {n + 1}: {layout}"
        )
    return shape[-1] if opts.data_format == "channels_last" else shape[-n - 1]


def pointwise_channels(x: Any, data_format: str, num_spatial_dims: int | None) -> int:
    """The channel count of ``x`` as :func:`sepconv_jax.ops.pointwise_conv` reads it."""
    _spec.check_numeric(x, "x")
    shape = _spec.shape_of(x)
    if data_format == "channels_last":
        if len(shape) < 1:
            raise ValueError("`x` is a scalar; a pointwise conv needs at least a channel dim")
        return shape[-1]
    n = len(shape) - 2 if num_spatial_dims is None else num_spatial_dims
    if n < 0 or len(shape) < n + 1:
        raise ValueError(
            f"`x` has shape {shape} (rank {len(shape)}); channels-first input needs "
            f"(*batch, channels, *spatial) with {n if n >= 0 else 'some'} spatial dim(s)"
        )
    return shape[-n - 1]


def check_in_features(channels: int, in_features: int, owner: str) -> None:
    if channels != in_features:
        raise ValueError(
            f"`x` has {channels} channels but this {owner} was built with "
            f"in_features={in_features}; build it with in_features={channels} or fix the input"
        )


def depthwise_kernel_shape(opts: WindowOptions, channels: int) -> tuple[int, ...]:
    return (*opts.window, 1, channels * opts.depth_multiplier)


# ----------------------------------------------------------------------------- forward


def _cast(dtype: Any, *arrays: Any) -> list[Any]:
    """Casts every non-``None`` array to ``dtype``; ``None`` leaves promotion to ``ops``."""
    if dtype is None:
        return list(arrays)
    return [None if a is None else jnp.asarray(a, dtype) for a in arrays]


def depthwise_forward(
    x: Any,
    kernel: Any,
    bias: Any,
    opts: WindowOptions,
    *,
    dtype: Any,
    precision: Any,
) -> jax.Array:
    x, kernel, bias = _cast(dtype, x, kernel, bias)
    return ops.depthwise_conv(
        x,
        kernel,
        strides=opts.strides,
        padding=opts.padding,
        dilation=opts.dilation,
        padding_mode=opts.padding_mode,
        data_format=opts.data_format,
        bias=bias,
        precision=precision,
        impl=opts.impl,
    )


def pointwise_forward(
    x: Any,
    kernel: Any,
    bias: Any,
    *,
    data_format: str,
    num_spatial_dims: int | None,
    dtype: Any,
    precision: Any,
) -> jax.Array:
    x, kernel, bias = _cast(dtype, x, kernel, bias)
    return ops.pointwise_conv(
        x,
        kernel,
        bias=bias,
        data_format=data_format,
        num_spatial_dims=num_spatial_dims,
        precision=precision,
    )


def separable_forward(
    x: Any,
    depthwise_kernel: Any,
    pointwise_kernel: Any,
    depthwise_bias: Any,
    bias: Any,
    opts: WindowOptions,
    *,
    dtype: Any,
    precision: Any,
) -> jax.Array:
    x, depthwise_kernel, pointwise_kernel, depthwise_bias, bias = _cast(
        dtype, x, depthwise_kernel, pointwise_kernel, depthwise_bias, bias
    )
    return ops.separable_conv(
        x,
        depthwise_kernel,
        pointwise_kernel,
        strides=opts.strides,
        padding=opts.padding,
        dilation=opts.dilation,
        padding_mode=opts.padding_mode,
        data_format=opts.data_format,
        depthwise_bias=depthwise_bias,
        bias=bias,
        precision=precision,
        impl=opts.impl,
    )


# ----------------------------------------------------------------------------- interop arrays


def as_array(value: Any, name: str) -> np.ndarray:
    """``np.asarray(value)``, required to be numeric; the dtype is kept as it is."""
    if value is None:
        raise TypeError(f"`{name}` must be an array, got None")
    try:
        array = np.asarray(value)
    except Exception as e:  # e.g. a torch tensor that still requires grad
        raise TypeError(
            f"`{name}` could not be read as a NumPy array ({e}); pass "
            f"`tensor.detach().cpu().numpy()` or, for a Keras variable, `np.asarray(variable.value)`"
        ) from None
    _spec.check_numeric(array, name)
    return array


def optional_array(value: Any, name: str) -> np.ndarray | None:
    return None if value is None else as_array(value, name)


def check_rank(array: np.ndarray, ranks: tuple[int, ...], name: str, layout: str) -> None:
    if array.ndim not in ranks:
        raise ValueError(
            f"`{name}` has shape {array.shape} (rank {array.ndim}); expected rank "
            f"{' or '.join(map(str, ranks))}: {layout}"
        )


def check_multiplier(depth_multiplier: Any, channels: int) -> int:
    """A positive int that divides ``channels`` (the depthwise output channels)."""
    if isinstance(depth_multiplier, bool) or not isinstance(depth_multiplier, int | np.integer):
        raise TypeError(
            f"`depth_multiplier` must be a positive int, got {type(depth_multiplier).__name__} "
            f"{depth_multiplier!r}"
        )
    if depth_multiplier < 1 or channels % depth_multiplier:
        raise ValueError(
            f"`depth_multiplier`={depth_multiplier} must be >= 1 and divide the kernel's "
            f"{channels} output channels (C * depth_multiplier)"
        )
    return int(depth_multiplier)


def with_bias(params: dict[str, np.ndarray], name: str, bias: np.ndarray | None) -> dict:
    if bias is not None:
        params[name] = bias
    return params


def pointwise_for_export(
    kernel: Any, bias: Any, num_spatial_dims: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    """Checks a pointwise ``kernel`` ``(C_in, C_out)``, its bias and a 0-3 export rank."""
    kernel = as_array(kernel, "kernel")
    check_rank(kernel, (2,), "kernel", "(C_in, C_out)")
    if num_spatial_dims not in (0, 1, 2, 3):
        raise ValueError(f"`num_spatial_dims` must be 0, 1, 2 or 3, got {num_spatial_dims!r}")
    bias = optional_array(bias, "bias")
    check_bias(bias, kernel.shape[1], "bias")
    return kernel, bias
