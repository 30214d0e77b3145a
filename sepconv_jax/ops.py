"""Depthwise, pointwise, separable and grouped convolution as pure JAX functions.

Arrays are channels-last by default: ``x`` is ``(*batch, *spatial, channels)`` with
zero or more leading batch dims and 1, 2 or 3 spatial dims (inferred from the
kernel's rank). ``data_format="channels_first"`` takes ``(*batch, channels,
*spatial)``. Every function validates its arguments before tracing reaches XLA and
works under ``jax.jit``, ``jax.vmap`` and ``jax.grad``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from sepconv_jax import _spec
from sepconv_jax._spec import ConvSpec, DataFormat, PaddingLike, PaddingMode, PointwiseSpec
from sepconv_jax.kernels import op as _op
from sepconv_jax.kernels import separable as _separable
from sepconv_jax.kernels import xla as _xla
from sepconv_jax.kernels.dispatch import Impl

__all__ = ["depthwise_conv", "grouped_conv", "pointwise_conv", "separable_conv"]

PrecisionLike = None | str | lax.Precision | tuple[Any, Any]


# ----------------------------------------------------------------------------- helpers


def _check_numerics(precision: Any, preferred_element_type: Any) -> None:
    _spec.check_precision(precision)
    _spec.check_preferred_element_type(preferred_element_type)


def _compute_dtype(*arrays: ArrayLike | None) -> np.dtype:
    """The one inexact dtype the given arrays (skipping ``None``) are promoted to."""
    dtype = jnp.result_type(*[a for a in arrays if a is not None])
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.promote_types(dtype, jnp.float32)
    return dtype


def _promote(
    x: ArrayLike, kernel: ArrayLike, bias: ArrayLike | None
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Promotes ``x``, ``kernel`` and ``bias`` (if given) to their :func:`_compute_dtype`."""
    dtype = _compute_dtype(x, kernel, bias)
    return (
        jnp.asarray(x, dtype),
        jnp.asarray(kernel, dtype),
        None if bias is None else jnp.asarray(bias, dtype),
    )


def _pad_mode(x: jax.Array, spec: ConvSpec) -> tuple[jax.Array, ConvSpec]:
    """Applies a non-zero ``padding_mode`` explicitly, leaving a VALID conv to do."""
    if spec.padding_mode == "zeros" or not any(lo or hi for lo, hi in spec.padding):
        return x, spec
    widths = [(0, 0)] * x.ndim
    for axis, pair in zip(spec.spatial_axes, spec.padding, strict=True):
        widths[axis] = pair
    x = jnp.pad(x, widths, mode=_spec.NP_PAD_MODES[spec.padding_mode])
    in_spatial = tuple(x.shape[a] for a in spec.spatial_axes)
    zero = ((0, 0),) * spec.num_spatial
    return x, dataclasses.replace(spec, in_spatial=in_spatial, padding=zero, padding_mode="zeros")


def _add_bias(y: jax.Array, bias: jax.Array | None, channel_axis: int) -> jax.Array:
    if bias is None:
        return y
    shape = [1] * y.ndim
    shape[channel_axis] = bias.shape[0]
    return y + bias.astype(y.dtype).reshape(shape)


def _check_windowed(
    x: ArrayLike,
    kernel: ArrayLike,
    bias: ArrayLike | None,
    *,
    groups: int | None,
    strides: Any,
    padding: Any,
    dilation: Any,
    padding_mode: Any,
    data_format: Any,
    precision: Any,
    preferred_element_type: Any,
    kernel_name: str = "kernel",
    bias_name: str = "bias",
) -> ConvSpec:
    """Validates every argument of a depthwise (``groups=None``) or grouped conv."""
    spec = _spec.make_spec(
        x,
        kernel,
        groups=groups,
        strides=strides,
        padding=padding,
        dilation=dilation,
        padding_mode=padding_mode,
        data_format=data_format,
        kernel_name=kernel_name,
    )
    _spec.check_bias(bias, spec.out_channels, bias_name)
    _check_numerics(precision, preferred_element_type)
    return spec


