"""Flax NNX modules: :class:`DepthwiseConv`, :class:`PointwiseConv`, :class:`SeparableConv`.

The same layers as :mod:`sepconv_jax.linen`, with the same argument names,
defaults, parameter names and shapes, in the ``flax.nnx`` style of
``flax.nnx.Conv``: ``in_features`` comes first, options are keyword-only, and
``rngs=`` is required. Parameters are created in ``__init__``, so every option
and the input channel count are checked when the module is built.

Given the same parameters, a module here and its :mod:`sepconv_jax.linen`
counterpart compute the same function (both call :mod:`sepconv_jax.ops`).

Streaming: a :class:`DepthwiseConv` or :class:`SeparableConv` with
``padding="CAUSAL"`` runs on a stream chunk by chunk, as ``nnx.MultiHeadAttention``
decodes: ``layer.init_cache(input_shape)`` creates its ``buffer`` (an
``nnx.Cache`` of the last ``(k - 1) * d`` input frames, zeros: the causal padding),
and ``layer(chunk, decode=True)`` reads and updates it (:mod:`sepconv_jax.streaming`).
Joined along time, the outputs equal the offline call on the whole sequence.

Model parallelism (opt-in): ``channel_axis``, ``in_axis`` and ``out_axis`` name mesh
axes to shard parameters over, attached with :func:`flax.nnx.with_partitioning` (the
parameters' sharding metadata; ``nnx.get_partition_spec`` reads it). Flax places
annotated parameters when they are created, so build such a module under
``jax.set_mesh(mesh)``. By default no parameter is annotated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype
from jax.typing import ArrayLike

from sepconv_jax import _layers, _spec, ops
from sepconv_jax._spec import (
    DataFormat,
    PaddingLike,
    PaddingMode,
    PaddingPairs,
    PaddingString,
    WindowOptions,
)
from sepconv_jax.kernels.dispatch import Impl
from sepconv_jax.ops import PrecisionLike

__all__ = ["DepthwiseConv", "PointwiseConv", "SeparableConv"]


def _param(
    init: _layers.Initializer,
    rngs: nnx.Rngs,
    shape: tuple[int, ...],
    dtype: Any,
    axes: dict[int, str | None],
    use: bool = True,
) -> Any:
    """A parameter from ``init`` (``nnx.data(None)`` unless ``use``), its dims
    ``{dim: mesh axis}`` carried as sharding metadata."""
    if not use:
        return nnx.data(None)
    names = _layers.partition_names(len(shape), axes)
    if names is not None:
        init = nnx.with_partitioning(init, names)
    return nnx.Param(init(rngs.params(), shape, dtype))


def _check_in_features(channels: int, in_features: int, owner: str) -> None:
    if channels != in_features:
        raise ValueError(
            f"`x` has {channels} channels but this {owner} was built with "
            f"in_features={in_features}; build it with in_features={channels} or fix the input"
        )


class _Windowed(nnx.Module):
    """A layer with a spatial window: its options, canonical, as public attributes."""

    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: PaddingString | PaddingPairs
    padding_mode: PaddingMode
    kernel_dilation: tuple[int, ...]
    depth_multiplier: int
    data_format: DataFormat
    impl: Impl
    precision: PrecisionLike
    in_features: int
    buffer: nnx.Cache[jax.Array] | None
    _options: WindowOptions

    def init_cache(self, input_shape: Sequence[int], dtype: Any = jnp.float32) -> None:
        """Creates the stream's cache: the ``buffer`` ``nnx.Cache``, zeros (the causal padding).

        Call it before the first ``__call__(x, decode=True)``, and again to start a
        new stream.

        Args:
          input_shape: the shape of a chunk, ``(*batch, n, *rest, in_features)`` (or
            channels-first); its length ``n`` along time does not matter.
          dtype: the dtype the layer computes in (the inputs' and parameters'
            promoted dtype, or ``dtype`` when set).

        Raises:
          ValueError: for a layer without ``padding="CAUSAL"``, or a shape that does
            not fit it.
          TypeError: for a shape that is not a sequence of ints, or a bad dtype.
        """
        owner = type(self).__name__
        _layers.check_decode(self._options, owner)
        if not isinstance(input_shape, Sequence) or not all(_spec.is_int(v) for v in input_shape):
            raise TypeError(
                f"`input_shape` must be a sequence of ints, the shape of a chunk, got "
                f"{input_shape!r}"
            )
        chunk = jax.ShapeDtypeStruct(tuple(int(v) for v in input_shape), dtype)
        channels = _spec.window_channels(chunk, self._options, owner)
        _check_in_features(channels, self.in_features, owner)
        self.buffer = nnx.Cache(_layers.zero_buffer(chunk, self._options, dtype))

    def _stream_cache(
        self, x: ArrayLike, kernel: ArrayLike, kernel_name: str
    ) -> nnx.Cache[jax.Array]:
        """The cache, checked against the chunk ``x``."""
        owner = type(self).__name__
        _layers.check_decode(self._options, owner)
        cache = self.buffer
        if cache is None:
            raise ValueError(
                f"`decode=True` needs the {owner}'s cache: call `init_cache(input_shape)` "
                f"with the shape of a chunk before streaming"
            )
        _layers.check_stream(x, kernel, cache[...], self._options, owner, kernel_name)
        return cache

    def _apply(self, x: ArrayLike, kernels: _layers.Kernels, decode: bool) -> jax.Array:
        """The layer on the whole input, or (``decode``) on a stream's next chunk."""
        options: dict[str, Any] = {"impl": self.impl, "precision": self.precision}
        if not decode:
            return _layers.window_forward(x, kernels, self._options, **options)
        kernel_name = "kernel" if kernels[2] is None else "depthwise_kernel"
        cache = self._stream_cache(x, kernels[0], kernel_name)
        y, cache[...] = _layers.window_step(cache[...], x, kernels, self._options, **options)
        return y

    def _store_window_options(self, opts: WindowOptions, impl: Impl) -> None:
        self.kernel_size = opts.window
        self.strides = opts.strides
        self.padding = opts.padding
        self.padding_mode = opts.padding_mode
        self.kernel_dilation = opts.dilation
        self.depth_multiplier = opts.depth_multiplier
        self.data_format = opts.data_format
        self.impl = impl
        self._options = opts
        self.buffer = nnx.data(None)


