"""The kernel registry, and the rule that picks a kernel for ``impl="auto"``.

A kernel is three maps (:class:`Kernel`): the depthwise convolution and its two
transposes, each a function of two arrays and the resolved
:class:`~sepconv_jax._spec.ConvSpec`. The primitives of
:mod:`sepconv_jax.kernels.op` look a kernel up here **when they are lowered**, per
platform, so ``"auto"`` means the best kernel of the platform the code is compiled
or exported for, not of the machine that traced it.

The rule for ``"auto"``, by platform and shape:

* ``cpu``: ``"native"`` (the C++ kernels of :mod:`sepconv_jax.kernels.native`,
  called through the XLA FFI) for 1-D and 2-D channels-last problems with a depth
  multiplier of 1, where the library builds on this machine (a C++ compiler is
  found). Whole models with ``"native"`` against ``"shift"``, the two compiled in
  one process and called in turn (``benchmarks/impl_models.py``, 224x224 float32,
  batch 8 and 32, 2-core AVX2 CPU; ``benchmarks/RESULTS.md``): training steps
  1.22-1.42x faster on MobileNetV2, EfficientNet-B0 and ConvNeXt-T, inference
  1.08-1.36x. Elsewhere ``"shift"`` (shifted multiply-accumulates), which measured
  13-70x faster than ``"xla"`` forward (median 32x) and 17-106x forward+backward
  (median 46x) on the MobileNetV2 and EfficientNet-B0 depthwise layers at batch 8
  in float32 on a 2-core CPU, unless the window has more than
  :data:`MAX_SHIFT_TAPS` taps (more than a 7x7x7 3-D window), where the unrolled
  loop would compile slowly; then ``"xla"``. In whole models ``"shift"`` is also
  the faster of the two: ``bench --models`` measured it 2.2-14x faster than
  ``"xla"`` on MobileNetV2, MobileNetV3-Large, EfficientNet-B0 and ConvNeXt-T,
  inference and training, batch 8 and 32. Within ``"shift"``, inputs too large
  for one padded copy run in tiles of whole images
  (:data:`sepconv_jax.kernels.shift.TILE_BYTES`), which measured 1.7x faster than
  reading them in place on EfficientNet-B0 inference at batch 32
  (``benchmarks/tile_probe.py``). Lowered for :func:`jax.export`, ``"auto"`` runs
  ``"shift"`` (``"xla"`` above :data:`MAX_SHIFT_TAPS` taps) on CPU: the FFI call
  names a handler of this process, which a serialized artifact cannot carry.
* ``cuda``: ``"pallas"`` (the Triton kernels of :mod:`sepconv_jax.kernels.pallas`)
  for 2-D windows of at most 3x3 taps with a stride above 1, ``"xla"`` otherwise. On
  one H100 at batch 64, forward+backward (``benchmarks/results/gpu/``, summarized in
  ``benchmarks/RESULTS.md``), the Pallas kernels beat ``lax.conv_general_dilated``
  on every strided 3x3 MobileNetV2/EfficientNet-B0 layer measured: 1.58-1.93x in
  float32, 1.22-1.54x in bfloat16. At stride 1 the two were mixed (0.77-1.62x in
  float32, median 1.03x; 0.81-1.78x in bfloat16, median 1.16x), and on 5x5 windows
  XLA was mostly faster (0.89-1.16x in float32, 0.54-0.95x in bfloat16), so those
  stay with XLA.
  Lowered for :func:`jax.export`, ``"auto"`` runs ``"xla"`` on CUDA at every shape:
  serialized artifacts may only hold custom calls with compatibility guarantees,
  which the Triton calls do not have (:func:`kernel_for`).
* ``rocm``, ``tpu`` and any other platform: ``"xla"``
  (``lax.conv_general_dilated`` with ``feature_group_count``). The Pallas kernels run
  there by name; none of them has been measured on those platforms yet.

Separable layers (:func:`sepconv_jax.separable_conv` without a depthwise bias, and
the ``SeparableConv`` modules) are one operation of their own
(:mod:`sepconv_jax.kernels.separable`), lowered either as the unfused pair (the
depthwise kernel above, then the 1x1 step) or as one fused Pallas kernel
(:mod:`sepconv_jax.kernels.pallas_fused`) that keeps the intermediate on chip.
:func:`fuse_separable` is the rule for ``"auto"``: the unfused pair on every
platform until a GPU measurement shows the fused kernel faster. ``impl="fused"``
asks for the fused kernel explicitly (see :data:`FUSED_IMPLS`); a depthwise
convolution on its own runs the ``"pallas"`` kernel under that name.

The rule can be overridden, in order of precedence, when a function is traced:

1. per call: ``depthwise_conv(..., impl="shift")`` (any name but ``"auto"``);
2. for a block of code: ``with default_impl("xla"): ...``;
3. for the process: ``set_default_impl("xla")`` (``set_default_impl(None)`` restores
   the rule).

An override names one kernel for every platform. It is read when the function is
traced: a function already compiled by ``jax.jit`` keeps what it was traced with,
so enter the context before the first call (or pass ``impl=`` explicitly).

Adding a kernel: write its three maps with the signature of
:func:`sepconv_jax.kernels.xla.forward`, add a :class:`Kernel` to :data:`KERNELS`
and its name to :data:`Impl`, and, where it measures faster, return its name from
:func:`auto_impl` for that platform. The reference suite in ``tests/test_kernels.py``
runs over every registered kernel.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import typing
from collections.abc import Callable, Iterator
from typing import Literal

import jax

from sepconv_jax._spec import ConvSpec, check_choice
from sepconv_jax.kernels import native, pallas, shift, xla

__all__ = [
    "FUSED_IMPLS",
    "IMPLS",
    "KERNELS",
    "MAX_PALLAS_GPU_TAPS",
    "MAX_SHIFT_TAPS",
    "Impl",
    "Kernel",
    "auto_impl",
    "default_impl",
    "fuse_separable",
    "get_default_impl",
    "kernel_for",
    "resolve_override",
    "separable_is_fused",
    "set_default_impl",
]

#: The names ``impl`` accepts.
Impl = Literal["auto", "xla", "shift", "native", "pallas", "fused"]
#: :data:`Impl` as a tuple, ``"auto"`` first.
IMPLS: tuple[Impl, ...] = typing.get_args(Impl)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One implementation of the depthwise operation: its three bilinear maps.

    Each map is called as ``map(a, b, spec, *, platform, precision,
    preferred_element_type, out_dtype)`` on flattened arrays (one batch dim) and
    returns an array of ``out_dtype``; ``spec.padding`` is zero padding and
    ``platform`` the platform it is lowered for (``"cpu"``, ``"cuda"``, ``"rocm"``,
    ``"tpu"``, or ``None`` for any other).

    Attributes:
      name: the ``impl`` name.
      forward: ``(x, kernel) -> y``.
      input_transpose: ``(g, kernel) -> dx``, the transpose of ``forward`` in ``x``.
      kernel_transpose: ``(x, g) -> dkernel``, the transpose of ``forward`` in ``kernel``.
      lowering_context: optional ``platform -> context manager``, entered while the
        kernel's maps are lowered for ``platform`` (``None``: nothing to enter).
    """

    name: str
    forward: Callable
    input_transpose: Callable
    kernel_transpose: Callable
    lowering_context: Callable[[str | None], contextlib.AbstractContextManager] | None = None


