"""What the reference architectures and their blocks share.

* :class:`Numerics`: the numerics fields (``dtype``, ``param_dtype``, ``precision``,
  ``impl``, keyword-only) and the one family of layer factories that passes them to
  every layer: ``_conv``, ``_depthwise``, ``_pointwise``, ``_separable``,
  ``_batch_norm``.
* :class:`Normalized`: adds the batch-norm fields of a block.
* :class:`Classifier`: the fields every model has (``num_classes``, ``include_top``,
  ``pooling``, ``dropout_rate``, ``classifier_activation``), checked when the model is
  constructed, and the classification head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from sepconv_jax import _layers, _spec
from sepconv_jax.kernels.dispatch import Impl
from sepconv_jax.linen import DepthwiseConv, PointwiseConv, SeparableConv
from sepconv_jax.ops import PrecisionLike

Activation = Callable[[jax.Array], jax.Array]
Dtype = Any
Pooling = Literal["avg", "max"] | None

POOLINGS = (None, "avg", "max")
#: Keras' batch-norm epsilon (the ``BatchNormalization`` default), which all four
#: reference architectures use in ``keras.applications``.
BN_EPSILON = 1e-3


# ----------------------------------------------------------------------------- checks


def check_rate(value: Any, name: str) -> float:
    """``value`` as a float in ``[0, 1)``, or an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a float in [0, 1), got {type(value).__name__}")
    if not 0 <= value < 1:
        raise ValueError(f"`{name}` must be in [0, 1), got {value!r}")
    return float(value)


