"""MobileNetV2: Sandler et al., 2018, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", Table 2, as in ``keras.applications.MobileNetV2``."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from sepconv_jax.models import _common, spec
from sepconv_jax.models._build import Builder, Linen
from sepconv_jax.models.blocks import (
    Stride2Padding,
    check_image,
    inverted_residual_body,
    stem_padding,
)

__all__ = ["MobileNetV2", "make_divisible", "mobilenet_v2_blocks", "mobilenet_v2_widths"]

STAGES = spec.MOBILENET_V2_STAGES
BN_MOMENTUM = spec.MOBILENET_V2_BN_MOMENTUM


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds ``value`` to the nearest multiple of ``divisor`` without losing over 10%.

    The rule of the reference MobileNetV2 / EfficientNet code: round to the nearest
    multiple (at least ``divisor``), then add ``divisor`` if that fell below 90% of
    ``value``.

    Example:
      >>> from sepconv_jax.models import make_divisible
      >>> make_divisible(32 * 0.35), make_divisible(1280 * 1.4), make_divisible(12)
      (16, 1792, 16)
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def mobilenet_v2_widths(width_multiplier: float) -> tuple[int, ...]:
    """Channel counts: the stem, each of the 17 blocks, and the final 1x1 conv.

    As in Keras: the stem is ``make_divisible(32 * a)``, a block of base width ``c``
    has ``make_divisible(int(c * a))``, and the last convolution keeps 1280 channels
    unless ``a > 1``, when it is ``make_divisible(1280 * a)``.

    Example:
      >>> from sepconv_jax.models import mobilenet_v2_widths
      >>> w = mobilenet_v2_widths(0.35)
      >>> w[0], w[1:4], w[-1]
      (16, (8, 8, 8), 1280)
    """
    alpha = _common.check_positive_float(width_multiplier, "width_multiplier")
    blocks = [make_divisible(int(c * alpha)) for _, c, n, _ in STAGES for _ in range(n)]
    last = spec.MOBILENET_V2_LAST
    last = make_divisible(last * alpha) if alpha > 1.0 else last
    return (make_divisible(spec.MOBILENET_V2_STEM * alpha), *blocks, last)


def mobilenet_v2_blocks(
    width_multiplier: float, stride2_padding: Stride2Padding
) -> list[tuple[str, dict[str, Any]]]:
    """The 17 inverted residuals: ``(name, InvertedResidual fields)`` in order.

    One table for the linen and the NNX model (:mod:`sepconv_jax.models.nnx`).
    """
    _, *widths, _ = mobilenet_v2_widths(width_multiplier)
    out: list[dict[str, Any]] = []
    for expand_ratio, _, repeats, first_stride in STAGES:
        for j in range(repeats):
            out.append(
                dict(
                    features=widths[len(out)],
                    expand_ratio=expand_ratio,
                    kernel_size=3,
                    strides=first_stride if j == 0 else 1,
                    activation=nn.relu6,
                    stride2_padding=stride2_padding,
                    bn_momentum=BN_MOMENTUM,
                )
            )
    return [(f"block{i}", kwargs) for i, kwargs in enumerate(out)]


def _mobilenet_v2(config: MobileNetV2, b: Builder, x: jax.Array) -> jax.Array:
    x = check_image(x, "MobileNetV2")
    stem, *_, last = mobilenet_v2_widths(config.width_multiplier)
    x = inverted_residual_body(
        config, b, x, mobilenet_v2_blocks(config.width_multiplier, config.stride2_padding),
        stem=("conv1", "conv1_bn", stem), top=("conv_last", "conv_last_bn", last),
        stem_padding=stem_padding(3, 2, config.stride2_padding), activation=nn.relu6,
        bn_momentum=BN_MOMENTUM,
    )  # fmt: skip
    return _common.head(config, b, x)


class MobileNetV2(Linen, _common.Classifier):
    """MobileNetV2: inverted residuals with linear bottlenecks and ReLU6.

    Layout (Sandler et al., 2018, Table 2): a 3x3 convolution of stride 2, 17
    :class:`~sepconv_jax.models.blocks.InvertedResidual` blocks in seven stages, a
    1x1 convolution to 1280 channels, global average pooling and a dense layer. The
    widths follow :func:`mobilenet_v2_widths`; the padding and batch-norm constants
    (epsilon 1e-3, momentum 0.999) follow ``keras.applications.MobileNetV2`` so its
    weights convert exactly.

    Attributes:
      width_multiplier: the paper's width multiplier (Keras' ``alpha``).
      stride2_padding: padding of strided depthwise steps, see
        :func:`~sepconv_jax.models.blocks.conv_padding`. ``"same"`` matches a Keras
        model built for a known input size, ``"fixed"`` one built for ``None``,
        ``"symmetric"`` (which pads the stem symmetrically too) timm's
        ``mobilenetv2_100``.
      bn_epsilon: the batch norms' epsilon (Keras 1e-3; PyTorch and timm 1e-5).
      num_classes, include_top, pooling, dropout_rate, classifier_activation, dtype,
        param_dtype, precision, impl: as every
        :class:`~sepconv_jax.models._common.Classifier` (``dropout_rate`` 0, Keras').

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.models import MobileNetV2
      >>> model = MobileNetV2(num_classes=10, width_multiplier=0.35)
      >>> x = jnp.zeros((1, 32, 32, 3))
      >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
      >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape
      (1, 10)
    """

    width_multiplier: float = 1.0
    stride2_padding: Stride2Padding = "same"
    bn_epsilon: float = _common.BN_EPSILON

    forward = staticmethod(_mobilenet_v2)