def _kernel(name: str, module) -> Kernel:
    return Kernel(
        name,
        module.forward,
        module.input_transpose,
        module.kernel_transpose,
        getattr(module, "lowering_context", None),
    )


#: Registered kernels by name. ``"fused"`` is the Pallas family with one more
#: kernel: it asks separable layers for the fused depthwise+pointwise kernel
#: (:data:`FUSED_IMPLS`); a depthwise convolution on its own has nothing to fuse
#: with, so its maps are the ``"pallas"`` kernel's.
KERNELS: dict[str, Kernel] = {
    "xla": _kernel("xla", xla),
    "shift": _kernel("shift", shift),
    "native": _kernel("native", native),
    "pallas": _kernel("pallas", pallas),
    "fused": dataclasses.replace(_kernel("pallas", pallas), name="fused"),
}

#: The ``impl`` names that ask separable layers for the fused depthwise+pointwise
#: kernel on every platform it supports (GPU through Triton, CPU in Pallas
#: interpret mode, which is slow and meant for tests); elsewhere (TPU, complex
#: dtypes) and for layers with a depthwise bias, the unfused pair runs.
FUSED_IMPLS: tuple[Impl, ...] = ("fused",)

#: Largest window (number of taps, e.g. 5 * 5 = 25) for which "auto" picks "shift". At
#: 7 * 7 * 7 = 343 taps its forward+backward measured ~10x faster than "xla" on CPU and
#: compiled in ~3 s; the tap loop is unrolled, so compile time grows with the window.
MAX_SHIFT_TAPS = 343

#: Largest window (taps) for which "auto" picks "pallas" on a GPU at a stride above 1:
#: measured faster than "xla" on 3x3 windows, slower on 5x5 ones (see above).
MAX_PALLAS_GPU_TAPS = 9

_GLOBAL_DEFAULT: str | None = None
_CONTEXT_DEFAULT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sepconv_jax_default_impl", default=None
)

# jax.default_backend() says "gpu"; lowering rules say "cuda" or "rocm".
_PLATFORM_ALIASES = {"gpu": "cuda"}


