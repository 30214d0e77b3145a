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
    Stride2Padding,
    check_image,
    conv_padding,
    inverted_residual_body,
)
from sepconv_jax.models.mobilenet_v2 import make_divisible

__all__ = ["EfficientNet", "efficientnet_blocks"]

STAGES = spec.EFFICIENTNET_STAGES


def round_filters(filters: int, width_coefficient: float) -> int:
    """Keras' ``round_filters``: ``filters * width_coefficient`` to a multiple of 8."""
    return make_divisible(filters * width_coefficient, spec.EFFICIENTNET_DEPTH_DIVISOR)


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
                se_ratio=spec.EFFICIENTNET_SE_RATIO,
                drop_rate=drop_connect_rate * len(out) / total,
                activation=nn.swish,
                stride2_padding=stride2_padding,
                bn_momentum=spec.EFFICIENTNET_BN_MOMENTUM,
            )
            out.append((f"block{i + 1}{chr(ord('a') + j)}", kwargs))
    return out


def _efficientnet(config: EfficientNet, b: Builder, x: jax.Array) -> jax.Array:
    x = check_image(x, type(config).__name__)
    if config.include_preprocessing:
        x = _common.normalize_input(
            x, config.input_mean, config.input_variance, 1.0 / 255.0, type(config).__name__
        )
    width, padding = config.width_coefficient, config.stride2_padding
    blocks = efficientnet_blocks(width, config.depth_coefficient, config.drop_connect_rate, padding)
    x = inverted_residual_body(
        config, b, x, blocks, stem=("stem_conv", "stem_bn", round_filters(32, width)),
        top=("top_conv", "top_bn", round_filters(1280, width)),
        stem_padding=conv_padding(3, 2, padding), activation=nn.swish,
        bn_momentum=spec.EFFICIENTNET_BN_MOMENTUM,
    )  # fmt: skip
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
      width_coefficient: channel scaling (1.0 for B0).
      depth_coefficient: repeat scaling (1.0 for B0).
      drop_connect_rate: stochastic depth rate of the last block.
      include_preprocessing: apply the rescaling and normalization above.
      input_mean: per-channel mean of the normalization (Keras' default 0).
      input_variance: per-channel variance of the normalization (Keras' default 1).
      stride2_padding: see :func:`~sepconv_jax.models.blocks.conv_padding`;
        ``"symmetric"`` is timm's ``efficientnet_b*``, ``"same"`` Keras' models built
        for a known size and timm's ``tf_efficientnet_b*``.
      bn_epsilon: the batch norms' epsilon (Keras and timm's ``tf_`` models 1e-3,
        timm's others 1e-5).
      num_classes, include_top, pooling, dropout_rate, classifier_activation, dtype,
        param_dtype, precision, impl: as every
        :class:`~sepconv_jax.models._common.Classifier` (``dropout_rate`` 0.2 for B0).

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

    forward = staticmethod(_efficientnet)
