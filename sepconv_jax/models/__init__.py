"""Reference architectures built from :mod:`sepconv_jax.linen` modules (flax.linen).

* the image models :class:`MobileNetV1`, :class:`MobileNetV2`, :class:`MobileNetV3Small` /
  :class:`MobileNetV3Large`, :class:`EfficientNetB0` ... :class:`EfficientNetB7` /
  :class:`EfficientNet`, :class:`Xception`, :class:`ConvNeXtTiny` /
  :class:`ConvNeXtSmall` / :class:`ConvNeXtBase` / :class:`ConvNeXt`, their blocks in
  :mod:`sepconv_jax.models.blocks`, and their ``flax.nnx`` versions in
  :mod:`sepconv_jax.models.nnx` (:func:`sepconv_jax.models.nnx.from_linen`);
* the speech models :class:`MatchboxNet` and :class:`QuartzNet` in
  :mod:`sepconv_jax.models.speech` (NNX: :mod:`sepconv_jax.models.speech_nnx`);
* :func:`from_name`, every architecture by name (:data:`NAMES`, :data:`SPEECH_NAMES`),
  in either API, built from the rows of :mod:`sepconv_jax.models.spec`.

Every image model takes channels-last images ``(batch, height, width, 3)`` (the
speech models take feature frames ``(batch, time, features)``, follow NVIDIA NeMo's
conventions rather than Keras', and stream with ``decode=True``: see
:mod:`sepconv_jax.models.speech`) and is used as any Flax model: ``variables = model.init(key, x, train=False)`` gives ``params``
and ``batch_stats``; ``model.apply(variables, x, train=False)`` runs inference and
``model.apply(variables, x, train=True, mutable=["batch_stats"],
rngs={"dropout": key})`` a training step. Architectures, padding and batch-norm
constants follow ``keras.applications`` so that Keras weights load exactly with
:func:`sepconv_jax.interop.keras.convert`; parameter counts equal Keras' trainable
parameter counts.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from sepconv_jax.models import MobileNetV1
  >>> model = MobileNetV1(num_classes=10, width_multiplier=0.25)
  >>> x = jnp.zeros((1, 32, 32, 3))
  >>> variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  >>> def train_step(variables, x, key):
  ...     return model.apply(
  ...         variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})
  >>> logits, updates = jax.eval_shape(train_step, variables, x, jax.random.key(1))
  >>> logits.shape, sorted(updates)
  ((1, 10), ['batch_stats'])
"""

from typing import Any

from sepconv_jax.models import blocks as blocks
from sepconv_jax.models import spec as spec
from sepconv_jax.models._registry import NAMES as NAMES
from sepconv_jax.models._registry import SPEECH_NAMES as SPEECH_NAMES
from sepconv_jax.models._registry import Name as Name
from sepconv_jax.models._registry import from_name as from_name
from sepconv_jax.models.blocks import ConvNeXtBlock as ConvNeXtBlock
from sepconv_jax.models.blocks import DepthwiseSeparableBlock as DepthwiseSeparableBlock
from sepconv_jax.models.blocks import InvertedResidual as InvertedResidual
from sepconv_jax.models.blocks import MBConv as MBConv
from sepconv_jax.models.blocks import SqueezeExcite as SqueezeExcite
from sepconv_jax.models.blocks import XceptionBlock as XceptionBlock
from sepconv_jax.models.convnext import ConvNeXt as ConvNeXt
from sepconv_jax.models.efficientnet import EfficientNet as EfficientNet
from sepconv_jax.models.mobilenet_v1 import MobileNetV1 as MobileNetV1
from sepconv_jax.models.mobilenet_v1 import mobilenet_v1_widths as mobilenet_v1_widths
from sepconv_jax.models.mobilenet_v2 import MobileNetV2 as MobileNetV2
from sepconv_jax.models.mobilenet_v2 import make_divisible as make_divisible
from sepconv_jax.models.mobilenet_v2 import mobilenet_v2_widths as mobilenet_v2_widths
from sepconv_jax.models.mobilenet_v3 import MobileNetV3 as MobileNetV3
from sepconv_jax.models.speech import MatchboxNet as MatchboxNet
from sepconv_jax.models.speech import QuartzNet as QuartzNet
from sepconv_jax.models.speech import TimeChannelSeparableBlock as TimeChannelSeparableBlock
from sepconv_jax.models.xception import Xception as Xception

#: The classes generated from registry rows (``EfficientNetB0`` ... ``ConvNeXtBase``).
VARIANTS: tuple[str, ...] = tuple(
    a.class_name for a in spec.ARCHS.values() if a.class_name != a.family_class
)
#: Every class the registry names (a family module's class is found through its row).
_REGISTERED = tuple(
    dict.fromkeys(n for a in spec.ARCHS.values() for n in (a.family_class, a.class_name))
)

__all__ = sorted(
    {
        "NAMES",
        "SPEECH_NAMES",
        "ConvNeXt",
        "ConvNeXtBlock",
        "DepthwiseSeparableBlock",
        "EfficientNet",
        "InvertedResidual",
        "MBConv",
        "MatchboxNet",
        "MobileNetV1",
        "MobileNetV2",
        "MobileNetV3",
        "Name",
        "QuartzNet",
        "SqueezeExcite",
        "TimeChannelSeparableBlock",
        "Xception",
        "XceptionBlock",
        "blocks",
        "from_name",
        "make_divisible",
        "mobilenet_v1_widths",
        "mobilenet_v2_widths",
        "nnx",
        "spec",
        *_REGISTERED,
    }
)


# Submodules not imported above (``models.nnx``, the ``flax.nnx`` versions, and
# ``models.speech_nnx``) load when first touched (PEP 562), as do the registry's
# generated classes.


def __getattr__(name: str) -> Any:
    """A class the registry generates, or a submodule, made or imported on first access."""
    if name in _REGISTERED:
        from sepconv_jax.models._registry import linen_class

        return linen_class(name)
    from sepconv_jax import _lazy

    return _lazy.submodule(__name__, __path__, globals(), name)


def __dir__() -> list[str]:
    from sepconv_jax import _lazy

    return sorted(set(_lazy.listing(__path__, globals())) | set(_REGISTERED))
