"""The NNX layer constructors of the reference architectures (the NNX side of
:class:`sepconv_jax.models._common.Numerics`): every layer gets the numerics options
and the random streams of the block or model that builds it."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from sepconv_jax.models._common import BN_EPSILON, Numerics
from sepconv_jax.nnx import DepthwiseConv, PointwiseConv, SeparableConv


class Layers:
    """Builds layers with one set of numerics options (``dtype``, ``param_dtype``,
    ``precision``, ``impl``) and one ``rngs``; the layers' parameter names are those of
    the linen layers the linen models use."""

    def __init__(self, config: Numerics, rngs: nnx.Rngs) -> None:
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"`rngs` must be a flax.nnx.Rngs, got {type(rngs).__name__}")
        self.dtype = config.dtype
        self.param_dtype = config.param_dtype
        self.precision = config.precision
        self.impl = config.impl
        self.rngs = rngs

    def conv(
        self,
        in_features: int,
        features: int,
        kernel_size: int,
        strides: int,
        padding: Any,
        use_bias: bool = False,
    ) -> nnx.Conv:
        """A standard square convolution (``flax.nnx.Conv``), without bias by default."""
        return nnx.Conv(
            in_features,
            features,
            (kernel_size, kernel_size),
            strides=(strides, strides),
            padding=padding,
            use_bias=use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            rngs=self.rngs,
        )

    def depthwise(
        self,
        in_features: int,
        kernel_size: int,
        strides: int,
        padding: Any,
        multiplier: int = 1,
        use_bias: bool = False,
    ) -> DepthwiseConv:
        """A square depthwise convolution (our :class:`~sepconv_jax.nnx.DepthwiseConv`)."""
        return DepthwiseConv(
            in_features,
            (kernel_size, kernel_size),
            strides=(strides, strides),
            padding=padding,
            depth_multiplier=multiplier,
            use_bias=use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            impl=self.impl,
            rngs=self.rngs,
        )

    def pointwise(self, in_features: int, features: int, use_bias: bool = False) -> PointwiseConv:
        """A 1x1 convolution (our :class:`~sepconv_jax.nnx.PointwiseConv`)."""
        return PointwiseConv(
            in_features,
            features,
            use_bias=use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            rngs=self.rngs,
        )

    def separable(self, in_features: int, features: int) -> SeparableConv:
        """A 3x3 ``SAME`` separable convolution without bias (Xception's unit)."""
        return SeparableConv(
            in_features,
            features,
            (3, 3),
            padding="SAME",
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            impl=self.impl,
            rngs=self.rngs,
        )

    def batch_norm(
        self, features: int, momentum: float, epsilon: float = BN_EPSILON
    ) -> nnx.BatchNorm:
        """A batch norm with Keras' conventions, in training mode until ``.eval()``."""
        return nnx.BatchNorm(
            features,
            momentum=momentum,
            epsilon=epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            rngs=self.rngs,
        )

    def layer_norm(self, features: int, epsilon: float) -> nnx.LayerNorm:
        """A layer norm over the channels (variance as the mean of squared deviations)."""
        return nnx.LayerNorm(
            features,
            epsilon=epsilon,
            use_fast_variance=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            rngs=self.rngs,
        )

    def dense(self, in_features: int, features: int) -> nnx.Linear:
        """A dense layer with bias (the linen models' ``nn.Dense``)."""
        return nnx.Linear(
            in_features,
            features,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            rngs=self.rngs,
        )

    def dropout(self, rate: float, per_sample: bool = False) -> nnx.Dropout | None:
        """Dropout of ``rate`` (None when 0); ``per_sample`` drops whole samples
        (stochastic depth on ``(batch, height, width, channels)``)."""
        if rate <= 0:
            return None
        return nnx.Dropout(rate, broadcast_dims=(1, 2, 3) if per_sample else (), rngs=self.rngs)


def maybe(layer: Any, x: jax.Array) -> jax.Array:
    """``layer(x)``, or ``x`` when the optional layer is None."""
    return x if layer is None else layer(x)