def _run_windowed(
    spec: ConvSpec,
    x: ArrayLike,
    kernel: ArrayLike,
    bias: ArrayLike | None,
    *,
    impl: Impl | None,
    precision: PrecisionLike,
    preferred_element_type: Any,
) -> jax.Array:
    """Runs a validated conv: a depthwise kernel chosen by ``impl``, or (``None``) grouped."""
    x, kernel, bias = _promote(x, kernel, bias)
    x = x.reshape(spec.flat_shape(spec.in_spatial, spec.in_channels))
    x, spec_padded = _pad_mode(x, spec)
    run = _xla.conv if impl is None else functools.partial(_op.depthwise, impl=impl)
    y = run(
        x,
        kernel,
        spec_padded,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    y = _add_bias(y, bias, spec.channel_axis)
    return y.reshape(spec.output_shape())


def _run_pointwise(
    spec: PointwiseSpec,
    x: ArrayLike,
    kernel: ArrayLike,
    bias: ArrayLike | None,
    *,
    precision: PrecisionLike,
    preferred_element_type: Any,
) -> jax.Array:
    """Runs a validated pointwise conv."""
    x, kernel, bias = _promote(x, kernel, bias)
    # A 1x1 conv over the flattened positions: shows up as a pointwise conv (window 1,
    # one group) to `sepconv_jax.cost`, and XLA lowers it to a matrix multiply.
    # Channels-last positions go in the batch dim, which gives XLA:CPU a faster
    # kernel gradient (a plain contraction over the batch) than one long window.
    leading = math.prod(spec.leading_shape)
    if spec.channels_last:
        flat = x.reshape(leading, 1, spec.in_channels)
        dims = ("NWC", "WIO", "NWC")
    else:
        flat = x.reshape(leading, spec.in_channels, math.prod(spec.trailing_shape))
        dims = ("NCW", "WIO", "NCW")
    y = lax.conv_general_dilated(
        flat,
        kernel.reshape(1, spec.in_channels, spec.out_channels),
        window_strides=(1,),
        padding=((0, 0),),
        dimension_numbers=dims,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    y = _add_bias(y, bias, -1 if spec.channels_last else 1)
    return y.reshape(spec.output_shape())


def _run_separable(
    spec: ConvSpec,
    x: ArrayLike,
    depthwise_kernel: ArrayLike,
    pointwise_kernel: ArrayLike,
    bias: ArrayLike | None,
    *,
    impl: Impl,
    precision: PrecisionLike,
    preferred_element_type: Any,
) -> jax.Array:
    """A validated separable conv without depthwise bias: one separable primitive.

    Dtypes as in the two-step path: ``x`` and the depthwise kernel promoted to one
    dtype (the intermediate's), the pointwise kernel to the pointwise step's.
    """
    x, depthwise_kernel, _ = _promote(x, depthwise_kernel, None)
    pointwise_dtype = _compute_dtype(x, pointwise_kernel, bias)
    pointwise_kernel = jnp.asarray(pointwise_kernel, pointwise_dtype)
    x = x.reshape(spec.flat_shape(spec.in_spatial, spec.in_channels))
    x, spec_padded = _pad_mode(x, spec)
    y = _separable.separable(
        x,
        depthwise_kernel,
        pointwise_kernel,
        spec_padded,
        impl=impl,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if bias is not None:
        y = _add_bias(y, jnp.asarray(bias, pointwise_dtype), spec.channel_axis)
    out_channels = pointwise_kernel.shape[1]
    return y.reshape(dataclasses.replace(spec, out_channels=out_channels).output_shape())


# ----------------------------------------------------------------------------- public API


def depthwise_conv(
    x: ArrayLike,
    kernel: ArrayLike,
    *,
    strides: int | tuple[int, ...] = 1,
    padding: PaddingLike = "SAME",
    dilation: int | tuple[int, ...] = 1,
    padding_mode: PaddingMode = "zeros",
    data_format: DataFormat = "channels_last",
    bias: ArrayLike | None = None,
    precision: PrecisionLike = None,
    preferred_element_type: Any = None,
    impl: Impl = "auto",
) -> jax.Array:
    """Depthwise convolution: one filter bank per input channel, no channel mixing.

    Output channel ``c * M + m`` is input channel ``c`` convolved (cross-correlated,
    as in every deep-learning framework) with ``kernel[..., 0, c * M + m]``, where
    ``M`` is the depth multiplier. This is the ``lax`` / Flax / Haiku layout; Keras'
    ``(*window, C, M)`` kernel reshapes to it with ``kernel.reshape(*window, 1, C * M)``.

    Args:
      x: input, ``(*batch, *spatial, channels)``, or ``(*batch, channels, *spatial)``
        with ``data_format="channels_first"``. Zero or more batch dims.
      kernel: ``(*window, 1, channels * depth_multiplier)``; its rank (3, 4 or 5)
        sets the number of spatial dims (1, 2 or 3).
      strides: one int for every spatial dim, or one per dim.
      padding: ``"SAME"`` (output ``ceil(in / stride)``, odd padding at the end, as
        TensorFlow and ``lax``), ``"VALID"``, ``"CAUSAL"`` (all padding before, so
        output ``t`` sees only inputs up to ``t``), an int (the same on both sides of
        every dim, as PyTorch), one int per dim, or one ``(low, high)`` pair per dim.
        Strings are matched case-insensitively.
      dilation: kernel dilation, one int or one per dim.
      padding_mode: how padded positions are filled, with PyTorch's names:
        ``"zeros"``, ``"reflect"`` (mirror without repeating the edge), ``"replicate"``
        (repeat the edge) or ``"circular"`` (wrap around).
      data_format: ``"channels_last"`` or ``"channels_first"``.
      bias: optional ``(channels * depth_multiplier,)``, added to the output.
      precision: passed to ``lax.conv_general_dilated``.
      preferred_element_type: accumulation and output dtype, e.g. ``jnp.float32``
        for ``bfloat16`` inputs.
      impl: ``"auto"`` or a name from ``sepconv_jax.kernels.dispatch.IMPLS``.

    Returns:
      ``(*batch, *out_spatial, channels * depth_multiplier)`` (or channels-first).
      Inputs are promoted to one floating dtype, which is the output's unless
      ``preferred_element_type`` is given.

    Raises:
      ValueError: for shapes, channel counts, strides, dilations or paddings that
        do not fit together, and for unknown option strings.
      TypeError: for non-numeric arrays and arguments of the wrong type.

    Example:
      >>> import jax.numpy as jnp
      >>> from sepconv_jax import depthwise_conv
      >>> x = jnp.ones((2, 8, 8, 3))
      >>> kernel = jnp.ones((3, 3, 1, 6))  # depth multiplier 2
      >>> y = depthwise_conv(x, kernel, strides=2)
      >>> y.shape
      (2, 4, 4, 6)
      >>> float(y[0, 1, 1, 0])  # an interior 3x3 window of ones
      9.0
    """
    spec = _check_windowed(
        x,
        kernel,
        bias,
        groups=None,
        strides=strides,
        padding=padding,
        dilation=dilation,
        padding_mode=padding_mode,
        data_format=data_format,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return _run_windowed(
        spec,
        x,
        kernel,
        bias,
        impl=impl,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def grouped_conv(
    x: ArrayLike,
    kernel: ArrayLike,
    *,
    groups: int = 1,
    strides: int | tuple[int, ...] = 1,
    padding: PaddingLike = "SAME",
    dilation: int | tuple[int, ...] = 1,
    padding_mode: PaddingMode = "zeros",
    data_format: DataFormat = "channels_last",
    bias: ArrayLike | None = None,
    precision: PrecisionLike = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """Grouped convolution: channels split into ``groups``, each convolved on its own.

    ``groups=1`` is a standard convolution; ``groups=channels`` with
    ``out_channels = channels * M`` is :func:`depthwise_conv`. Output channels
    ``[g * O / groups, (g + 1) * O / groups)`` read input channels
    ``[g * C / groups, (g + 1) * C / groups)`` (the ``lax`` and PyTorch layout).

    Args:
      x: input, ``(*batch, *spatial, channels)`` or channels-first.
      kernel: ``(*window, channels // groups, out_channels)``.
      groups: number of feature groups; must divide ``channels`` and ``out_channels``.
      strides, padding, dilation, padding_mode, data_format, precision,
        preferred_element_type: as in :func:`depthwise_conv`.
      bias: optional ``(out_channels,)``.

    Returns:
      ``(*batch, *out_spatial, out_channels)`` (or channels-first).

    Raises:
      ValueError: as :func:`depthwise_conv`, and when ``groups`` does not divide the
        channel counts or the kernel's in-dim is not ``channels // groups``.
      TypeError: as :func:`depthwise_conv`.

    Example:
      >>> import jax.numpy as jnp
      >>> from sepconv_jax import grouped_conv
      >>> x = jnp.ones((1, 5, 5, 4))
      >>> kernel = jnp.ones((3, 3, 2, 6))  # 2 groups of 2 input channels
      >>> y = grouped_conv(x, kernel, groups=2, padding="VALID")
      >>> y.shape, float(y[0, 0, 0, 0])
      ((1, 3, 3, 6), 18.0)
    """
    spec = _check_windowed(
        x,
        kernel,
        bias,
        groups=groups,
        strides=strides,
        padding=padding,
        dilation=dilation,
        padding_mode=padding_mode,
        data_format=data_format,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return _run_windowed(
        spec,
        x,
        kernel,
        bias,
        impl=None,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def pointwise_conv(
    x: ArrayLike,
    kernel: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    data_format: DataFormat = "channels_last",
    num_spatial_dims: int | None = None,
    precision: PrecisionLike = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """Pointwise (1x1) convolution: mixes channels at every position independently.

    Args:
      x: input, ``(*batch, *spatial, in_channels)``, or channels-first
        ``(*batch, in_channels, *spatial)``.
      kernel: ``(in_channels, out_channels)``.
      bias: optional ``(out_channels,)``.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      num_spatial_dims: how many trailing dims of a channels-first ``x`` are spatial.
        ``None`` means ``x.ndim - 2``: one leading batch dim, as in PyTorch and
        Keras. Channels-last input does not need it (the channels are last); when
        given it is checked against ``x``'s rank.
      precision, preferred_element_type: as in :func:`depthwise_conv`.

    Returns:
      ``x`` with its channel dim replaced by ``out_channels``.

    Raises:
      ValueError: when ``kernel`` is not 2-D or its in-dim does not match the channels.
      TypeError: for non-numeric arrays and arguments of the wrong type.

    Example:
      >>> import jax.numpy as jnp
      >>> from sepconv_jax import pointwise_conv
      >>> x = jnp.ones((2, 4, 4, 3))
      >>> y = pointwise_conv(x, jnp.ones((3, 5)), bias=jnp.arange(5.0))
      >>> y.shape, y[0, 0, 0].tolist()
      ((2, 4, 4, 5), [3.0, 4.0, 5.0, 6.0, 7.0])
    """
    _check_numerics(precision, preferred_element_type)
    spec = _spec.pointwise_spec(
        x, kernel, bias, data_format=data_format, num_spatial_dims=num_spatial_dims
    )
    return _run_pointwise(
        spec,
        x,
        kernel,
        bias,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def separable_conv(
    x: ArrayLike,
    depthwise_kernel: ArrayLike,
    pointwise_kernel: ArrayLike,
    *,
    strides: int | tuple[int, ...] = 1,
    padding: PaddingLike = "SAME",
    dilation: int | tuple[int, ...] = 1,
    padding_mode: PaddingMode = "zeros",
    data_format: DataFormat = "channels_last",
    depthwise_bias: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    precision: PrecisionLike = None,
    preferred_element_type: Any = None,
    impl: Impl = "auto",
) -> jax.Array:
    """Depthwise separable convolution: :func:`pointwise_conv` after :func:`depthwise_conv`.

    This is the Keras / Xception ``SeparableConv`` (spatial filtering per channel,
    then a 1x1 channel mix), not Haiku's spatially separable ``SeparableDepthwiseConv2D``.
    Per output position it costs ``k^d * C * M + C * M * N`` mult-adds instead of a
    standard convolution's ``k^d * C * N``.

    Without ``depthwise_bias`` the layer is one operation, linear in each of ``x``
    and the two kernels (:mod:`sepconv_jax.kernels.separable`), which runs either as
    the two steps or as one fused kernel that keeps the intermediate on chip
    (:mod:`sepconv_jax.kernels.pallas_fused`): ``impl="fused"`` asks for the fused
    kernel (GPU through Pallas/Triton; on CPU Pallas' interpret mode, slow and meant
    for tests; TPU and complex dtypes run the two steps), ``"auto"`` follows
    :func:`sepconv_jax.kernels.dispatch.fuse_separable`, which picks the two steps
    everywhere for now. With a ``depthwise_bias`` the layer is affine and always runs
    as the two steps.

    Args:
      x: input, ``(*batch, *spatial, channels)`` or channels-first.
      depthwise_kernel: ``(*window, 1, channels * depth_multiplier)``.
      pointwise_kernel: ``(channels * depth_multiplier, out_channels)``.
      strides, padding, dilation, padding_mode, data_format, precision: as in
        :func:`depthwise_conv`; the window options apply to the depthwise step.
      depthwise_bias: optional ``(channels * depth_multiplier,)``, added between the steps.
      bias: optional ``(out_channels,)``, added to the output.
      preferred_element_type: accumulation dtype of both steps and the output's
        dtype. In the two steps, the intermediate is cast back to the inputs' dtype
        between them, as two stacked layers would do under mixed precision. The
        fused kernel accumulates the depthwise step in float32 and keeps that
        float32 intermediate for the matrix multiply (at ``precision``), rounding
        only the output: for bfloat16 inputs it is the more accurate of the two.
      impl: ``"auto"``, ``"fused"``, or a depthwise kernel name from
        ``sepconv_jax.kernels.dispatch.IMPLS`` (the two steps with that kernel).

    Returns:
      ``(*batch, *out_spatial, out_channels)`` (or channels-first).

    Raises:
      ValueError: as :func:`depthwise_conv`, and when ``pointwise_kernel``'s in-dim
        is not the depthwise step's output channels.
      TypeError: as :func:`depthwise_conv`.

    Example:
      >>> import jax.numpy as jnp
      >>> from sepconv_jax import separable_conv
      >>> x = jnp.ones((1, 6, 6, 4))
      >>> y = separable_conv(x, jnp.ones((3, 3, 1, 4)), jnp.ones((4, 8)), padding="VALID")
      >>> y.shape, float(y[0, 0, 0, 0])  # 4 channels x 9 taps
      ((1, 4, 4, 8), 36.0)
    """
    spec = _check_windowed(
        x,
        depthwise_kernel,
        depthwise_bias,
        groups=None,
        strides=strides,
        padding=padding,
        dilation=dilation,
        padding_mode=padding_mode,
        data_format=data_format,
        precision=precision,
        preferred_element_type=preferred_element_type,
        kernel_name="depthwise_kernel",
        bias_name="depthwise_bias",
    )
    pointwise = _spec.pointwise_after(spec, pointwise_kernel, bias)
    kwargs: dict[str, Any] = {
        "impl": impl,
        "precision": precision,
        "preferred_element_type": preferred_element_type,
    }
    if depthwise_bias is None:
        return _run_separable(spec, x, depthwise_kernel, pointwise_kernel, bias, **kwargs)
    return _run_biased_pair(
        spec, x, depthwise_kernel, pointwise_kernel, bias, pointwise, depthwise_bias, **kwargs
    )


def _run_biased_pair(
    spec: ConvSpec,
    x: ArrayLike,
    depthwise_kernel: ArrayLike,
    pointwise_kernel: ArrayLike,
    bias: ArrayLike | None,
    pointwise: PointwiseSpec,
    depthwise_bias: ArrayLike,
    *,
    impl: Impl,
    precision: PrecisionLike,
    preferred_element_type: Any,
) -> jax.Array:
    """A separable layer with a depthwise bias: affine, not multilinear, so the two steps."""
    compute_dtype = _compute_dtype(x, depthwise_kernel, depthwise_bias)
    y = _run_windowed(
        spec,
        x,
        depthwise_kernel,
        depthwise_bias,
        impl=impl,
        precision=precision,
        preferred_element_type=preferred_element_type,
    ).astype(compute_dtype)
    return _run_pointwise(
        pointwise,
        y,
        pointwise_kernel,
        bias,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
