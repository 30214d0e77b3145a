"""EfficientNet: Tan & Le, 2019, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", Table 1 (B0) and compound scaling (B1-B7), as in
``keras.applications.EfficientNetB0`` ... ``EfficientNetB7``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax

from sepconv_jax.models import _common, spec
from sepconv_jax.models._build import Builder, Linen
from sepconv_jax.models.blocks import (
    InvertedResidual,
    Stride2Padding,
    check_image,
    conv_padding,
)
from sepconv_jax.models.mobilenet_v2 import make_divisible

__all__ = ["EfficientNet", "efficientnet_blocks"]

STAGES = spec.EFFICIENTNET_STAGES
SE_RATIO = spec.EFFICIENTNET_SE_RATIO
BN_MOMENTUM = spec.EFFICIENTNET_BN_MOMENTUM
#: Keras' ``backend.epsilon()``, the floor of the normalization's standard deviation.
NORMALIZATION_EPSILON = _common.NORMALIZATION_EPSILON
DEPTH_DIVISOR = spec.EFFICIENTNET_DEPTH_DIVISOR
SCALING = spec.EFFICIENTNET_SCALING


def round_filters(filters: int, width_coefficient: float) -> int:
    """Keras' ``round_filters``: ``filters * width_coefficient`` to a multiple of 8."""
    return make_divisible(filters * width_coefficient, DEPTH_DIVISOR)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    """Keras' ``round_repeats``: ``ceil(depth_coefficient * repeats)``."""
    return math.ceil(depth_coefficient * repeats)


def efficientnet_blocks(
    width_coefficient: float,
    depth_coefficient: float,
    drop_connect_rate: float,
    stride2_padding: Stride2Padding,
) -> list[tuple[str, dict[str, Any]]]:
    """Every MBConv block: ``(name, InvertedResidual fields)`` in order.

    Stage ``i`` (1-based) repeats its block ``round_repeats(repeats)`` times, named
    ``block{i}a``, ``block{i}b``, ... as in Keras; the stochastic depth rate grows
    linearly from 0 to ``drop_connect_rate`` over all blocks (the ``b``-th of ``n``
    blocks drops with rate ``drop_connect_rate * b / n``). One table for the linen
    and the NNX model.
    """
    total = sum(round_repeats(stage[1], depth_coefficient) for stage in STAGES)
    out: list[tuple[str, dict[str, Any]]] = []
    for i, (kernel, repeats, _, features, expand, first_stride) in enumerate(STAGES):
        for j in range(round_repeats(repeats, depth_coefficient)):
            kwargs = dict(
                features=round_filters(features, width_coefficient),
                expand_ratio=expand,
                kernel_size=kernel,
                strides=first_stride if j == 0 else 1,
                se_ratio=SE_RATIO,
                drop_rate=drop_connect_rate * len(out) / total,
                activation=nn.swish,
                stride2_padding=stride2_padding,
                bn_momentum=BN_MOMENTUM,
            )
            out.append((f"block{i + 1}{chr(ord('a') + j)}", kwargs))
    return out


def _efficientnet(config: EfficientNet, b: Builder, x: jax.Array) -> jax.Array:
    x = check_image(x, type(config).__name__)
    if config.include_preprocessing:
        x = _common.normalize_input(
            x, config.input_mean, config.input_variance, 1.0 / 255.0, type(config).__name__
        )
    width, epsilon = config.width_coefficient, config.bn_epsilon
    padding = conv_padding(3, 2, config.stride2_padding)
    x = b.conv("stem_conv", x, round_filters(32, width), 3, 2, padding)
    x = nn.swish(b.batch_norm("stem_bn", x, BN_MOMENTUM, epsilon))
    for name, kwargs in config.blocks():
        x = b.block(name, InvertedResidual, x, **kwargs, bn_epsilon=epsilon)
    x = b.pointwise("top_conv", x, round_filters(1280, width))
    x = nn.swish(b.batch_norm("top_bn", x, BN_MOMENTUM, epsilon))
    return _common.head(config, b, x)


class EfficientNet(Linen, _common.Classifier):
    """EfficientNet: MBConv blocks with squeeze-excite, swish and stochastic depth.

    Layout (Tan & Le, 2019, Table 1, scaled by ``width_coefficient`` and
    ``depth_coefficient``): input preprocessing, a 3x3 convolution of stride 2, 16
    :class:`~sepconv_jax.models.blocks.MBConv` blocks (B0) in seven stages, a 1x1
    convolution to 1280 channels, global average pooling, dropout and a dense layer.
    The stochastic depth rate grows linearly from 0 to ``drop_connect_rate`` over the
    blocks. Padding, preprocessing and batch-norm constants (epsilon 1e-3, momentum
    0.99) follow ``keras.applications.EfficientNet*`` so its weights convert exactly.

    Preprocessing (``include_preprocessing=True``), as Keras' ``Rescaling`` and
    ``Normalization`` layers: ``(x / 255 - input_mean) / max(sqrt(input_variance),
    1e-7)``, per channel. Images are expected in ``[0, 255]``.

    Attributes:
      num_classes: outputs of the classifier.
      width_coefficient: channel scaling (1.0 for B0).
      depth_coefficient: repeat scaling (1.0 for B0).
      include_top: end with the classifier; otherwise return features.
      pooling: without the top: ``None``, ``"avg"`` or ``"max"``.
      dropout_rate: dropout before the classifier (0.2 for B0).
      drop_connect_rate: stochastic depth rate of the last block.
      include_preprocessing: apply the rescaling and normalization above.
      input_mean: per-channel mean of the normalization (Keras' default 0).
      input_variance: per-channel variance of the normalization (Keras' default 1).
      classifier_activation: applied to the logits; ``None`` returns logits.
      stride2_padding: see :func:`~sepconv_jax.models.blocks.conv_padding`;
        ``"symmetric"`` is timm's ``efficientnet_b*``, ``"same"`` Keras' models built
        for a known size and timm's ``tf_efficientnet_b*``.
      bn_epsilon: the batch norms' epsilon (Keras and timm's ``tf_`` models 1e-3,
        timm's others 1e-5).
      dtype, param_dtype, precision, impl: numerics, passed to every layer.

    ``default_size`` (a class attribute) is the input side each variant was scaled
    for (224 for B0 ... 600 for B7); any size at least 32 works.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.models import EfficientNetB0
      >>> model = EfficientNetB0(num_classes=10)
      >>> x = jnp.zeros((1, 32, 32, 3))
      >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
      >>> jax.eval_shape(lambda v: model.apply(v, x), variables).shape
      (1, 10)
    """

    dropout_rate: float = 0.2
    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0
    drop_connect_rate: float = 0.2
    include_preprocessing: bool = True
    input_mean: Sequence[float] = (0.0, 0.0, 0.0)
    input_variance: Sequence[float] = (1.0, 1.0, 1.0)
    stride2_padding: Stride2Padding = "same"
    bn_epsilon: float = _common.BN_EPSILON

    default_size: ClassVar[int] = 224

    def blocks(self) -> list[tuple[str, dict[str, Any]]]:
        """This model's MBConv blocks, see :func:`efficientnet_blocks`."""
        return efficientnet_blocks(
            self.width_coefficient,
            self.depth_coefficient,
            self.drop_connect_rate,
            self.stride2_padding,
        )

    forward = staticmethod(_efficientnet)
