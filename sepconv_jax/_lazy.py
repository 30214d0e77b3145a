"""Submodules as attributes of their package, imported on first access (PEP 562).

Each package ``__init__`` of sepconv_jax defines ``__getattr__`` and ``__dir__`` with
the two functions below, so that every submodule is reachable the way users type it
(``sepconv_jax.interop.timm.convert``) without being imported by ``import
sepconv_jax``: a name that is a submodule of the package (a ``.py`` file or a folder
with an ``__init__.py`` beside the package's ``__init__``) is imported when first
looked up and then bound on the package, as an explicit import would bind it.

Example:
  >>> import sys
  >>> import sepconv_jax
  >>> "timm" in dir(sepconv_jax.interop)
  True
  >>> sepconv_jax.interop.timm.__name__
  'sepconv_jax.interop.timm'
  >>> "sepconv_jax.interop.timm" in sys.modules
  True
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Iterable, MutableMapping
from typing import Any


@functools.cache
def _submodules(path: tuple[str, ...]) -> frozenset[str]:
    return frozenset(info.name for info in pkgutil.iter_modules(list(path)))


def submodule(package: str, path: Iterable[str], namespace: MutableMapping[str, Any], name: str):
    """The submodule ``name`` of ``package``, imported now and bound in its ``namespace``.

    Args:
      package: the package's ``__name__``.
      path: the package's ``__path__``.
      namespace: the package's ``globals()``.
      name: the attribute looked up.

    Raises:
      AttributeError: when ``name`` is not a submodule of the package, as for any
        missing attribute.
    """
    if name.startswith("__") or name not in _submodules(tuple(path)):
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    module = importlib.import_module(f"{package}.{name}")
    namespace[name] = module
    return module


def listing(path: Iterable[str], namespace: MutableMapping[str, Any]) -> list[str]:
    """The package's names and its submodules, imported or not, for ``dir()``."""
    return sorted(set(namespace) | _submodules(tuple(path)))
