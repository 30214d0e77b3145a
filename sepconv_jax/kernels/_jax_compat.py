"""The one place that reaches into JAX internals, with a fallback for each."""

from __future__ import annotations


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
