"""Weight conversion between our layouts and PyTorch's and Keras 3's.

* :mod:`sepconv_jax.interop.torch`: ``torch.nn.Conv{1,2,3}d`` weights (depthwise
  with ``groups = in_channels``, pointwise with a 1x1 window, or any ``groups``)
  to our kernels and back.
* :mod:`sepconv_jax.interop.keras`: Keras 3 ``DepthwiseConv{1,2}D``,
  ``SeparableConv{1,2}D`` and ``Conv{1,2,3}D`` weights to our params and back.

Every function takes plain arrays (NumPy, or framework tensors through
``np.asarray``) and returns NumPy arrays in dicts keyed by our parameter names
(``kernel``, ``bias``, ``depthwise_kernel``, ``pointwise_kernel``,
``depthwise_bias``), ready to be placed under ``{"params": ...}`` for a linen
module or assigned to an NNX module. Neither framework is imported.

Example:
  >>> import numpy as np
  >>> from sepconv_jax.interop import keras, torch
  >>> torch.depthwise_from_torch(np.zeros((6, 1, 3, 3)))["kernel"].shape
  (3, 3, 1, 6)
  >>> keras.depthwise_from_keras(np.zeros((3, 3, 3, 2)))["kernel"].shape
  (3, 3, 1, 6)
"""

from typing import Any

from sepconv_jax import _lazy
from sepconv_jax.interop import keras as keras
from sepconv_jax.interop import torch as torch

__all__ = ["keras", "torch"]


def __getattr__(name: str) -> Any:
    """Submodules not yet imported load on first access (PEP 562)."""
    return _lazy.submodule(__name__, __path__, globals(), name)


def __dir__() -> list[str]:
    return _lazy.listing(__path__, globals())
