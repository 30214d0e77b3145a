"""sepconv_jax: depthwise separable convolutions for JAX and Flax.

The pure functions are re-exported here; the Flax modules, the cost model, the
reference models, weight conversion and the kernels live in documented
submodules, imported with the package. Everything public is listed in ``__all__``.
"""

from sepconv_jax import cost as cost
from sepconv_jax import interop as interop
from sepconv_jax import kernels as kernels
from sepconv_jax import linen as linen
from sepconv_jax import models as models
from sepconv_jax import nnx as nnx
from sepconv_jax.ops import depthwise_conv as depthwise_conv
from sepconv_jax.ops import grouped_conv as grouped_conv
from sepconv_jax.ops import pointwise_conv as pointwise_conv
from sepconv_jax.ops import separable_conv as separable_conv

__version__ = "0.1.0"

__all__ = [
    "cost",
    "depthwise_conv",
    "grouped_conv",
    "interop",
    "kernels",
    "linen",
    "models",
    "nnx",
    "pointwise_conv",
    "separable_conv",
]
