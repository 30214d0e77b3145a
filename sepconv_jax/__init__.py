"""sepconv_jax: depthwise separable convolutions for JAX and Flax.

The public API is re-exported here and listed in ``__all__``; everything else is
private or lives in a documented submodule.
"""

from sepconv_jax.ops import depthwise_conv as depthwise_conv
from sepconv_jax.ops import grouped_conv as grouped_conv
from sepconv_jax.ops import pointwise_conv as pointwise_conv
from sepconv_jax.ops import separable_conv as separable_conv

__version__ = "0.1.0"

__all__ = [
    "depthwise_conv",
    "grouped_conv",
    "pointwise_conv",
    "separable_conv",
]
