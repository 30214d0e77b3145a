"""Chooses a kernel for ``impl="auto"`` and checks explicit choices.

The rule, by backend and shape:

* every backend: ``"xla"`` (``lax.conv_general_dilated`` with
  ``feature_group_count``), the reference implementation.

Faster implementations register here as they land; the rule above is the
documentation of what ``"auto"`` does.
"""

from __future__ import annotations

from collections.abc import Callable

from sepconv_jax._spec import ConvSpec, check_choice
from sepconv_jax.kernels import xla

#: Depthwise implementations by name. Each takes ``(x, kernel, spec, *, precision,
#: preferred_element_type)`` on flattened, promoted, zero-padded-or-not input.
DEPTHWISE: dict[str, Callable] = {"xla": xla.depthwise}

IMPLS = ("auto", *DEPTHWISE)


def resolve(impl: str, spec: ConvSpec) -> Callable:
    """Returns the depthwise kernel for ``impl`` (``"auto"`` applies the rule)."""
    check_choice(impl, IMPLS, "impl")
    if impl == "auto":
        impl = "xla"
    del spec  # the rule does not depend on the shape yet
    return DEPTHWISE[impl]
