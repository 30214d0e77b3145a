"""MobileNetV3: Howard et al., 2019, "Searching for MobileNetV3", Tables 1 and 2
(Large and Small), as in ``keras.applications.MobileNetV3Large`` / ``MobileNetV3Small``."""

from __future__ import annotations

from typing import Any, ClassVar

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
from sepconv_jax.models.mobilenet_v2 import make_divisible

__all__ = [
    "MobileNetV3",
    "hard_sigmoid",
    "hard_swish",
    "mobilenet_v3_blocks",
]

Variant = spec.Variant
BN_MOMENTUM = spec.MOBILENET_V3_BN_MOMENTUM
SE_RATIO = spec.MOBILENET_V3_SE_RATIO
STEM = spec.MOBILENET_V3_STEM
TABLES = spec.MOBILENET_V3_TABLES
LAST_POINT = spec.MOBILENET_V3_LAST_POINT


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


def _mobilenet_v3(config: MobileNetV3, b: Builder, x: jax.Array) -> jax.Array:
    x = check_image(x, type(config).__name__)
    if config.include_preprocessing:
        x = rescale_input(x)
    act, padding = _nonlinearity("HS", config.minimalistic), config.stride2_padding
    blocks = mobilenet_v3_blocks(config.variant, config.alpha, config.minimalistic, padding)
    last, point = mobilenet_v3_head_widths(config.variant, config.alpha)
    x = inverted_residual_body(
        config, b, x, blocks, stem=("stem_conv", "stem_bn", STEM),
        top=("last_conv", "last_bn", last), stem_padding=stem_padding(3, 2, padding),
        activation=act, bn_momentum=BN_MOMENTUM,
    )  # fmt: skip
    if not config.include_top:
        return _common.head(config, b, x)
    x = act(b.pointwise("head_conv", x.mean(axis=(1, 2)), point, use_bias=True))
    return _common.classify(config, b, x)


class MobileNetV3(Linen, _common.Classifier):
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
      alpha: the width multiplier (Keras' name), applied to every block's width.
      minimalistic: no squeeze-excite, no hard-swish (ReLU) and only 3x3 kernels.
      include_preprocessing: rescale ``[0, 255]`` images to ``[-1, 1]`` first
        (Keras' ``Rescaling(1 / 127.5, offset=-1)``).
      stride2_padding: see :func:`~sepconv_jax.models.blocks.conv_padding` (the
        stem always pads "SAME" unless ``"symmetric"``).
      bn_epsilon: the batch norms' epsilon (Keras 1e-3, timm 1e-5).
      num_classes, include_top, pooling, dropout_rate, classifier_activation, dtype,
        param_dtype, precision, impl: as every
        :class:`~sepconv_jax.models._common.Classifier` (``dropout_rate`` 0.2, Keras';
        without the top, the features are the last convolution's).

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

    forward = staticmethod(_mobilenet_v3)


def rescale_input(x: jax.Array) -> jax.Array:
    """``x / 127.5 - 1``: images in ``[0, 255]`` to ``[-1, 1]`` (Keras' ``Rescaling``)."""
    x = _common.float_input(x)
    return x * (1.0 / 127.5) - 1.0
