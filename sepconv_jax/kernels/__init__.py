"""The depthwise operation and its interchangeable kernels.

* :mod:`~sepconv_jax.kernels.op`: the depthwise convolution as three JAX primitives
  (the convolution and its two transposes) with their jvp, transposes, batching and
  one lowering rule per platform. Every transformation is defined here, once.
* :mod:`~sepconv_jax.kernels.dispatch`: the registry of kernels and the rule that
  picks one for ``impl="auto"`` per platform when the primitives are lowered.
* :mod:`~sepconv_jax.kernels.xla` (``lax.conv_general_dilated`` with
  ``feature_group_count``, the reference) and :mod:`~sepconv_jax.kernels.shift`
  (shifted multiply-accumulates, fast on XLA:CPU): each is three maps, called on
  arrays flattened to one batch dim, promoted to one dtype, and padded when
  ``padding_mode`` is not ``"zeros"``.

A new kernel is three such maps registered in :mod:`~sepconv_jax.kernels.dispatch`;
the reference suite of ``tests/test_kernels.py`` and the transformation matrix of
``tests/test_transforms.py`` then run over it.
"""

from typing import Any

from sepconv_jax import _lazy


def __getattr__(name: str) -> Any:
    """Submodules not yet imported load on first access (PEP 562)."""
    return _lazy.submodule(__name__, __path__, globals(), name)


def __dir__() -> list[str]:
    return _lazy.listing(__path__, globals())
