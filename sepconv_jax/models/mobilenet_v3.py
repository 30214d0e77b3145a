"""MobileNetV3: Howard et al., 2019, "Searching for MobileNetV3", Tables 1 and 2
(Large and Small), as in ``keras.applications.MobileNetV3Large`` / ``MobileNetV3Small``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax
from jax.typing import ArrayLike

from sepconv_jax import _layers
from sepconv_jax.models import _common
from sepconv_jax.models.blocks import (
    InvertedResidual,
    Stride2Padding,
    check_image,
    check_stride2_padding,
    stem_padding,
)
from sepconv_jax.models.mobilenet_v2 import make_divisible

__all__ = [
    "MobileNetV3",
    "MobileNetV3Large",
    "MobileNetV3Small",
    "hard_sigmoid",
    "hard_swish",
    "mobilenet_v3_blocks",
]

Variant = Literal["large", "small"]

#: Keras' batch-norm momentum for MobileNetV3.
BN_MOMENTUM = 0.999
#: Squeeze-excite width over the expanded width (rounded to a multiple of 8).
SE_RATIO = 0.25
#: The stem's width, the same for every ``alpha`` (as in Keras).
STEM = 16

#: Per block: (expansion, output channels, kernel, stride, squeeze-excite, nonlinearity).
#: ``"K"`` is 5 (3 when minimalistic); ``"RE"`` is ReLU, ``"HS"`` hard-swish (ReLU
#: when minimalistic). Table 1 (Large) and Table 2 (Small) of the paper, with the
#: expansions written as Keras writes them (the paper lists expanded widths).
TABLES: dict[Variant, tuple[tuple[float, int, int | str, int, bool, str], ...]] = {
    "large": (
        (1, 16, 3, 1, False, "RE"),
        (4, 24, 3, 2, False, "RE"),
        (3, 24, 3, 1, False, "RE"),
        (3, 40, "K", 2, True, "RE"),
        (3, 40, "K", 1, True, "RE"),
        (3, 40, "K", 1, True, "RE"),
        (6, 80, 3, 2, False, "HS"),
        (2.5, 80, 3, 1, False, "HS"),
        (2.3, 80, 3, 1, False, "HS"),
        (2.3, 80, 3, 1, False, "HS"),
        (6, 112, 3, 1, True, "HS"),
        (6, 112, 3, 1, True, "HS"),
        (6, 160, "K", 2, True, "HS"),
        (6, 160, "K", 1, True, "HS"),
        (6, 160, "K", 1, True, "HS"),
    ),
    "small": (
        (1, 16, 3, 2, True, "RE"),
        (72 / 16, 24, 3, 2, False, "RE"),
        (88 / 24, 24, 3, 1, False, "RE"),
        (4, 40, "K", 2, True, "HS"),
        (6, 40, "K", 1, True, "HS"),
        (6, 40, "K", 1, True, "HS"),
        (3, 48, "K", 1, True, "HS"),
        (3, 48, "K", 1, True, "HS"),
        (6, 96, "K", 2, True, "HS"),
        (6, 96, "K", 1, True, "HS"),
        (6, 96, "K", 1, True, "HS"),
    ),
}
#: Width of the 1x1 convolution after pooling (Keras' ``last_point_ch``).
LAST_POINT: dict[Variant, int] = {"large": 1280, "small": 1024}


def hard_sigmoid(x: jax.Array) -> jax.Array:
    """``relu6(x + 3) / 6`` (the paper's h-sigmoid)."""
    return jax.nn.hard_sigmoid(x)


def hard_swish(x: jax.Array) -> jax.Array:
    """``x * relu6(x + 3) / 6`` (the paper's h-swish)."""
    return jax.nn.hard_swish(x)


def _nonlinearity(code: str, minimalistic: bool) -> _common.Activation:
    return nn.relu if code == "RE" or minimalistic else hard_swish


def mobilenet_v3_blocks(
    variant: Variant, alpha: float, minimalistic: bool, stride2_padding: Stride2Padding
) -> list[tuple[str, dict[str, Any]]]:
    """Every inverted residual: ``(name, InvertedResidual fields)`` in order.

    As Keras builds them: output widths ``make_divisible(c * alpha)``; expanded
    widths ``make_divisible(in * expansion)`` (no expansion in the first block);
    squeeze-excite of width ``make_divisible(expanded / 4)`` with ReLU and a hard
    sigmoid gate. One table for the linen and the NNX model.

    Example:
      >>> from sepconv_jax.models.mobilenet_v3 import mobilenet_v3_blocks
      >>> name, block = mobilenet_v3_blocks("small", 1.0, False, "same")[1]
      >>> name, block["expanded_features"], block["features"], block["se_features"]
      ('block1', 72, 24, None)
    """
    alpha = _common.check_positive_float(alpha, "alpha")
    channels = STEM
    out: list[tuple[str, dict[str, Any]]] = []
    for i, (expansion, base, kernel, strides, se, code) in enumerate(TABLES[variant]):
        features = make_divisible(base * alpha)
        expanded = channels if i == 0 else make_divisible(channels * expansion)
        use_se = se and not minimalistic
        kwargs = dict(
            features=features,
            expand_ratio=expanded / channels,
            expanded_features=expanded,
            kernel_size=3 if kernel != "K" or minimalistic else 5,
            strides=strides,
            se_features=make_divisible(expanded * SE_RATIO) if use_se else None,
            se_activation=nn.relu,
            se_gate=hard_sigmoid,
            activation=_nonlinearity(code, minimalistic),
            stride2_padding=stride2_padding,
            bn_momentum=BN_MOMENTUM,
        )
        out.append((f"block{i}", kwargs))
        channels = features
    return out


def mobilenet_v3_head_widths(variant: Variant, alpha: float) -> tuple[int, int]:
    """(last convolution, 1x1 convolution after pooling) widths, as Keras sets them:
    six times the last block's width, and 1280 (Large) / 1024 (Small), scaled only
    when ``alpha > 1``."""
    last_block = make_divisible(TABLES[variant][-1][1] * alpha)
    point = LAST_POINT[variant]
    return make_divisible(last_block * 6), make_divisible(point * alpha) if alpha > 1 else point


class MobileNetV3(_common.Classifier):
    """MobileNetV3 (Large or Small): inverted residuals with squeeze-excite and hard-swish.

    Layout (Howard et al., 2019, Tables 1 and 2): a 3x3 convolution of stride 2 with
    16 filters, the inverted residuals of :func:`mobilenet_v3_blocks`, a 1x1
    convolution to six times the last width, then the classifier: global average
    pooling, a 1x1 convolution with bias (1280 or 1024 channels) and the
    nonlinearity, dropout and a dense layer. Every convolution but those two is
    followed by batch norm. Padding, preprocessing and batch-norm constants
    (epsilon 1e-3, momentum 0.999) follow ``keras.applications.MobileNetV3*`` so its
    weights convert exactly; ``stride2_padding="symmetric"`` and ``bn_epsilon=1e-5``
    give timm's ``mobilenetv3_*``.

    Use :class:`MobileNetV3Large` or :class:`MobileNetV3Small`.

    Attributes:
      num_classes: outputs of the classifier.
      include_top: end with the classifier; otherwise return the features of the
        last convolution.
      pooling: without the top: ``None``, ``"avg"`` or ``"max"``.
      dropout_rate: dropout before the classifier (Keras' default 0.2).
      classifier_activation: applied to the logits; ``None`` returns logits.
      alpha: the width multiplier (Keras' name), applied to every block's width.
      minimalistic: no squeeze-excite, no hard-swish (ReLU) and only 3x3 kernels.
      include_preprocessing: rescale ``[0, 255]`` images to ``[-1, 1]`` first
        (Keras' ``Rescaling(1 / 127.5, offset=-1)``).
      stride2_padding: see :func:`~sepconv_jax.models.blocks.conv_padding` (the
        stem always pads "SAME" unless ``"symmetric"``).
      bn_epsilon: the batch norms' epsilon (Keras 1e-3, timm 1e-5).
      dtype, param_dtype, precision, impl: numerics, passed to every layer.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.models import MobileNetV3Small
      >>> model = MobileNetV3Small(num_classes=10, alpha=0.75)
      >>> x = jnp.zeros((1, 32, 32, 3))
      >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
      >>> jax.eval_shape(lambda v: model.apply(v, x), variables).shape
      (1, 10)
    """

    dropout_rate: float = 0.2
    alpha: float = 1.0
    minimalistic: bool = False
    include_preprocessing: bool = True
    stride2_padding: Stride2Padding = "same"
    bn_epsilon: float = _common.BN_EPSILON

    variant: ClassVar[Variant] = "large"

    def __post_init__(self) -> None:
        super().__post_init__()
        _common.check_positive_float(self.alpha, "alpha")
        _layers.check_bool(self.minimalistic, "minimalistic")
        _layers.check_bool(self.include_preprocessing, "include_preprocessing")
        check_stride2_padding(self.stride2_padding)
        _common.check_positive_float(self.bn_epsilon, "bn_epsilon")

    def blocks(self) -> list[tuple[str, dict[str, Any]]]:
        """This model's inverted residuals, see :func:`mobilenet_v3_blocks`."""
        return mobilenet_v3_blocks(
            self.variant, self.alpha, self.minimalistic, self.stride2_padding
        )

    @property
    def nonlinearity(self) -> _common.Activation:
        """Hard-swish, or ReLU when minimalistic (stem, last layers and later blocks)."""
        return _nonlinearity("HS", self.minimalistic)

    @nn.compact
    def __call__(self, x: ArrayLike, train: bool = False) -> jax.Array:
        """Classifies images.

        Args:
          x: ``(batch, height, width, 3)`` images in ``[0, 255]`` (in ``[-1, 1]``
            with ``include_preprocessing=False``), any size (Keras requires >= 32).
          train: batch statistics and dropout when True (then pass
            ``mutable=["batch_stats"]`` and a ``"dropout"`` rng to ``apply``).

        Returns:
          ``(batch, num_classes)``, or the features when ``include_top=False``.
        """
        x = check_image(x, type(self).__name__)
        if self.include_preprocessing:
            x = rescale_input(x)
        act = self.nonlinearity

        def bn(name: str) -> nn.BatchNorm:
            return self._batch_norm(name, train, BN_MOMENTUM, self.bn_epsilon)

        x = self._conv(STEM, 3, 2, stem_padding(3, 2, self.stride2_padding), "stem_conv")(x)
        x = act(bn("stem_bn")(x))
        for name, kwargs in self.blocks():
            x = InvertedResidual(
                **kwargs,
                bn_epsilon=self.bn_epsilon,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                precision=self.precision,
                impl=self.impl,
                name=name,
            )(x, train)
        last, point = mobilenet_v3_head_widths(self.variant, self.alpha)
        x = act(bn("last_bn")(self._pointwise(last, "last_conv")(x)))
        if not self.include_top:
            return self._head(x, train)
        x = x.mean(axis=(1, 2))
        x = act(self._pointwise(point, "head_conv", use_bias=True)(x))
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate, deterministic=not train, name="top_dropout")(x)
        x = self._dense(self.num_classes, "predictions")(x)
        if self.classifier_activation is not None:
            x = self.classifier_activation(x)
        return x


def rescale_input(x: jax.Array) -> jax.Array:
    """``x / 127.5 - 1``: images in ``[0, 255]`` to ``[-1, 1]`` (Keras' ``Rescaling``)."""
    x = _common.float_input(x)
    return x * (1.0 / 127.5) - 1.0


class MobileNetV3Large(MobileNetV3):
    """MobileNetV3-Large (Table 1 of the paper; 15 inverted residuals).

    All attributes as :class:`MobileNetV3`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.models import MobileNetV3Large
      >>> model = MobileNetV3Large(include_top=False, pooling="avg")
      >>> x = jnp.zeros((1, 32, 32, 3))
      >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
      >>> jax.eval_shape(lambda v: model.apply(v, x), variables).shape
      (1, 960)
    """

    variant: ClassVar[Variant] = "large"


class MobileNetV3Small(MobileNetV3):
    """MobileNetV3-Small (Table 2 of the paper; 11 inverted residuals).

    All attributes as :class:`MobileNetV3`.
    """

    variant: ClassVar[Variant] = "small"