class DepthwiseConv(_Windowed):
    """Depthwise convolution: one filter bank per input channel, no channel mixing.

    Computes :func:`sepconv_jax.depthwise_conv` with a ``kernel`` of shape
    ``(*kernel_size, 1, in_features * depth_multiplier)``. Parameter count:
    ``prod(kernel_size) * C * M`` plus ``C * M`` for the bias.

    Args:
      in_features: input channels ``C``.
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
        (sharding metadata; build under ``jax.set_mesh``); ``None`` (default) adds none.
      rngs: random number streams; ``rngs.params()`` seeds the initializers.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from sepconv_jax.nnx import DepthwiseConv
      >>> layer = DepthwiseConv(8, (3, 3), depth_multiplier=2, strides=2, rngs=nnx.Rngs(0))
      >>> layer.kernel.shape, layer.bias.shape
      ((3, 3, 1, 16), (16,))
      >>> layer(jnp.ones((4, 16, 16, 8))).shape
      (4, 8, 8, 16)

      Streaming a causal layer, one frame at a time:

      >>> layer = DepthwiseConv(1, (3,), padding="CAUSAL", rngs=nnx.Rngs(0))
      >>> x = jnp.arange(5.0).reshape(1, 5, 1)  # (batch, time, channels)
      >>> layer.init_cache((1, 1, 1))
      >>> ys = [layer(x[:, t : t + 1], decode=True) for t in range(5)]
      >>> bool(jnp.allclose(jnp.concatenate(ys, axis=1), layer(x)))
      True
    """

    def __init__(
        self,
        in_features: int,
        kernel_size: Sequence[int],
        *,
        strides: int | Sequence[int] = 1,
        padding: PaddingLike = "SAME",
        padding_mode: PaddingMode = "zeros",
        kernel_dilation: int | Sequence[int] = 1,
        depth_multiplier: int = 1,
        use_bias: bool = True,
        data_format: DataFormat = "channels_last",
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: PrecisionLike = None,
        impl: Impl = "auto",
        depthwise_init: _layers.Initializer = _layers.default_depthwise_init,
        bias_init: _layers.Initializer = _layers.default_bias_init,
        channel_axis: str | None = None,
        rngs: nnx.Rngs,
    ):
        in_features = _spec.check_positive_int(in_features, "in_features")
        axis = _layers.check_axis(channel_axis, "channel_axis")
        opts = _spec.window_options(
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            padding_mode=padding_mode,
            kernel_dilation=kernel_dilation,
            depth_multiplier=depth_multiplier,
            data_format=data_format,
        )
        impl = _layers.check_impl(impl)
        _layers.check_common(
            dtype=dtype, param_dtype=param_dtype, precision=precision, use_bias=use_bias
        )
        _layers.check_initializer(depthwise_init, "depthwise_init")
        _layers.check_initializer(bias_init, "bias_init")

        shape = opts.depthwise_kernel_shape(in_features)
        self.kernel = _param(depthwise_init, rngs, shape, param_dtype, {-1: axis})
        self.bias: nnx.Param | None = _param(
            bias_init, rngs, (shape[-1],), param_dtype, {0: axis}, use_bias
        )

        self.in_features = in_features
        self._store_window_options(opts, impl)
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision

    def __call__(self, x: ArrayLike, decode: bool = False) -> jax.Array:
        """Applies the layer, to a whole input or (``decode=True``) to a stream's next chunk.

        Args:
          x: ``(*batch, *spatial, in_features)``, or ``(*batch, in_features,
            *spatial)`` with ``data_format="channels_first"``. With ``decode=True``,
            a chunk of ``n >= 1`` frames along time (the first spatial axis), ``n`` a
            multiple of the stride along time.
          decode: stream: read the last input frames from ``buffer`` (made by
            :meth:`init_cache`), update it, and return the outputs that complete
            inside the chunk. Needs ``padding="CAUSAL"``.

        Returns:
          ``(*batch, *out_spatial, in_features * depth_multiplier)`` (or
          channels-first); with ``decode=True``, ``n / stride`` frames along time.

        Raises:
          ValueError: with ``decode=True``, for a non-causal layer, a missing cache,
            or a chunk that does not fit the cache or the stride.
        """
        _layers.check_bool(decode, "decode")
        channels = _spec.window_channels(x, self._options, "DepthwiseConv")
        _check_in_features(channels, self.in_features, "DepthwiseConv")
        bias = None if self.bias is None else self.bias[...]
        x, kernel, bias = promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
        return self._apply(x, (kernel, bias, None, None), decode)


