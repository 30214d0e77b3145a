"""The one place that reaches into JAX internals, with a fallback for each."""

from __future__ import annotations

import contextlib


def match_manual_axes(*arrays):
    """The arrays made to vary over the same ``shard_map`` manual axes.

    What ``lax`` does for its own binary primitives (a ``pvary`` of an operand that
    varies over fewer axes), so that a replicated kernel meeting a sharded input is
    handled as ``lax.conv_general_dilated`` handles it: its gradient is summed over
    the axes by the transpose of that ``pvary``. JAX names the helper differently
    across versions; without one (or outside ``shard_map``) the arrays are returned
    unchanged.
    """
    from jax._src import core as jax_core

    for name in ("auto_insert_reshard", "standard_insert_pvary"):
        insert = getattr(jax_core, name, None)
        if insert is not None:
            return tuple(insert(*arrays))
    return arrays  # pragma: no cover - a JAX without manual-axis tracking


def struct_like(shape, dtype, like):
    """A :class:`jax.ShapeDtypeStruct` of ``shape`` and ``dtype`` that varies over the
    same ``shard_map`` manual axes as the array ``like``.

    ``pallas_call`` needs its output's manual axes spelled out under ``shard_map``
    (with ``check_vma``). JAX names that field ``manual_axis_type`` (0.10 and later)
    or ``vma`` (earlier); without either the plain struct is returned.
    """
    import jax

    aval = jax.typeof(like)
    for name in ("manual_axis_type", "vma"):
        value = getattr(aval, name, None)
        if value is None:
            continue
        try:
            return jax.ShapeDtypeStruct(shape, dtype, **{name: value})
        except TypeError:  # pragma: no cover - a JAX that names the field otherwise
            continue
    return jax.ShapeDtypeStruct(shape, dtype)  # pragma: no cover - an older JAX


def varies_over_manual_axes(x) -> bool:
    """Whether ``x`` varies over some ``shard_map`` manual axis (``False`` outside one)."""
    import jax

    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)
    if mat is not None:
        return bool(getattr(mat, "varying", frozenset()))
    return bool(getattr(aval, "vma", frozenset()))  # pragma: no cover - an older JAX


@contextlib.contextmanager
def vma_checks_off():
    """Within the block, JAX does not check how values vary over ``shard_map`` axes.

    Pallas interpret mode evaluates a kernel's body on the operands themselves, so
    inside ``shard_map`` a gather of a sharded array at indices computed in the
    kernel mixes values that vary over the mesh with values that do not, which the
    check rejects (JAX suggests ``check_vma=False``). The kernel's results are
    declared to vary like its operands either way. Without the JAX setting the block
    does nothing.
    """
    from jax._src import config

    state = getattr(config, "_check_vma", None)
    if state is None:  # pragma: no cover - a JAX without the check
        yield
        return
    with state(False):
        yield


@contextlib.contextmanager
def quiet_triton_deprecation():
    """Within the block, JAX's notice that Pallas' Triton backend is deprecated
    (JAX 0.11 and later, raised on every lowering of a Triton kernel) is not shown;
    every other warning passes through.

    The notice is about JAX's roadmap (Mosaic GPU is to replace Triton there), not
    about anything a caller of this library can act on.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="The Pallas Triton backend is deprecated",
            category=DeprecationWarning,
        )
        yield


def lowering_for_export(ctx) -> bool:
    """Whether a lowering rule's ``ctx`` lowers for :func:`jax.export` (whose
    artifacts may only hold custom calls with compatibility guarantees, which Pallas'
    Triton and Mosaic calls are not). ``False`` where JAX does not say."""
    params = getattr(getattr(ctx, "module_context", None), "lowering_parameters", None)
    return bool(getattr(params, "for_export", False))


def lower_with_devices(*primitives) -> None:
    """Lowers every jitted function holding one of ``primitives`` with its devices
    known (JAX's registry for primitives whose lowering needs them).

    The Pallas maps are partitioned over batch and channels by
    ``jax.experimental.custom_partitioning`` (:mod:`sepconv_jax.kernels.pallas`),
    whose lowering reads the device assignment; JAX provides it only to functions
    holding a primitive of this registry. The cost is JAX's: such a function cannot be
    lowered over an abstract mesh alone. Without the registry nothing is registered.
    """
    from jax._src import dispatch

    registry = getattr(dispatch, "prim_requires_devices_during_lowering", None)
    if registry is not None:
        registry.update(primitives)
