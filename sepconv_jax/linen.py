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

Model parallelism (opt-in): ``channel_axis``, ``in_axis`` and ``out_axis`` name mesh
axes to shard parameters over, attached with :func:`flax.linen.with_partitioning`
(``nn.get_partition_spec(variables)`` reads them back). A depthwise layer sharded
over channels computes each shard from its own channels alone; a pointwise layer
sharded over its output channels needs its whole input (replicated), one sharded over
its input channels ends in one reduction. By default no parameter is annotated.
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


def _param(
    module: nn.Module, name: str, init: Any, shape: tuple[int, ...], axes: dict[int, str | None]
) -> jax.Array:
    """The parameter ``name`` from ``init``, its dims ``{dim: mesh axis}`` annotated."""
    names = _layers.partition_names(len(shape), axes)
    init = init if names is None else nn.with_partitioning(init, names)
    return module.param(name, init, shape, module.param_dtype)


def _apply(
    module: DepthwiseConv | SeparableConv,
    x: ArrayLike,
    kernels: _layers.Kernels,
    opts: WindowOptions,
    decode: bool,
) -> jax.Array:
    """A windowed layer on the whole input, or (``decode``) on a stream's next chunk."""
    options: dict[str, Any] = {"impl": module.impl, "precision": module.precision}
    if not decode:
        return _layers.window_forward(x, kernels, opts, **options)
    kernel_name = "kernel" if kernels[2] is None else "depthwise_kernel"
    buffer = _stream_cache(module, x, kernels[0], opts, kernel_name)
    y, new_buffer = _layers.window_step(buffer.value, x, kernels, opts, **options)
    if not module.is_initializing():  # `init` leaves the cache at zeros, as flax's attention
        buffer.value = new_buffer
    return y


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
      channel_axis: mesh axis to shard the kernel's and bias's channels over
        (model parallelism); ``None`` (default) annotates nothing.

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
    channel_axis: str | None = None

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
        _layers.check_axis(self.channel_axis, "channel_axis")

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
        axis = self.channel_axis
        kernel = _param(self, "kernel", self.depthwise_init, shape, {-1: axis})
        bias = None
        if self.use_bias:
            bias = _param(self, "bias", self.bias_init, (shape[-1],), {0: axis})
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        return _apply(self, x, (kernel, bias, None, None), opts, decode)


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
      in_axis: mesh axis to shard the kernel's input channels over; ``None``
        (default) annotates nothing.
      out_axis: mesh axis to shard the kernel's output channels (and the bias) over.

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
    in_axis: str | None = None
    out_axis: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _spec.check_positive_int(self.features, "features")
        _layers.check_axis(self.in_axis, "in_axis")
        _layers.check_axis(self.out_axis, "out_axis")
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
        axes = {0: self.in_axis, 1: self.out_axis}
        kernel = _param(self, "kernel", self.pointwise_init, (channels, self.features), axes)
        bias = None
        if self.use_bias:
            bias = _param(self, "bias", self.bias_init, (self.features,), {0: self.out_axis})
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
      channel_axis: mesh axis to shard the depthwise channels over (the depthwise
        kernel and bias, the pointwise kernel's input dim); ``None`` (default)
        annotates nothing.
      out_axis: mesh axis to shard the output channels over (the pointwise kernel's
        output dim, the bias).

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
    channel_axis: str | None = None
    out_axis: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _spec.check_positive_int(self.features, "features")
        _layers.check_axis(self.channel_axis, "channel_axis")
        _layers.check_axis(self.out_axis, "out_axis")
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
        c_axis, o_axis = self.channel_axis, self.out_axis
        dw_kernel = _param(self, "depthwise_kernel", self.depthwise_init, dw_shape, {-1: c_axis})
        pw_shape = (mid, self.features)
        pw_kernel = _param(
            self, "pointwise_kernel", self.pointwise_init, pw_shape, {0: c_axis, 1: o_axis}
        )
        dw_bias = None
        if self.use_depthwise_bias:
            dw_bias = _param(self, "depthwise_bias", self.bias_init, (mid,), {0: c_axis})
        bias = None
        if self.use_bias:
            bias = _param(self, "bias", self.bias_init, (self.features,), {0: o_axis})
        x, dw_kernel, pw_kernel, dw_bias, bias = promote_dtype(
            x, dw_kernel, pw_kernel, dw_bias, bias, dtype=self.dtype
        )
        return _apply(self, x, (dw_kernel, dw_bias, pw_kernel, bias), opts, decode)
