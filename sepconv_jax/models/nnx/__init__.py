"""The reference architectures and their blocks as ``flax.nnx`` modules.

Every image model of :mod:`sepconv_jax.models` has an NNX class of the same name here
(:mod:`~sepconv_jax.models.nnx.architectures`), taking the same options plus
``in_features`` (image channels, 3) and ``rngs=``; the blocks are in
:mod:`sepconv_jax.models.nnx.blocks`. :func:`from_linen` turns a linen model and its
variables (trained, or imported from Keras or timm) into the NNX model computing the
same outputs; :func:`abstract_model` builds one with abstract parameters, quickly.

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

from typing import Any

from sepconv_jax.models._build import NNXModel as NNXModel
from sepconv_jax.models.nnx import blocks as blocks
from sepconv_jax.models.nnx._convert import abstract_model as abstract_model
from sepconv_jax.models.nnx._convert import from_linen as from_linen
from sepconv_jax.models.nnx.architectures import CLASSES as _CLASSES

__all__ = sorted([*_CLASSES, "NNXModel", "abstract_model", "blocks", "from_linen"])


def __getattr__(name: str) -> Any:
    """The NNX class of every image architecture of the registry, by its linen name."""
    if name in _CLASSES:
        return _CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
