"""The image architectures of :mod:`sepconv_jax.models` as ``flax.nnx`` modules, generated
from the registry rows and the family classes (:mod:`sepconv_jax.models._build`)."""

from __future__ import annotations

from typing import Any

from sepconv_jax.models._build import NNXModel
from sepconv_jax.models._registry import BY_CLASS, nnx_class

#: The NNX class of every image family class and registry row, by class name.
CLASSES: dict[str, type[NNXModel]] = {
    name: nnx_class(name) for name, arch in BY_CLASS.items() if not arch.speech
}
__all__ = sorted(CLASSES)


def __getattr__(name: str) -> Any:
    if name in CLASSES:
        return CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