def check_positive_float(value: Any, name: str) -> float:
    """``value`` (a width multiplier or a scaling coefficient) as a float > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a positive float, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"`{name}` must be > 0, got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------- layers


class Numerics(nn.Module, kw_only=True):
    """The numerics options, passed to every layer by the factories below.

    Keyword-only, so that a subclass's own fields come first in positional order.
    """

    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None
    impl: Impl = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        _layers.check_dtype(self.dtype, "dtype", allow_none=True)
        _layers.check_dtype(self.param_dtype, "param_dtype", allow_none=False)
        _spec.check_precision(self.precision)
        _layers.check_impl(self.impl)

    def _conv(
        self,
        features: int,
        kernel_size: int,
        strides: int,
        padding: Any,
        name: str,
        use_bias: bool = False,
    ) -> nn.Conv:
        """A standard square convolution, without bias by default."""
        return nn.Conv(
            features,
            (kernel_size, kernel_size),
            strides=(strides, strides),
            padding=padding,
            use_bias=use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            name=name,
        )

    def _depthwise(
        self,
        kernel_size: int,
        strides: int,
        padding: Any,
        name: str,
        multiplier: int = 1,
        use_bias: bool = False,
        channel_axis: str | None = None,
    ) -> DepthwiseConv:
        """A square depthwise convolution (our :class:`DepthwiseConv`), without bias by default."""
        return DepthwiseConv(
            channel_axis=channel_axis,
            kernel_size=(kernel_size, kernel_size),
            strides=(strides, strides),
            padding=padding,
            depth_multiplier=multiplier,
            use_bias=use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            impl=self.impl,
            name=name,
        )

    def _pointwise(
        self,
        features: int,
        name: str,
        use_bias: bool = False,
        in_axis: str | None = None,
        out_axis: str | None = None,
    ) -> PointwiseConv:
        """A 1x1 convolution (our :class:`PointwiseConv`), without bias by default."""
        return PointwiseConv(
            in_axis=in_axis,
            out_axis=out_axis,
            features=features,
            use_bias=use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            name=name,
        )

    def _separable(self, features: int, name: str) -> SeparableConv:
        """A 3x3 ``SAME`` separable conv without bias (Xception's unit)."""
        return SeparableConv(
            features=features,
            kernel_size=(3, 3),
            padding="SAME",
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            impl=self.impl,
            name=name,
        )

    def _batch_norm(
        self, name: str, train: bool, momentum: float, epsilon: float = BN_EPSILON
    ) -> nn.BatchNorm:
        """A batch norm with Keras' conventions (``momentum`` weighs the old running value)."""
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=momentum,
            epsilon=epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def _layer_norm(self, name: str, epsilon: float) -> nn.LayerNorm:
        """A layer norm over the channels, its variance computed as the mean of squared
        deviations (as Keras and PyTorch do) rather than ``E[x^2] - E[x]^2``."""
        return nn.LayerNorm(
            epsilon=epsilon,
            use_fast_variance=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def _dense(self, features: int, name: str) -> nn.Dense:
        """A dense layer with bias."""
        return nn.Dense(
            features,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            name=name,
        )


class Normalized(Numerics, kw_only=True):
    """Numerics options and the batch-norm hyperparameters of a block (keyword-only)."""

    bn_momentum: float = 0.99
    bn_epsilon: float = BN_EPSILON

    def _bn(self, name: str, train: bool) -> nn.BatchNorm:
        return self._batch_norm(name, train, self.bn_momentum, self.bn_epsilon)


# ----------------------------------------------------------------------------- models


class Classifier(Numerics):
    """The fields every reference architecture has, checked at construction, and its head.

    A subclass adds its own fields after these (and may change a default, e.g.
    ``dropout_rate``); the numerics fields of :class:`Numerics` are keyword-only.
    """

    num_classes: int = 1000
    include_top: bool = True
    pooling: Pooling = None
    dropout_rate: float = 0.0
    classifier_activation: Activation | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _spec.check_positive_int(self.num_classes, "num_classes")
        _layers.check_bool(self.include_top, "include_top")
        if self.pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be None, 'avg' or 'max', got {self.pooling!r}")
        check_rate(self.dropout_rate, "dropout_rate")
        if self.classifier_activation is not None and not callable(self.classifier_activation):
            raise TypeError(
                f"`classifier_activation` must be None or a callable such as jax.nn.softmax, got "
                f"{type(self.classifier_activation).__name__}"
            )


def head(config: Classifier, b: Any, x: jax.Array) -> jax.Array:
    """Global average pool, dropout, dense ``num_classes`` (or the pooled or plain features).

    ``b`` is the forward's builder (:class:`sepconv_jax.models._build.Builder`); the
    pool runs over every axis between the batch and the channels.
    """
    axes = tuple(range(1, x.ndim - 1))
    if not config.include_top:
        if config.pooling == "avg":
            return jnp.mean(x, axis=axes)
        if config.pooling == "max":
            return jnp.max(x, axis=axes)
        return x
    return classify(config, b, jnp.mean(x, axis=axes))


def classify(config: Classifier, b: Any, x: jax.Array) -> jax.Array:
    """Dropout, the dense layer ``predictions`` and the classifier activation."""
    x = b.dense("predictions", b.dropout("top_dropout", x, config.dropout_rate), config.num_classes)
    return x if config.classifier_activation is None else config.classifier_activation(x)


# ----------------------------------------------------------------------------- input


#: Keras' ``backend.epsilon()``, the floor of a ``Normalization`` layer's standard deviation.
NORMALIZATION_EPSILON = 1e-7


def check_epsilon(value: Any, name: str) -> float:
    """A normalization epsilon: a float > 0."""
    return check_positive_float(value, name)


def float_input(x: jax.Array) -> jax.Array:
    """``x`` itself if it is floating point, else as float32 (images in 0..255)."""
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def normalize_input(
    x: jax.Array, mean: Any, variance: Any, rescale: float = 1.0, owner: str = "the model"
) -> jax.Array:
    """``(x * rescale - mean) / max(sqrt(variance), 1e-7)`` per channel, as Keras'
    ``Rescaling`` followed by ``Normalization`` compute it.

    Raises:
      ValueError: when ``mean`` or ``variance`` do not have one value per channel.
    """
    channels = x.shape[-1]
    if len(mean) != channels or len(variance) != channels:
        raise ValueError(
            f"`input_mean` and `input_variance` have {len(mean)} and {len(variance)} values "
            f"but `x` has {channels} channels; give {owner} one per channel or set "
            f"include_preprocessing=False"
        )
    x = float_input(x)
    m = jnp.asarray(mean, x.dtype).reshape(1, 1, 1, channels)
    std = jnp.maximum(jnp.sqrt(jnp.asarray(variance, x.dtype)), NORMALIZATION_EPSILON)
    if rescale != 1.0:
        x = x * rescale
    return (x - m) / std.reshape(1, 1, 1, channels)
