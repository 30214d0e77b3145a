"""Flax linen modules: :class:`DepthwiseConv`, :class:`PointwiseConv`, :class:`SeparableConv`.

The modules own parameters and call the pure functions in :mod:`sepconv_jax.ops`;
they accept the same inputs (channels-last or channels-first, 1, 2 or 3 spatial
dims set by ``len(kernel_size)``, any number of leading batch dims). Like
``flax.linen.Conv``, the input channel count is read from the input on the first
call. Options are checked when the module is constructed, so a bad argument fails
where it is written, not inside ``init``.

Parameter names and shapes are part of the public API:

================  ===========================================  ==========================
module            parameter                                    shape
================  ===========================================  ==========================
DepthwiseConv     ``kernel``, ``bias``                         ``(*window, 1, C * M)``,
                                                               ``(C * M,)``
PointwiseConv     ``kernel``, ``bias``                         ``(C_in, C_out)``,
                                                               ``(C_out,)``
SeparableConv     ``depthwise_kernel``, ``pointwise_kernel``,  ``(*window, 1, C * M)``,
                  ``bias``, ``depthwise_bias`` (if enabled)    ``(C * M, C_out)``,
                                                               ``(C_out,)``, ``(C * M,)``
================  ===========================================  ==========================

``M`` is ``depth_multiplier``; depthwise output channel ``c * M + m`` reads input
channel ``c``.

Streaming: a :class:`DepthwiseConv` or :class:`SeparableConv` with
``padding="CAUSAL"`` runs on a stream chunk by chunk with ``decode=True``, in Flax's
convention for incremental decoding: ``module.apply(variables, chunk, decode=True,
mutable=["cache"])`` returns the chunk's outputs and the updated ``"cache"``
collection (the last ``(k - 1) * d`` input frames, :mod:`sepconv_jax.streaming`),
created as zeros (the causal padding) on the first call; pass it back with the
parameters on the next call. Joined along time, the outputs equal the offline call
on the whole sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax.typing import ArrayLike

from sepconv_jax import _layers, _spec, ops
from sepconv_jax._spec import DataFormat, PaddingLike, PaddingMode, WindowOptions
from sepconv_jax.kernels.dispatch import Impl
from sepconv_jax.ops import PrecisionLike

__all__ = ["DepthwiseConv", "PointwiseConv", "SeparableConv"]


def _stream_cache(
    module: DepthwiseConv | SeparableConv,
    x: ArrayLike,
    kernel: ArrayLike,
    opts: WindowOptions,
    kernel_name: str,
) -> Any:
    """The module's ``"cache"`` buffer, zeros on the first call, checked against ``x``."""
    owner = type(module).__name__
    _layers.check_decode(opts, owner)
    if not module.is_mutable_collection("cache"):
        raise ValueError(
            f"`decode=True` reads and updates the {owner}'s `cache` collection, which this call "
            f"cannot change: call `apply(variables, x, decode=True, mutable=['cache'])`, and pass "
            f"the returned cache back with the parameters on the next call (the first call "
            f"creates it as zeros, the causal padding)"
        )
    dtype = _spec.stream_dtype(x, "x")
    buffer = module.variable("cache", "buffer", _layers.zero_buffer, x, opts, dtype)
    _layers.check_stream(x, kernel, buffer.value, opts, owner, kernel_name)
    return buffer


def _window_options(module: DepthwiseConv | SeparableConv) -> WindowOptions:
    """Validated, canonical window options of a module (plain function: safe in __post_init__)."""
    opts = _spec.window_options(
        kernel_size=module.kernel_size,
        strides=module.strides,
        padding=module.padding,
        padding_mode=module.padding_mode,
        kernel_dilation=module.kernel_dilation,
        depth_multiplier=module.depth_multiplier,
        data_format=module.data_format,
    )
    _layers.check_impl(module.impl)
    return opts


