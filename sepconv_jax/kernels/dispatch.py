"""Chooses a kernel for ``impl="auto"`` and checks explicit choices.

The rule, applied when a function is traced, by the backend JAX runs on
(:func:`jax.default_backend`) and the shape:

* ``cpu``: ``"shift"`` (shifted multiply-accumulates with hand-written gradients),
  which measured 13-70x faster than ``"xla"`` forward (median 32x) and 17-106x
  forward+backward (median 46x) on the MobileNetV2 and EfficientNet-B0 depthwise
  layers at batch 8 in float32 on a 2-core CPU (see ``benchmarks/RESULTS.md``),
  unless the window has more than :data:`MAX_SHIFT_TAPS` taps (more than a 7x7x7
  3-D window), where the unrolled loop would trace and compile slowly; then ``"xla"``.
* ``gpu``, ``tpu`` and any other backend: ``"xla"`` (``lax.conv_general_dilated``
  with ``feature_group_count``), the best measured there until a kernel beats it.

The rule can be overridden, in order of precedence:

1. per call: ``depthwise_conv(..., impl="shift")`` (any name but ``"auto"``);
2. for a block of code: ``with default_impl("xla"): ...``;
3. for the process: ``set_default_impl("xla")`` (``set_default_impl(None)`` restores
   the rule).

The choice is made at trace time: a function already compiled by ``jax.jit`` keeps the
kernel it was traced with, so enter the context before the first call (or pass
``impl=`` explicitly).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator

import jax

from sepconv_jax._spec import ConvSpec, check_choice
from sepconv_jax.kernels import shift, xla

__all__ = [
    "DEPTHWISE",
    "IMPLS",
    "MAX_SHIFT_TAPS",
    "auto_impl",
    "default_impl",
    "get_default_impl",
    "resolve",
    "set_default_impl",
]

#: Depthwise implementations by name. Each takes ``(x, kernel, spec, *, precision,
#: preferred_element_type)`` on flattened, promoted, zero-padded-or-not input.
DEPTHWISE: dict[str, Callable] = {"xla": xla.depthwise, "shift": shift.depthwise}

IMPLS = ("auto", *DEPTHWISE)

#: Largest window (number of taps, e.g. 5 * 5 = 25) for which "auto" picks "shift". At
#: 7 * 7 * 7 = 343 taps its forward+backward measured ~10x faster than "xla" on CPU and
#: compiled in ~3 s; the tap loop is unrolled, so compile time grows with the window.
MAX_SHIFT_TAPS = 343

_GLOBAL_DEFAULT: str | None = None
_CONTEXT_DEFAULT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sepconv_jax_default_impl", default=None
)


def _check_override(impl: str | None, name: str) -> str | None:
    if impl is None:
        return None
    return check_choice(impl, IMPLS, name)


def auto_impl(spec: ConvSpec, backend: str | None = None) -> str:
    """The documented rule: the impl ``"auto"`` picks for ``spec`` on ``backend``.

    Args:
      spec: the resolved convolution.
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"``...; ``None`` means
        :func:`jax.default_backend`.

    Returns:
      A key of :data:`DEPTHWISE`.

    Example:
      >>> import jax.numpy as jnp
      >>> from sepconv_jax import _spec
      >>> spec = _spec.make_spec(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 4)), groups=None,
      ...     strides=1, padding="SAME", dilation=1, padding_mode="zeros",
      ...     data_format="channels_last")
      >>> auto_impl(spec, "cpu"), auto_impl(spec, "gpu")
      ('shift', 'xla')
    """
    backend = jax.default_backend() if backend is None else backend
    if backend == "cpu" and math.prod(spec.window) <= MAX_SHIFT_TAPS:
        return "shift"
    return "xla"


def set_default_impl(impl: str | None) -> None:
    """Sets the impl ``"auto"`` means for the whole process; ``None`` restores the rule.

    Args:
      impl: a name from :data:`IMPLS`, or ``None``. ``"auto"`` also restores the rule.

    Raises:
      ValueError: for an unknown name.

    Example:
      >>> set_default_impl("xla")
      >>> get_default_impl()
      'xla'
      >>> set_default_impl(None)
    """
    global _GLOBAL_DEFAULT
    impl = _check_override(impl, "impl")
    _GLOBAL_DEFAULT = None if impl == "auto" else impl


def get_default_impl() -> str | None:
    """The override in force (context first, then process-wide), or ``None`` for the rule."""
    context = _CONTEXT_DEFAULT.get()
    if context is not None:  # "auto" here means the rule, even under a process default
        return None if context == "auto" else context
    return _GLOBAL_DEFAULT


@contextlib.contextmanager
def default_impl(impl: str) -> Iterator[None]:
    """Within the block, ``impl="auto"`` means ``impl`` (``"auto"`` restores the rule).

    Explicit per-call choices still win. The override is local to the thread (or
    asyncio task) that enters the block.

    Args:
      impl: a name from :data:`IMPLS`.

    Raises:
      ValueError: for an unknown name.

    Example:
      >>> import jax.numpy as jnp
      >>> from sepconv_jax import depthwise_conv
      >>> with default_impl("xla"):
      ...     y = depthwise_conv(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 1, 2)))
      >>> float(y[0, 2, 2, 0])
      9.0
    """
    impl = check_choice(impl, IMPLS, "impl")
    token = _CONTEXT_DEFAULT.set(impl)
    try:
        yield
    finally:
        _CONTEXT_DEFAULT.reset(token)


def resolve(impl: str, spec: ConvSpec) -> Callable:
    """Returns the depthwise kernel for ``impl`` (``"auto"`` applies overrides, then the rule)."""
    check_choice(impl, IMPLS, "impl")
    if impl == "auto":
        impl = get_default_impl() or auto_impl(spec)
    return DEPTHWISE[impl]
