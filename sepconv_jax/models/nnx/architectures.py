"""The reference architectures of :mod:`sepconv_jax.models` as ``flax.nnx`` modules.

Each class has the name of its linen counterpart and takes the same options (the
linen model's fields, with the same defaults and checks: a linen model is built
from them to validate them), plus ``in_features`` (image channels, 3) and
``rngs=``. Both run the same forward function (:mod:`sepconv_jax.models._build`),
so parameters and batch statistics carry the linen model's names and shapes by
construction. The classes are generated from the registry
(:data:`sepconv_jax.models.spec.ARCHS`) and the family classes.
"""

from __future__ import annotations

from typing import Any

from sepconv_jax.models._build import NNXModel
from sepconv_jax.models._registry import BY_CLASS, nnx_class

#: The NNX class of every image family class and registry row, by class name.
CLASSES: dict[str, type[NNXModel]] = {
    name: nnx_class(name) for name, arch in BY_CLASS.items() if not arch.speech
}
Model = NNXModel

__all__ = sorted(CLASSES)


def __getattr__(name: str) -> Any:
    if name in CLASSES:
        return CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