class DepthwiseConv(nn.Module):
    """Depthwise convolution: one filter bank per input channel, no channel mixing.

    Computes :func:`sepconv_jax.depthwise_conv` with a ``kernel`` of shape
    ``(*kernel_size, 1, C * depth_multiplier)`` created on the first call from the
    input's channel count ``C``. Parameter count: ``prod(kernel_size) * C * M``
    plus ``C * M`` for the bias.

    Attributes:
      kernel_size: window shape, one int per spatial dim, e.g. ``(3, 3)``; its
        length (1, 2 or 3) sets the number of spatial dims. A bare int is rejected
        because inputs may carry extra batch dims.
      strides: one int for all spatial dims or one per dim.
      padding: ``"SAME"`` (default; TensorFlow / Keras semantics), ``"VALID"``,
        ``"CAUSAL"``, an int (PyTorch style, both sides), one int per dim or one
        ``(low, high)`` pair per dim.
      padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
      kernel_dilation: one int or one per dim.
      depth_multiplier: output channels per input channel, ``M``.
      use_bias: whether to add a ``(C * M,)`` bias.
      data_format: ``"channels_last"`` (default) or ``"channels_first"``.
      dtype: computation dtype; ``None`` promotes the input and parameters.
      param_dtype: dtype the parameters are created in.
      precision: passed to the convolution, e.g. ``"highest"``.
      impl: depthwise implementation, ``"auto"`` or a name from
        ``sepconv_jax.kernels.dispatch.IMPLS``.
      depthwise_init: kernel initializer. The default is LeCun normal with the
        depthwise fan-in ``prod(kernel_size)`` (each output reads one channel's
        window), so unit-variance inputs give unit-variance outputs at init.
      bias_init: bias initializer (zeros).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.linen import DepthwiseConv
      >>> layer = DepthwiseConv(kernel_size=(3, 3), depth_multiplier=2, strides=2)
      >>> x = jnp.ones((4, 16, 16, 8))
      >>> variables = layer.init(jax.random.key(0), x)
      >>> variables["params"]["kernel"].shape, variables["params"]["bias"].shape
      ((3, 3, 1, 16), (16,))
      >>> layer.apply(variables, x).shape
      (4, 8, 8, 16)

      Streaming a causal layer, one frame at a time:

      >>> layer = DepthwiseConv(kernel_size=(3,), padding="CAUSAL")
      >>> x = jnp.arange(5.0).reshape(1, 5, 1)  # (batch, time, channels)
      >>> params = layer.init(jax.random.key(0), x)["params"]
      >>> variables, ys = {"params": params}, []
      >>> for t in range(5):
      ...     y, cache = layer.apply(variables, x[:, t : t + 1], decode=True, mutable=["cache"])
      ...     variables = {"params": params, **cache}
      ...     ys.append(y)
      >>> bool(jnp.allclose(jnp.concatenate(ys, axis=1), layer.apply({"params": params}, x)))
      True
    """

    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: PaddingLike = "SAME"
    padding_mode: PaddingMode = "zeros"
    kernel_dilation: int | Sequence[int] = 1
    depth_multiplier: int = 1
    use_bias: bool = True
    data_format: DataFormat = "channels_last"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: PrecisionLike = None
    impl: Impl = "auto"
    depthwise_init: _layers.Initializer = _layers.default_depthwise_init
    bias_init: _layers.Initializer = _layers.default_bias_init

    def __post_init__(self) -> None:
        super().__post_init__()
        _window_options(self)
        _layers.check_common(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            use_bias=self.use_bias,
        )
        _layers.check_initializer(self.depthwise_init, "depthwise_init")
        _layers.check_initializer(self.bias_init, "bias_init")

    @nn.compact
    def __call__(self, x: ArrayLike, decode: bool = False) -> jax.Array:
        """Applies the layer, to a whole input or (``decode=True``) to a stream's next chunk.

        Args:
          x: ``(*batch, *spatial, C)``, or ``(*batch, C, *spatial)`` with
            ``data_format="channels_first"``. With ``decode=True``, a chunk of ``n >= 1``
            frames along time (the first spatial axis), ``n`` a multiple of the
            stride along time.
          decode: stream: read the last input frames from the ``"cache"``
            collection (zeros on the first call), update it, and return the outputs
            that complete inside the chunk. Needs ``padding="CAUSAL"`` and
            ``mutable=["cache"]`` in ``apply``.

        Returns:
          ``(*batch, *out_spatial, C * depth_multiplier)`` (or channels-first); with
          ``decode=True``, ``n / stride`` frames along time.

        Raises:
          ValueError: with ``decode=True``, for a non-causal layer, a cache this
            call cannot update, or a chunk that does not fit the cache or the stride.
        """
        _layers.check_bool(decode, "decode")
        opts = _window_options(self)
        channels = _spec.window_channels(x, opts, "DepthwiseConv")
        shape = opts.depthwise_kernel_shape(channels)
        kernel = self.param("kernel", self.depthwise_init, shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (shape[-1],), self.param_dtype)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        if not decode:
            return _layers.depthwise_forward(
                x, kernel, bias, opts, impl=self.impl, precision=self.precision
            )
        buffer = _stream_cache(self, x, kernel, opts, "kernel")
        y, new_buffer = _layers.depthwise_step(
            buffer.value, x, kernel, bias, opts, impl=self.impl, precision=self.precision
        )
        if not self.is_initializing():  # `init` leaves the cache at zeros, as flax's attention
            buffer.value = new_buffer
        return y


