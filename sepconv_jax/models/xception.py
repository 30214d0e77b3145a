"""Xception: Chollet, 2017, "Xception: Deep Learning with Depthwise Separable
Convolutions", Fig. 5, as in ``keras.applications.Xception``."""

from __future__ import annotations

import flax.linen as nn
import jax

from sepconv_jax.models import _common, spec
from sepconv_jax.models._build import Builder, Linen
from sepconv_jax.models.blocks import XceptionBlock, check_image

__all__ = ["Xception"]

BLOCKS = spec.XCEPTION_BLOCKS
BN_MOMENTUM = spec.XCEPTION_BN_MOMENTUM
MIN_SIZE = spec.XCEPTION_MIN_SIZE


def _xception(config: Xception, b: Builder, x: jax.Array) -> jax.Array:
    x = check_image(x, "Xception")
    if not b.building and min(x.shape[1:3]) < MIN_SIZE:
        raise ValueError(
            f"`x` has shape {x.shape}; Xception's unpadded stem needs height and width "
            f">= {MIN_SIZE}"
        )

    def conv_bn(name: str, x: jax.Array) -> jax.Array:
        return nn.relu(b.batch_norm(f"{name}_bn", x, BN_MOMENTUM, _common.BN_EPSILON))

    x = conv_bn("block1_conv1", b.conv("block1_conv1", x, 32, 3, 2, "VALID"))
    x = conv_bn("block1_conv2", b.conv("block1_conv2", x, 64, 3, 1, "VALID"))
    for i, (features, strides, activate_first) in enumerate(BLOCKS, 2):
        x = b.block(f"block{i}", XceptionBlock, x, features=features, strides=strides,
                    activate_first=activate_first, bn_momentum=BN_MOMENTUM)  # fmt: skip
    for j, width in enumerate((1536, 2048), 1):
        x = conv_bn(f"block14_sepconv{j}", b.separable(f"block14_sepconv{j}", x, width))
    return _common.head(config, b, x)


class Xception(Linen, _common.Classifier):
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
      >>> model = Xception(include_top=False, pooling="max")
      >>> features = jax.eval_shape(model.init_with_output, jax.random.key(0), jnp.zeros((2, 71, 71, 3)))
      >>> features[0].shape  # the exit flow's 2048 channels, max-pooled
      (2, 2048)
    """

    forward = staticmethod(_xception)
