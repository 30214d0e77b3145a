"""EfficientNet: Tan & Le, 2019, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", Table 1 (B0) and compound scaling (B1-B7), as in
``keras.applications.EfficientNetB0`` ... ``EfficientNetB7``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

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
    conv_padding,
)
from sepconv_jax.models.mobilenet_v2 import make_divisible

__all__ = [
    "EfficientNet",
    "EfficientNetB0",
    "EfficientNetB1",
    "EfficientNetB2",
    "EfficientNetB3",
    "EfficientNetB4",
    "EfficientNetB5",
    "EfficientNetB6",
    "EfficientNetB7",
    "efficientnet_blocks",
]

#: (kernel, repeats, in channels, out channels, expansion, first stride) per stage of
#: B0 (Table 1); every block has squeeze-excite of ratio 0.25.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
SE_RATIO = 0.25
#: Keras' batch-norm momentum for EfficientNet (its default).
BN_MOMENTUM = 0.99
#: Keras' ``backend.epsilon()``, the floor of the normalization's standard deviation.
NORMALIZATION_EPSILON = _common.NORMALIZATION_EPSILON
#: Channel counts are rounded to multiples of this (Keras' ``depth_divisor``).
DEPTH_DIVISOR = 8

#: (width coefficient, depth coefficient, resolution, dropout rate) of B0 ... B7, as
#: ``keras.applications`` (and the reference implementation) define the compound
#: scaling; the paper's Eq. 3 with phi = 0 ... 7, rounded.
SCALING: dict[str, tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}


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


class EfficientNet(_common.Classifier):
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

    def __post_init__(self) -> None:
        super().__post_init__()
        _common.check_positive_float(self.width_coefficient, "width_coefficient")
        _common.check_positive_float(self.depth_coefficient, "depth_coefficient")
        _common.check_rate(self.drop_connect_rate, "drop_connect_rate")
        _layers.check_bool(self.include_preprocessing, "include_preprocessing")
        check_stride2_padding(self.stride2_padding)
        _common.check_positive_float(self.bn_epsilon, "bn_epsilon")

    def _round_filters(self, filters: int) -> int:
        return round_filters(filters, self.width_coefficient)

    def _preprocess(self, x: jax.Array) -> jax.Array:
        return _common.normalize_input(
            x, self.input_mean, self.input_variance, 1.0 / 255.0, type(self).__name__
        )

    def blocks(self) -> list[tuple[str, dict[str, Any]]]:
        """This model's MBConv blocks, see :func:`efficientnet_blocks`."""
        return efficientnet_blocks(
            self.width_coefficient,
            self.depth_coefficient,
            self.drop_connect_rate,
            self.stride2_padding,
        )

    @nn.compact
    def __call__(self, x: ArrayLike, train: bool = False) -> jax.Array:
        """Classifies images.

        Args:
          x: ``(batch, height, width, 3)`` images in ``[0, 255]`` (any size; Keras
            requires >= 32).
          train: batch statistics, dropout and stochastic depth when True (then pass
            ``mutable=["batch_stats"]`` and a ``"dropout"`` rng to ``apply``).

        Returns:
          ``(batch, num_classes)``, or the features when ``include_top=False``.
        """
        x = check_image(x, type(self).__name__)
        if self.include_preprocessing:
            x = self._preprocess(x)
        padding = conv_padding(3, 2, self.stride2_padding)

        def bn(name: str) -> nn.BatchNorm:
            return self._batch_norm(name, train, BN_MOMENTUM, self.bn_epsilon)

        x = self._conv(self._round_filters(32), 3, 2, padding, "stem_conv")(x)
        x = nn.swish(bn("stem_bn")(x))
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
        x = self._pointwise(self._round_filters(1280), "top_conv")(x)
        x = nn.swish(bn("top_bn")(x))
        return self._head(x, train)


class EfficientNetB0(EfficientNet):
    """EfficientNet-B0 (width and depth coefficients 1.0, dropout 0.2, 224 x 224).

    All attributes as :class:`EfficientNet`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.models import EfficientNetB0
      >>> model = EfficientNetB0(num_classes=5, include_top=False, pooling="avg")
      >>> x = jnp.zeros((1, 32, 32, 3))
      >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
      >>> jax.eval_shape(lambda v: model.apply(v, x), variables).shape
      (1, 1280)
    """


def _variant_doc(name: str) -> str:
    width, depth, size, dropout = SCALING[name.lower()[-2:]]
    return (
        f"EfficientNet-{name[-2:]} (width coefficient {width}, depth coefficient {depth}, "
        f"dropout {dropout}, {size} x {size}).\n\n    All attributes as :class:`EfficientNet`."
    )


class EfficientNetB1(EfficientNet):
    __doc__ = _variant_doc("B1")
    depth_coefficient: float = 1.1
    default_size: ClassVar[int] = 240


class EfficientNetB2(EfficientNet):
    __doc__ = _variant_doc("B2")
    width_coefficient: float = 1.1
    depth_coefficient: float = 1.2
    dropout_rate: float = 0.3
    default_size: ClassVar[int] = 260


class EfficientNetB3(EfficientNet):
    __doc__ = _variant_doc("B3")
    width_coefficient: float = 1.2
    depth_coefficient: float = 1.4
    dropout_rate: float = 0.3
    default_size: ClassVar[int] = 300


class EfficientNetB4(EfficientNet):
    __doc__ = _variant_doc("B4")
    width_coefficient: float = 1.4
    depth_coefficient: float = 1.8
    dropout_rate: float = 0.4
    default_size: ClassVar[int] = 380


class EfficientNetB5(EfficientNet):
    __doc__ = _variant_doc("B5")
    width_coefficient: float = 1.6
    depth_coefficient: float = 2.2
    dropout_rate: float = 0.4
    default_size: ClassVar[int] = 456


class EfficientNetB6(EfficientNet):
    __doc__ = _variant_doc("B6")
    width_coefficient: float = 1.8
    depth_coefficient: float = 2.6
    dropout_rate: float = 0.5
    default_size: ClassVar[int] = 528


class EfficientNetB7(EfficientNet):
    __doc__ = _variant_doc("B7")
    width_coefficient: float = 2.0
    depth_coefficient: float = 3.1
    dropout_rate: float = 0.5
    default_size: ClassVar[int] = 600


#: The variants by name (``"b0"`` ... ``"b7"``).
VARIANTS: dict[str, type[EfficientNet]] = {
    "b0": EfficientNetB0,
    "b1": EfficientNetB1,
    "b2": EfficientNetB2,
    "b3": EfficientNetB3,
    "b4": EfficientNetB4,
    "b5": EfficientNetB5,
    "b6": EfficientNetB6,
    "b7": EfficientNetB7,
}
