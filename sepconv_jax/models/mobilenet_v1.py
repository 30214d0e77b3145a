"""MobileNet (v1): Howard et al., 2017, "MobileNets: Efficient Convolutional Neural
Networks for Mobile Vision Applications", Table 1, as in ``keras.applications.MobileNet``."""

from __future__ import annotations

import flax.linen as nn
import jax

from sepconv_jax.models import _common, spec
from sepconv_jax.models._build import Builder, Linen
from sepconv_jax.models.blocks import DepthwiseSeparableBlock, Stride2Padding, check_image

__all__ = ["MobileNetV1", "mobilenet_v1_widths"]

BN_MOMENTUM = spec.MOBILENET_V1_BN_MOMENTUM


def mobilenet_v1_widths(width_multiplier: float) -> tuple[int, ...]:
    """Channel counts of the stem and the 13 blocks for a width multiplier.

    Each base width ``c`` becomes ``int(c * width_multiplier)`` (rounded down), as in
    Keras.

    Example:
      >>> from sepconv_jax.models import mobilenet_v1_widths
      >>> mobilenet_v1_widths(0.25)[:4]
      (8, 16, 32, 32)
    """
    alpha = _common.check_positive_float(width_multiplier, "width_multiplier")
    bases = (spec.MOBILENET_V1_STEM, *(f for f, _ in spec.MOBILENET_V1_BLOCKS))
    return tuple(int(c * alpha) for c in bases)


def _mobilenet_v1(config: MobileNetV1, b: Builder, x: jax.Array) -> jax.Array:
    x = check_image(x, "MobileNetV1")
    stem, *widths = mobilenet_v1_widths(config.width_multiplier)
    x = b.conv("conv1", x, stem, 3, 2, "SAME")
    x = nn.relu6(b.batch_norm("conv1_bn", x, BN_MOMENTUM, _common.BN_EPSILON))
    strides = (s for _, s in spec.MOBILENET_V1_BLOCKS)
    for i, (features, stride) in enumerate(zip(widths, strides, strict=True), 1):
        x = b.block(
            f"block{i}", DepthwiseSeparableBlock, x, features=features, strides=stride,
            depth_multiplier=config.depth_multiplier, full_convolution=config.full_convolution,
            stride2_padding=config.stride2_padding, bn_momentum=BN_MOMENTUM,
        )  # fmt: skip
    return _common.head(config, b, x)


class MobileNetV1(Linen, _common.Classifier):
    """MobileNet (v1): a 3x3 stem and 13 depthwise-separable blocks, then a classifier.

    Layout (Howard et al., 2017, Table 1): a standard 3x3 convolution of stride 2
    with 32 filters, 13 :class:`~sepconv_jax.models.blocks.DepthwiseSeparableBlock`
    (widths 64 to 1024, five of stride 2), global average pooling, dropout and a
    dense layer. Every convolution is followed by batch norm and ReLU6. With a width
    multiplier ``a`` every width ``c`` becomes ``int(c * a)``.

    The padding, batch-norm constants and head follow ``keras.applications.MobileNet``
    so its weights convert exactly (:func:`sepconv_jax.interop.keras.convert`): the
    stem pads "SAME", strided depthwise convolutions pad one row and column at the
    bottom/right (``stride2_padding="fixed"``), batch norm uses epsilon 1e-3 and
    momentum 0.99.

    Attributes:
      width_multiplier: the paper's alpha (Keras' ``alpha``); 0.25, 0.5, 0.75, 1.0
        in the paper, any positive value works.
      depth_multiplier: depthwise outputs per input channel (Keras'
        ``depth_multiplier``; 1 in the paper).
      full_convolution: replace every depthwise-separable block by a standard 3x3
        convolution (the "Conv MobileNet" row of the paper's Table 4).
      stride2_padding: padding of the strided depthwise steps, see
        :func:`~sepconv_jax.models.blocks.conv_padding`.
      num_classes, include_top, pooling, dropout_rate, classifier_activation, dtype,
        param_dtype, precision, impl: as every
        :class:`~sepconv_jax.models._common.Classifier` (``dropout_rate`` 1e-3, Keras').

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.models import MobileNetV1
      >>> model = MobileNetV1(num_classes=10, width_multiplier=0.25)
      >>> x = jnp.zeros((2, 32, 32, 3))
      >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
      >>> sorted(variables)
      ['batch_stats', 'params']
      >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape
      (2, 10)
    """

    dropout_rate: float = 1e-3
    width_multiplier: float = 1.0
    depth_multiplier: int = 1
    full_convolution: bool = False
    stride2_padding: Stride2Padding = "fixed"

    forward = staticmethod(_mobilenet_v1)