def auto_impl(spec: ConvSpec, platform: str | None = None) -> str:
    """The documented rule: the kernel ``"auto"`` picks for ``spec`` on ``platform``.

    Args:
      spec: the resolved convolution.
      platform: ``"cpu"``, ``"cuda"`` (or ``"gpu"``), ``"rocm"``, ``"tpu"``...;
        ``None`` means the platform of :func:`jax.default_backend`.

    Returns:
      A key of :data:`KERNELS`.

    Example:
      >>> import jax.numpy as jnp
      >>> from sepconv_jax import _spec
      >>> spec = _spec.make_spec(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 4)), groups=None,
      ...     strides=1, padding="SAME", dilation=1, padding_mode="zeros",
      ...     data_format="channels_last")
      >>> auto_impl(spec, "cpu"), auto_impl(spec, "cuda"), auto_impl(spec, "tpu")
      ('native', 'xla', 'xla')
      >>> import dataclasses
      >>> auto_impl(dataclasses.replace(spec, strides=(2, 2)), "cuda")
      'pallas'
    """
    platform = jax.default_backend() if platform is None else platform
    platform = _PLATFORM_ALIASES.get(platform, platform)
    if platform == "cpu" and _native_runs(spec):
        return "native"
    if platform == "cpu" and math.prod(spec.window) <= MAX_SHIFT_TAPS:
        return "shift"
    if (
        platform == "cuda"
        and spec.num_spatial == 2
        and math.prod(spec.window) <= MAX_PALLAS_GPU_TAPS
        and any(s > 1 for s in spec.strides)
    ):
        return "pallas"
    return "xla"


def _native_runs(spec: ConvSpec) -> bool:
    """Whether the ``"native"`` kernel's C++ handlers take ``spec`` on this machine
    (the dtype is checked when the maps run; others run ``"shift"`` there)."""
    return native.supports(spec) and native.available()


def fuse_separable(spec: ConvSpec, out_channels: int, platform: str | None = None) -> bool:
    """The documented rule: whether ``impl="auto"`` runs a separable layer as one fused
    kernel (``True``) or as the depthwise kernel then the 1x1 step (``False``).

    ``False`` on every platform: the fused kernel (:mod:`sepconv_jax.kernels.pallas_fused`)
    has not been measured on a GPU yet, and on CPU it runs in Pallas interpret mode.
    ``benchmarks/fused_tune.py`` measures it against the unfused pair on the
    MobileNetV2 and EfficientNet-B0 layers; where it wins, this rule returns ``True``
    for that platform and shape class, citing the measurement.

    Args:
      spec: the depthwise step of the layer.
      out_channels: the pointwise step's output channels.
      platform: as in :func:`auto_impl`.

    Example:
      >>> import jax.numpy as jnp
      >>> from sepconv_jax import _spec
      >>> spec = _spec.make_spec(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 4)), groups=None,
      ...     strides=1, padding="SAME", dilation=1, padding_mode="zeros",
      ...     data_format="channels_last")
      >>> fuse_separable(spec, 8, "cuda"), fuse_separable(spec, 8, "cpu")
      (False, False)
    """
    del spec, out_channels, platform
    return False


def separable_is_fused(
    impl: str,
    spec: ConvSpec,
    out_channels: int,
    dtypes: tuple,
    platform: str | None,
) -> bool:
    """Whether a separable layer traced with ``impl`` runs the fused kernel when lowered
    for ``platform``: asked for by name (:data:`FUSED_IMPLS`) or by the rule
    (:func:`fuse_separable`, for ``"auto"``), and supported there
    (:func:`sepconv_jax.kernels.pallas_fused.supported`)."""
    from sepconv_jax.kernels import pallas_fused

    if impl in FUSED_IMPLS:
        wanted = True
    elif impl == "auto":
        wanted = fuse_separable(spec, out_channels, platform)
    else:
        wanted = False
    return wanted and pallas_fused.supported(spec, dtypes, platform)


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
    if impl is not None:
        check_choice(impl, IMPLS, "impl")
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


def resolve_override(impl: str) -> str:
    """What a traced call records: ``impl``, or for ``"auto"`` the override in force,
    or ``"auto"`` (the per-platform rule, applied when lowered) when there is none.

    Raises:
      ValueError: for an unknown name. TypeError: for a non-string.
    """
    check_choice(impl, IMPLS, "impl")
    if impl == "auto":
        return get_default_impl() or "auto"
    return impl


def kernel_for(
    impl: str, spec: ConvSpec, platform: str | None, *, for_export: bool = False
) -> Kernel:
    """The kernel that runs ``impl`` for ``spec`` when lowered for ``platform``.

    ``platform=None`` stands for a platform without a lowering rule of its own,
    where ``"auto"`` means ``"xla"``. ``for_export``: the lowering is for
    :func:`jax.export`, whose serialized artifacts may only hold custom calls with
    compatibility guarantees; Pallas' Triton and Mosaic calls and the ``"native"``
    kernel's FFI calls have none, so there ``"auto"`` keeps to the kernels written
    in StableHLO (``"pallas"`` becomes ``"xla"``, ``"native"`` becomes ``"shift"``).
    A kernel named explicitly is used as named.
    """
    if impl == "auto":
        impl = "xla" if platform is None else auto_impl(spec, platform)
        if for_export and impl in ("pallas", "fused"):
            impl = "xla"
        if for_export and impl == "native":
            impl = "shift" if math.prod(spec.window) <= MAX_SHIFT_TAPS else "xla"
    return KERNELS[impl]
