"""sepconv_jax: depthwise separable convolutions for JAX and Flax.

The pure functions are re-exported here; the Flax modules, the streaming step
functions, the cost model and the kernels are documented submodules, imported with
the package. The reference
models (``sepconv_jax.models``), weight conversion (``sepconv_jax.interop``) and the
exporters (``sepconv_jax.export``) are imported when first used, so that ``import
sepconv_jax`` stays light: every submodule of every package is an attribute of its
parent, loaded on first access (``sepconv_jax.interop.timm.convert(model)`` works
after ``import sepconv_jax`` alone). Everything public is listed in ``__all__``.
What the command line runs lives in ``sepconv_jax.apps``, which is not library API
and which the library never imports.
"""

from typing import TYPE_CHECKING, Any

from sepconv_jax import _lazy
from sepconv_jax import cost as cost
from sepconv_jax import kernels as kernels
from sepconv_jax import linen as linen
from sepconv_jax import nnx as nnx
from sepconv_jax import streaming as streaming
from sepconv_jax.ops import depthwise_conv as depthwise_conv
from sepconv_jax.ops import grouped_conv as grouped_conv
from sepconv_jax.ops import pointwise_conv as pointwise_conv
from sepconv_jax.ops import separable_conv as separable_conv

if TYPE_CHECKING:
    from sepconv_jax import export as export
    from sepconv_jax import interop as interop
    from sepconv_jax import models as models
    from sepconv_jax import runtime as runtime

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
    "runtime",
    "separable_conv",
    "streaming",
]

# Submodules imported on first attribute access (PEP 562): the model zoo pulls in
# every architecture, interop the Keras application tables, export the exporters.


def __getattr__(name: str) -> Any:
    return _lazy.submodule(__name__, __path__, globals(), name)


def __dir__() -> list[str]:
    return _lazy.listing(__path__, globals())