class PointwiseConv(nnx.Module):
    """Pointwise (1x1) convolution: a channel mix at every position.

    Computes :func:`sepconv_jax.pointwise_conv` with an ``(in_features,
    out_features)`` ``kernel``. Parameter count: ``in_features * out_features``
    plus ``out_features`` for the bias.

    Args:
      in_features: input channels.
      out_features: output channels.
      use_bias: whether to add an ``(out_features,)`` bias.
      data_format: ``"channels_last"`` (default) or ``"channels_first"``.
      num_spatial_dims: for channels-first input, how many trailing dims are
        spatial; ``None`` means ``x.ndim - 2`` (one batch dim). Unused for
        channels-last input.
      dtype: computation dtype; ``None`` promotes the input and parameters.
      param_dtype: dtype the parameters are created in.
      precision: passed to the matrix multiply.
      pointwise_init: kernel initializer. The default is LeCun normal with fan-in
        ``in_features``, so unit-variance inputs give unit-variance outputs at init.
      bias_init: bias initializer (zeros).
      in_axis: mesh axis to shard the kernel's input channels over; ``None`` (default)
        adds no sharding metadata.
      out_axis: mesh axis to shard the kernel's output channels (and the bias) over.
      rngs: random number streams; ``rngs.params()`` seeds the initializers.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from sepconv_jax.nnx import PointwiseConv
      >>> layer = PointwiseConv(16, 32, rngs=nnx.Rngs(0))
      >>> layer.kernel.shape
      (16, 32)
      >>> layer(jnp.ones((2, 8, 8, 16))).shape
      (2, 8, 8, 32)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        data_format: DataFormat = "channels_last",
        num_spatial_dims: int | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: PrecisionLike = None,
        pointwise_init: _layers.Initializer = _layers.default_pointwise_init,
        bias_init: _layers.Initializer = _layers.default_bias_init,
        in_axis: str | None = None,
        out_axis: str | None = None,
        rngs: nnx.Rngs,
    ):
        in_features = _spec.check_positive_int(in_features, "in_features")
        out_features = _spec.check_positive_int(out_features, "out_features")
        in_axis = _layers.check_axis(in_axis, "in_axis")
        out_axis = _layers.check_axis(out_axis, "out_axis")
        data_format = _layers.check_data_format(data_format)
        num_spatial_dims = _spec.check_num_spatial_dims(num_spatial_dims)
        _layers.check_common(
            dtype=dtype, param_dtype=param_dtype, precision=precision, use_bias=use_bias
        )
        _layers.check_initializer(pointwise_init, "pointwise_init")
        _layers.check_initializer(bias_init, "bias_init")

        shape = (in_features, out_features)
        self.kernel = _param(pointwise_init, rngs, shape, param_dtype, {0: in_axis, 1: out_axis})
        self.bias: nnx.Param | None = _param(
            bias_init, rngs, (out_features,), param_dtype, {0: out_axis}, use_bias
        )

        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.data_format = data_format
        self.num_spatial_dims = num_spatial_dims
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Applies the layer.

        Args:
          x: ``(*batch, *spatial, in_features)``, or ``(*batch, in_features,
            *spatial)`` with ``data_format="channels_first"``.

        Returns:
          ``x`` with its channel dim replaced by ``out_features``.
        """
        channels = _spec.pointwise_channels(x, self.data_format, self.num_spatial_dims)
        _check_in_features(channels, self.in_features, "PointwiseConv")
        bias = None if self.bias is None else self.bias[...]
        x, kernel, bias = promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
        return ops.pointwise_conv(
            x,
            kernel,
            bias=bias,
            data_format=self.data_format,
            num_spatial_dims=self.num_spatial_dims,
            precision=self.precision,
        )


