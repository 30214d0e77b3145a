"""The blocks of :mod:`sepconv_jax.models.blocks` as ``flax.nnx`` modules.

Each block takes the input width first, then the linen block's fields as keyword
options, and ``rngs=`` (:mod:`sepconv_jax.models._build`). It is built in training mode;
``block.eval()`` / ``block.train()`` switch it.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from sepconv_jax.models.nnx.blocks import InvertedResidual
  >>> block = InvertedResidual(8, features=8, expand_ratio=6, se_ratio=0.25, rngs=nnx.Rngs(0))
  >>> block.expand.kernel.shape, block.se.reduce.kernel.shape
  ((8, 48), (48, 2))
  >>> block.eval()
  >>> block(jnp.ones((2, 6, 6, 8))).shape
  (2, 6, 6, 8)
"""

from __future__ import annotations

from sepconv_jax.models import blocks as _linen
from sepconv_jax.models._build import NNXBlock, nnx_class

__all__ = [name for name in _linen.__all__ if name[0].isupper()]

DepthwiseSeparableBlock = nnx_class(_linen.DepthwiseSeparableBlock, __name__, NNXBlock)
SqueezeExcite = nnx_class(_linen.SqueezeExcite, __name__, NNXBlock)
InvertedResidual = nnx_class(_linen.InvertedResidual, __name__, NNXBlock)
XceptionBlock = nnx_class(_linen.XceptionBlock, __name__, NNXBlock)
ConvNeXtBlock = nnx_class(_linen.ConvNeXtBlock, __name__, NNXBlock)
#: EfficientNet's name for :class:`InvertedResidual`.
MBConv = InvertedResidual
