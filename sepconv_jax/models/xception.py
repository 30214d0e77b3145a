"""Xception: Chollet, 2017, "Xception: Deep Learning with Depthwise Separable
Convolutions", Fig. 5, as in ``keras.applications.Xception``."""

from __future__ import annotations

import flax.linen as nn
import jax
from jax.typing import ArrayLike

from sepconv_jax.models import _common
from sepconv_jax.models.blocks import XceptionBlock, check_image

__all__ = ["Xception"]

#: (separable conv widths, stride, ReLU first) of blocks 2 to 13: entry flow (2-4),
#: middle flow (5-12), first exit-flow block (13).
BLOCKS: tuple[tuple[tuple[int, ...], int, bool], ...] = (
    ((128, 128), 2, False),
    ((256, 256), 2, True),
    ((728, 728), 2, True),
    *((((728, 728, 728), 1, True),) * 8),
    ((728, 1024), 2, True),
)
#: Keras' batch-norm momentum for Xception (its default).
BN_MOMENTUM = 0.99
#: The smallest input side the two unpadded stem convolutions leave a pixel of.
MIN_SIZE = 7


class Xception(_common.Classifier):
    """Xception: entry, middle and exit flows of separable convolutions with shortcuts.

    Layout (Chollet, 2017, Fig. 5): two unpadded 3x3 convolutions (32 filters of
    stride 2, then 64), three entry-flow
    :class:`~sepconv_jax.models.blocks.XceptionBlock` (128, 256, 728 channels, each
    halving the resolution), eight middle-flow blocks of three 728-channel separable
    convolutions with identity shortcuts, an exit-flow block (728, 1024), two
    separable convolutions (1536, 2048) with ReLU, global average pooling and a
    dense layer. Every convolution is followed by batch norm; batch-norm constants
    and padding follow ``keras.applications.Xception`` so its weights convert
    exactly.

    Attributes:
      num_classes: outputs of the classifier.
      include_top: end with the classifier; otherwise return features.
      pooling: without the top: ``None``, ``"avg"`` or ``"max"``.
      dropout_rate: dropout before the classifier (the paper trains with 0.5 on
        ImageNet; Keras' model has none, the default 0 here).
      classifier_activation: applied to the logits; ``None`` returns logits.
      dtype, param_dtype, precision, impl: numerics, passed to every layer.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.models import Xception
      >>> model = Xception(num_classes=10)
      >>> x = jnp.zeros((1, 71, 71, 3))
      >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
      >>> jax.eval_shape(lambda v: model.apply(v, x), variables).shape
      (1, 10)
    """

    @nn.compact
    def __call__(self, x: ArrayLike, train: bool = False) -> jax.Array:
        """Classifies images.

        Args:
          x: ``(batch, height, width, 3)`` images, each side at least 7 (Keras
            requires 71).
          train: batch statistics and dropout when True (then pass
            ``mutable=["batch_stats"]``, and a ``"dropout"`` rng if
            ``dropout_rate > 0``).

        Returns:
          ``(batch, num_classes)``, or the features when ``include_top=False``.
        """
        x = check_image(x, "Xception")
        if min(x.shape[1:3]) < MIN_SIZE:
            raise ValueError(
                f"`x` has shape {x.shape}; Xception's unpadded stem needs height and width "
                f">= {MIN_SIZE}"
            )

        def bn(name: str) -> nn.BatchNorm:
            return self._batch_norm(name, train, BN_MOMENTUM)

        x = nn.relu(bn("block1_conv1_bn")(self._conv(32, 3, 2, "VALID", "block1_conv1")(x)))
        x = nn.relu(bn("block1_conv2_bn")(self._conv(64, 3, 1, "VALID", "block1_conv2")(x)))
        for i, (features, strides, activate_first) in enumerate(BLOCKS, 2):
            x = XceptionBlock(
                features=features,
                strides=strides,
                activate_first=activate_first,
                bn_momentum=BN_MOMENTUM,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                precision=self.precision,
                impl=self.impl,
                name=f"block{i}",
            )(x, train)
        for j, width in enumerate((1536, 2048), 1):
            x = self._separable(width, f"block14_sepconv{j}")(x)
            x = nn.relu(bn(f"block14_sepconv{j}_bn")(x))
        return self._head(x, train)
