"""The reference architectures and their blocks as ``flax.nnx`` modules.

Every model of :mod:`sepconv_jax.models` has an NNX class of the same name here
(:class:`MobileNetV1`, :class:`MobileNetV2`, :class:`MobileNetV3Small`,
:class:`MobileNetV3Large`, :class:`EfficientNetB0` ... :class:`EfficientNetB7`,
:class:`Xception`, :class:`ConvNeXtTiny`, :class:`ConvNeXtSmall`,
:class:`ConvNeXtBase`, and the general :class:`EfficientNet` and :class:`ConvNeXt`),
taking the same options plus ``in_features`` (image channels, 3) and ``rngs=``; the
blocks are in :mod:`sepconv_jax.models.nnx.blocks`. Both APIs build from the same
block tables and carry the same parameter names, so :func:`from_linen` turns a
linen model and its variables (trained, or imported from Keras or timm) into the
NNX model computing the same outputs. :func:`abstract_model` builds one with
abstract parameters, quickly, for counting or as a skeleton.

NNX conventions apply: a model is built in training mode (batch statistics,
dropout and stochastic depth active, drawing from the ``"dropout"`` stream of the
``rngs`` it was built with); ``model.eval()`` switches to inference and
``model.train()`` back.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from sepconv_jax.models.nnx import MobileNetV3Small
  >>> model = MobileNetV3Small(num_classes=10, rngs=nnx.Rngs(0))
  >>> model.eval()
  >>> model(jnp.zeros((2, 32, 32, 3))).shape
  (2, 10)
  >>> model.block0.se.reduce.kernel.shape  # the linen model's names and shapes
  (16, 8)
"""

from sepconv_jax.models.nnx import blocks as blocks
from sepconv_jax.models.nnx._convert import abstract_model as abstract_model
from sepconv_jax.models.nnx._convert import from_linen as from_linen
from sepconv_jax.models.nnx.architectures import ConvNeXt as ConvNeXt
from sepconv_jax.models.nnx.architectures import ConvNeXtBase as ConvNeXtBase
from sepconv_jax.models.nnx.architectures import ConvNeXtSmall as ConvNeXtSmall
from sepconv_jax.models.nnx.architectures import ConvNeXtTiny as ConvNeXtTiny
from sepconv_jax.models.nnx.architectures import EfficientNet as EfficientNet
from sepconv_jax.models.nnx.architectures import EfficientNetB0 as EfficientNetB0
from sepconv_jax.models.nnx.architectures import EfficientNetB1 as EfficientNetB1
from sepconv_jax.models.nnx.architectures import EfficientNetB2 as EfficientNetB2
from sepconv_jax.models.nnx.architectures import EfficientNetB3 as EfficientNetB3
from sepconv_jax.models.nnx.architectures import EfficientNetB4 as EfficientNetB4
from sepconv_jax.models.nnx.architectures import EfficientNetB5 as EfficientNetB5
from sepconv_jax.models.nnx.architectures import EfficientNetB6 as EfficientNetB6
from sepconv_jax.models.nnx.architectures import EfficientNetB7 as EfficientNetB7
from sepconv_jax.models.nnx.architectures import MobileNetV1 as MobileNetV1
from sepconv_jax.models.nnx.architectures import MobileNetV2 as MobileNetV2
from sepconv_jax.models.nnx.architectures import MobileNetV3Large as MobileNetV3Large
from sepconv_jax.models.nnx.architectures import MobileNetV3Small as MobileNetV3Small
from sepconv_jax.models.nnx.architectures import Xception as Xception

__all__ = [
    "ConvNeXt",
    "ConvNeXtBase",
    "ConvNeXtSmall",
    "ConvNeXtTiny",
    "EfficientNet",
    "EfficientNetB0",
    "EfficientNetB1",
    "EfficientNetB2",
    "EfficientNetB3",
    "EfficientNetB4",
    "EfficientNetB5",
    "EfficientNetB6",
    "EfficientNetB7",
    "MobileNetV1",
    "MobileNetV2",
    "MobileNetV3Large",
    "MobileNetV3Small",
    "Xception",
    "abstract_model",
    "blocks",
    "from_linen",
]
