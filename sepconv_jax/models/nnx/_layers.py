"""The NNX layer constructors of the reference architectures (the NNX side of
:class:`sepconv_jax.models._common.Numerics`): every layer gets the numerics options
and the random streams of the block or model that builds it."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
from flax import nnx

from sepconv_jax.models._common import BN_EPSILON, Numerics
from sepconv_jax.nnx import DepthwiseConv, PointwiseConv, SeparableConv

T = TypeVar("T")

_ABSTRACT = contextvars.ContextVar("abstract_build", default=False)


@contextlib.contextmanager
def abstract_build() -> Iterator[None]:
    """Within it, models and blocks are built with abstract parameters.

    Each layer is built under its own ``nnx.eval_shape`` (``jax.ShapeDtypeStruct``
    in place of its parameters), so no initializer runs; tracing the layers one by
    one keeps every trace small (tracing a whole model at once costs time quadratic
    in its size, in the random-stream updates). Dropout streams are real.
    """
    token = _ABSTRACT.set(True)
    try:
        yield
    finally:
        _ABSTRACT.reset(token)


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
        self.abstract = _ABSTRACT.get()

    def _make(self, build: Callable[[nnx.Rngs], T]) -> T:
        if self.abstract:
            return nnx.eval_shape(lambda: build(nnx.Rngs(0)))
        return build(self.rngs)

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
        return self._make(
            lambda rngs: nnx.Conv(
                in_features,
                features,
                (kernel_size, kernel_size),
                strides=(strides, strides),
                padding=padding,
                use_bias=use_bias,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                precision=self.precision,
                rngs=rngs,
            )
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
        return self._make(
            lambda rngs: DepthwiseConv(
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
                rngs=rngs,
            )
        )

    def pointwise(self, in_features: int, features: int, use_bias: bool = False) -> PointwiseConv:
        """A 1x1 convolution (our :class:`~sepconv_jax.nnx.PointwiseConv`)."""
        return self._make(
            lambda rngs: PointwiseConv(
                in_features,
                features,
                use_bias=use_bias,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                precision=self.precision,
                rngs=rngs,
            )
        )

    def separable(self, in_features: int, features: int) -> SeparableConv:
        """A 3x3 ``SAME`` separable convolution without bias (Xception's unit)."""
        return self._make(
            lambda rngs: SeparableConv(
                in_features,
                features,
                (3, 3),
                padding="SAME",
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                precision=self.precision,
                impl=self.impl,
                rngs=rngs,
            )
        )

    def batch_norm(
        self, features: int, momentum: float, epsilon: float = BN_EPSILON
    ) -> nnx.BatchNorm:
        """A batch norm with Keras' conventions, in training mode until ``.eval()``."""
        return self._make(
            lambda rngs: nnx.BatchNorm(
                features,
                momentum=momentum,
                epsilon=epsilon,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                rngs=rngs,
            )
        )

    def layer_norm(self, features: int, epsilon: float) -> nnx.LayerNorm:
        """A layer norm over the channels (variance as the mean of squared deviations)."""
        return self._make(
            lambda rngs: nnx.LayerNorm(
                features,
                epsilon=epsilon,
                use_fast_variance=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                rngs=rngs,
            )
        )

    def dense(self, in_features: int, features: int) -> nnx.Linear:
        """A dense layer with bias (the linen models' ``nn.Dense``)."""
        return self._make(
            lambda rngs: nnx.Linear(
                in_features,
                features,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                precision=self.precision,
                rngs=rngs,
            )
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
