"""EfficientNet: Tan & Le, 2019, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", Table 1 (B0), as in ``keras.applications.EfficientNetB0``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
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

__all__ = ["EfficientNet", "EfficientNetB0"]

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
NORMALIZATION_EPSILON = 1e-7


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
      stride2_padding: see :func:`~sepconv_jax.models.blocks.conv_padding`.
      dtype, param_dtype, precision, impl: numerics, passed to every layer.

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

    def __post_init__(self) -> None:
        super().__post_init__()
        _common.check_positive_float(self.width_coefficient, "width_coefficient")
        _common.check_positive_float(self.depth_coefficient, "depth_coefficient")
        _common.check_rate(self.drop_connect_rate, "drop_connect_rate")
        _layers.check_bool(self.include_preprocessing, "include_preprocessing")
        check_stride2_padding(self.stride2_padding)

    def _round_filters(self, filters: int) -> int:
        return make_divisible(filters * self.width_coefficient, 8)

    def _round_repeats(self, repeats: int) -> int:
        return math.ceil(self.depth_coefficient * repeats)

    def _preprocess(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        if len(self.input_mean) != channels or len(self.input_variance) != channels:
            raise ValueError(
                f"`input_mean` and `input_variance` have {len(self.input_mean)} and "
                f"{len(self.input_variance)} values but `x` has {channels} channels; give one "
                f"per channel or set include_preprocessing=False"
            )
        dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
        mean = jnp.asarray(self.input_mean, dtype).reshape(1, 1, 1, channels)
        std = jnp.sqrt(jnp.asarray(self.input_variance, dtype))
        std = jnp.maximum(std, NORMALIZATION_EPSILON).reshape(1, 1, 1, channels)
        return (x.astype(dtype) * (1.0 / 255.0) - mean) / std

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
        x = self._conv(self._round_filters(32), 3, 2, padding, "stem_conv")(x)
        x = nn.swish(self._batch_norm("stem_bn", train, BN_MOMENTUM)(x))
        total = sum(self._round_repeats(stage[1]) for stage in STAGES)
        index = 0
        for i, (kernel, repeats, _, out, expand, first_stride) in enumerate(STAGES):
            for j in range(self._round_repeats(repeats)):
                x = InvertedResidual(
                    features=self._round_filters(out),
                    expand_ratio=expand,
                    kernel_size=kernel,
                    strides=first_stride if j == 0 else 1,
                    se_ratio=SE_RATIO,
                    drop_rate=self.drop_connect_rate * index / total,
                    activation=nn.swish,
                    stride2_padding=self.stride2_padding,
                    bn_momentum=BN_MOMENTUM,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    precision=self.precision,
                    impl=self.impl,
                    name=f"block{i + 1}{chr(ord('a') + j)}",
                )(x, train)
                index += 1
        x = self._pointwise(self._round_filters(1280), "top_conv")(x)
        x = nn.swish(self._batch_norm("top_bn", train, BN_MOMENTUM)(x))
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
