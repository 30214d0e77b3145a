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
