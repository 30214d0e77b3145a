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


def shape_dtype_like(shape, dtype, like):
    """A ``jax.ShapeDtypeStruct`` (e.g. a Pallas kernel's ``out_shape``) that varies
    over the same ``shard_map`` manual axes as the array ``like``.

    Inside ``shard_map`` (with its default ``check_vma=True``) a Pallas call must be
    told how its results vary over the mesh; outside, or on a JAX that does not
    track it, the plain struct is returned.
    """
    import jax

    manual = getattr(jax.typeof(like), "manual_axis_type", None)
    if manual is None:
        return jax.ShapeDtypeStruct(shape, dtype)
    try:
        return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=manual)
    except TypeError:  # pragma: no cover - a JAX whose structs do not take it
        return jax.ShapeDtypeStruct(shape, dtype)


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