class PointwiseConv(nn.Module):
    """Pointwise (1x1) convolution: a channel mix at every position.

    Computes :func:`sepconv_jax.pointwise_conv` with a ``(C_in, features)``
    ``kernel``. Parameter count: ``C_in * features`` plus ``features`` for the bias.

    Attributes:
      features: output channels.
      use_bias: whether to add a ``(features,)`` bias.
      data_format: ``"channels_last"`` (default) or ``"channels_first"``.
      num_spatial_dims: for channels-first input, how many trailing dims are
        spatial; ``None`` means ``x.ndim - 2`` (one batch dim). Unused for
        channels-last input.
      dtype: computation dtype; ``None`` promotes the input and parameters.
      param_dtype: dtype the parameters are created in.
      precision: passed to the matrix multiply.
      pointwise_init: kernel initializer. The default is LeCun normal with fan-in
        ``C_in``, so unit-variance inputs give unit-variance outputs at init.
      bias_init: bias initializer (zeros).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.linen import PointwiseConv
      >>> layer = PointwiseConv(features=32)
      >>> x = jnp.ones((2, 8, 8, 16))
      >>> variables = layer.init(jax.random.key(0), x)
      >>> variables["params"]["kernel"].shape
      (16, 32)
      >>> layer.apply(variables, x).shape
      (2, 8, 8, 32)
    """

    features: int
    use_bias: bool = True
    data_format: DataFormat = "channels_last"
    num_spatial_dims: int | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: PrecisionLike = None
    pointwise_init: _layers.Initializer = _layers.default_pointwise_init
    bias_init: _layers.Initializer = _layers.default_bias_init

    def __post_init__(self) -> None:
        super().__post_init__()
        _spec.check_positive_int(self.features, "features")
        _layers.check_data_format(self.data_format)
        _spec.check_num_spatial_dims(self.num_spatial_dims)
        _layers.check_common(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            use_bias=self.use_bias,
        )
        _layers.check_initializer(self.pointwise_init, "pointwise_init")
        _layers.check_initializer(self.bias_init, "bias_init")

    @nn.compact
    def __call__(self, x: ArrayLike) -> jax.Array:
        """Applies the layer.

        Args:
          x: ``(*batch, *spatial, C_in)``, or ``(*batch, C_in, *spatial)`` with
            ``data_format="channels_first"``.

        Returns:
          ``x`` with its channel dim replaced by ``features``.
        """
        n = _spec.check_num_spatial_dims(self.num_spatial_dims)
        channels = _spec.pointwise_channels(x, self.data_format, n)
        kernel = self.param(
            "kernel", self.pointwise_init, (channels, self.features), self.param_dtype
        )
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        return ops.pointwise_conv(
            x,
            kernel,
            bias=bias,
            data_format=self.data_format,
            num_spatial_dims=n,
            precision=self.precision,
        )