class SeparableConv(_Windowed):
    """Depthwise separable convolution (Keras / Xception ``SeparableConv``).

    A depthwise convolution (``depthwise_kernel``, ``(*kernel_size, 1, C * M)``)
    followed by a pointwise one (``pointwise_kernel``, ``(C * M, out_features)``),
    computed by :func:`sepconv_jax.separable_conv`. Parameter count:
    ``prod(kernel_size) * C * M + C * M * out_features``, plus ``out_features``
    with ``use_bias`` and ``C * M`` with ``use_depthwise_bias``.

    Args:
      in_features: input channels ``C``.
      out_features: output channels.
      kernel_size: window shape, one int per spatial dim, e.g. ``(3, 3)``.
      strides, padding, padding_mode, kernel_dilation, depth_multiplier,
        data_format, dtype, param_dtype, precision, impl: as in
        :class:`DepthwiseConv`; the window options apply to the depthwise step.
      use_bias: whether to add an ``(out_features,)`` bias to the output.
      use_depthwise_bias: whether to add a ``(C * M,)`` bias between the steps
        (default ``False``, as Keras ``SeparableConv2D``).
      depthwise_init: LeCun normal with fan-in ``prod(kernel_size)`` by default.
      pointwise_init: LeCun normal with fan-in ``C * M`` by default. Together they
        keep unit-variance inputs at unit variance through both steps at init.
      bias_init: initializer of both biases (zeros).
      channel_axis: mesh axis to shard the depthwise channels over (depthwise kernel
        and bias, the pointwise kernel's input dim); ``None`` (default) adds none.
      out_axis: mesh axis to shard the output channels over (pointwise kernel's
        output dim, bias).
      rngs: random number streams; ``rngs.params()`` seeds the initializers.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from sepconv_jax.nnx import SeparableConv
      >>> layer = SeparableConv(16, 32, (3, 3), rngs=nnx.Rngs(0))
      >>> layer.depthwise_kernel.shape, layer.pointwise_kernel.shape, layer.bias.shape
      ((3, 3, 1, 16), (16, 32), (32,))
      >>> layer(jnp.ones((2, 8, 8, 16))).shape
      (2, 8, 8, 32)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: Sequence[int],
        *,
        strides: int | Sequence[int] = 1,
        padding: PaddingLike = "SAME",
        padding_mode: PaddingMode = "zeros",
        kernel_dilation: int | Sequence[int] = 1,
        depth_multiplier: int = 1,
        use_bias: bool = True,
        use_depthwise_bias: bool = False,
        data_format: DataFormat = "channels_last",
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: PrecisionLike = None,
        impl: Impl = "auto",
        depthwise_init: _layers.Initializer = _layers.default_depthwise_init,
        pointwise_init: _layers.Initializer = _layers.default_pointwise_init,
        bias_init: _layers.Initializer = _layers.default_bias_init,
        channel_axis: str | None = None,
        out_axis: str | None = None,
        rngs: nnx.Rngs,
    ):
        in_features = _spec.check_positive_int(in_features, "in_features")
        out_features = _spec.check_positive_int(out_features, "out_features")
        c_axis = _layers.check_axis(channel_axis, "channel_axis")
        o_axis = _layers.check_axis(out_axis, "out_axis")
        opts = _spec.window_options(
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            padding_mode=padding_mode,
            kernel_dilation=kernel_dilation,
            depth_multiplier=depth_multiplier,
            data_format=data_format,
        )
        impl = _layers.check_impl(impl)
        _layers.check_common(
            dtype=dtype, param_dtype=param_dtype, precision=precision, use_bias=use_bias
        )
        _layers.check_bool(use_depthwise_bias, "use_depthwise_bias")
        _layers.check_initializer(depthwise_init, "depthwise_init")
        _layers.check_initializer(pointwise_init, "pointwise_init")
        _layers.check_initializer(bias_init, "bias_init")

        dw_shape = opts.depthwise_kernel_shape(in_features)
        mid = dw_shape[-1]
        self.depthwise_kernel = _param(depthwise_init, rngs, dw_shape, param_dtype, {-1: c_axis})
        self.pointwise_kernel = _param(
            pointwise_init, rngs, (mid, out_features), param_dtype, {0: c_axis, 1: o_axis}
        )
        self.depthwise_bias: nnx.Param | None = _param(
            bias_init, rngs, (mid,), param_dtype, {0: c_axis}, use_depthwise_bias
        )
        self.bias: nnx.Param | None = _param(
            bias_init, rngs, (out_features,), param_dtype, {0: o_axis}, use_bias
        )

        self.in_features = in_features
        self.out_features = out_features
        self._store_window_options(opts, impl)
        self.use_bias = use_bias
        self.use_depthwise_bias = use_depthwise_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision

    def __call__(self, x: ArrayLike, decode: bool = False) -> jax.Array:
        """Applies the layer, to a whole input or (``decode=True``) to a stream's next chunk.

        Args:
          x: ``(*batch, *spatial, in_features)``, or ``(*batch, in_features,
            *spatial)`` with ``data_format="channels_first"``. With ``decode=True``,
            a chunk of ``n >= 1`` frames along time, ``n`` a multiple of the stride
            along time.
          decode: stream, as :class:`DepthwiseConv` does: ``buffer`` (made by
            :meth:`init_cache`) holds the last ``(k - 1) * d`` input frames.

        Returns:
          ``(*batch, *out_spatial, out_features)`` (or channels-first); with
          ``decode=True``, ``n / stride`` frames along time.

        Raises:
          ValueError: with ``decode=True``, for a non-causal layer, a missing cache,
            or a chunk that does not fit the cache or the stride.
        """
        _layers.check_bool(decode, "decode")
        channels = _spec.window_channels(x, self._options, "SeparableConv")
        _check_in_features(channels, self.in_features, "SeparableConv")
        dw_bias = None if self.depthwise_bias is None else self.depthwise_bias[...]
        bias = None if self.bias is None else self.bias[...]
        x, dw_kernel, pw_kernel, dw_bias, bias = promote_dtype(
            (x, self.depthwise_kernel[...], self.pointwise_kernel[...], dw_bias, bias),
            dtype=self.dtype,
        )
        return self._apply(x, (dw_kernel, dw_bias, pw_kernel, bias), decode)