class SeparableConv(nn.Module):
    """Depthwise separable convolution (Keras / Xception ``SeparableConv``).

    A depthwise convolution (``depthwise_kernel``, ``(*kernel_size, 1, C * M)``)
    followed by a pointwise one (``pointwise_kernel``, ``(C * M, features)``),
    computed by :func:`sepconv_jax.separable_conv`. Parameter count:
    ``prod(kernel_size) * C * M + C * M * features``, plus ``features`` with
    ``use_bias`` and ``C * M`` with ``use_depthwise_bias``.

    Attributes:
      features: output channels.
      kernel_size: window shape, one int per spatial dim, e.g. ``(3, 3)``.
      strides, padding, padding_mode, kernel_dilation, depth_multiplier,
        data_format, dtype, param_dtype, precision, impl: as in
        :class:`DepthwiseConv`; the window options apply to the depthwise step.
      use_bias: whether to add a ``(features,)`` bias to the output.
      use_depthwise_bias: whether to add a ``(C * M,)`` bias between the steps
        (default ``False``, as Keras ``SeparableConv2D``).
      depthwise_init: LeCun normal with fan-in ``prod(kernel_size)`` by default.
      pointwise_init: LeCun normal with fan-in ``C * M`` by default. Together they
        keep unit-variance inputs at unit variance through both steps at init.
      bias_init: initializer of both biases (zeros).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.linen import SeparableConv
      >>> layer = SeparableConv(features=32, kernel_size=(3, 3))
      >>> x = jnp.ones((2, 8, 8, 16))
      >>> params = layer.init(jax.random.key(0), x)["params"]
      >>> {name: params[name].shape for name in sorted(params)}
      {'bias': (32,), 'depthwise_kernel': (3, 3, 1, 16), 'pointwise_kernel': (16, 32)}
      >>> layer.apply({"params": params}, x).shape
      (2, 8, 8, 32)
    """

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: PaddingLike = "SAME"
    padding_mode: PaddingMode = "zeros"
    kernel_dilation: int | Sequence[int] = 1
    depth_multiplier: int = 1
    use_bias: bool = True
    use_depthwise_bias: bool = False
    data_format: DataFormat = "channels_last"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: PrecisionLike = None
    impl: Impl = "auto"
    depthwise_init: _layers.Initializer = _layers.default_depthwise_init
    pointwise_init: _layers.Initializer = _layers.default_pointwise_init
    bias_init: _layers.Initializer = _layers.default_bias_init

    def __post_init__(self) -> None:
        super().__post_init__()
        _spec.check_positive_int(self.features, "features")
        _window_options(self)
        _layers.check_common(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            use_bias=self.use_bias,
        )
        _layers.check_bool(self.use_depthwise_bias, "use_depthwise_bias")
        _layers.check_initializer(self.depthwise_init, "depthwise_init")
        _layers.check_initializer(self.pointwise_init, "pointwise_init")
        _layers.check_initializer(self.bias_init, "bias_init")

    @nn.compact
    def __call__(self, x: ArrayLike, decode: bool = False) -> jax.Array:
        """Applies the layer, to a whole input or (``decode=True``) to a stream's next chunk.

        Args:
          x: ``(*batch, *spatial, C)``, or ``(*batch, C, *spatial)`` with
            ``data_format="channels_first"``. With ``decode=True``, a chunk of ``n >= 1``
            frames along time (the first spatial axis), ``n`` a multiple of the
            stride along time.
          decode: stream, as :class:`DepthwiseConv` does: the ``"cache"`` collection
            holds the last ``(k - 1) * d`` input frames.

        Returns:
          ``(*batch, *out_spatial, features)`` (or channels-first); with
          ``decode=True``, ``n / stride`` frames along time.

        Raises:
          ValueError: with ``decode=True``, for a non-causal layer, a cache this
            call cannot update, or a chunk that does not fit the cache or the stride.
        """
        _layers.check_bool(decode, "decode")
        opts = _window_options(self)
        channels = _spec.window_channels(x, opts, "SeparableConv")
        dw_shape = opts.depthwise_kernel_shape(channels)
        mid = dw_shape[-1]
        dw_kernel = self.param("depthwise_kernel", self.depthwise_init, dw_shape, self.param_dtype)
        pw_kernel = self.param(
            "pointwise_kernel", self.pointwise_init, (mid, self.features), self.param_dtype
        )
        dw_bias = None
        if self.use_depthwise_bias:
            dw_bias = self.param("depthwise_bias", self.bias_init, (mid,), self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, dw_kernel, pw_kernel, dw_bias, bias = promote_dtype(
            x, dw_kernel, pw_kernel, dw_bias, bias, dtype=self.dtype
        )
        if not decode:
            return _layers.separable_forward(
                x,
                dw_kernel,
                pw_kernel,
                dw_bias,
                bias,
                opts,
                impl=self.impl,
                precision=self.precision,
            )
        buffer = _stream_cache(self, x, dw_kernel, opts, "depthwise_kernel")
        y, new_buffer = _layers.separable_step(
            buffer.value,
            x,
            dw_kernel,
            pw_kernel,
            dw_bias,
            bias,
            opts,
            impl=self.impl,
            precision=self.precision,
        )
        if not self.is_initializing():  # `init` leaves the cache at zeros, as flax's attention
            buffer.value = new_buffer
        return y
