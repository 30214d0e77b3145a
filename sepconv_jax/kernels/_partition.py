"""Custom-call kernels as operations XLA partitions over batch and channels.

A kernel that XLA sees as one opaque call (a Pallas kernel, or the C++ handlers of
the ``"native"`` kernel) has no sharding of its own: the SPMD partitioner gathers
its operands whole on every device, as it does for any custom call. A depthwise map
needs no data from other devices when sharded over the batch and the channels, so
:func:`partitioned` wraps a kernel's map in :func:`jax.experimental.custom_partitioning`
with that rule: each device runs the kernel on its own examples and channels, and
the kernel transpose sums its per-device partial sums over the batch axes. Spatial
dims are kept whole. One device, or inside ``shard_map`` (fully manual), runs the
kernel as it is.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

import jax
import numpy as np

from sepconv_jax._spec import ConvSpec

__all__ = ["ROLES", "partitioned", "role_shape"]

#: Per map: the operands' and the result's roles, ``"in"``/``"out"`` for activations
#: of the input's or the output's spatial shape, ``"kernel"`` for a depthwise kernel.
ROLES = {
    "forward": (("in", "kernel"), "out"),
    "input_transpose": (("out", "kernel"), "in"),
    "kernel_transpose": (("in", "out"), "kernel"),
}


def role_shape(role: str, spec: ConvSpec) -> tuple[int, ...]:
    """The shape of an array of ``role`` (a value of :data:`ROLES`) in ``spec``."""
    if role == "kernel":
        return (*spec.window, 1, spec.out_channels)
    if role == "in":
        return spec.flat_shape(spec.in_spatial, spec.in_channels)
    return spec.flat_shape(spec.out_spatial, spec.out_channels)


def _factors(role: str, spec: ConvSpec) -> str:
    """The Shardy factors of an operand or result of ``role``: ``n`` the batch, ``c``
    the input channels (``(c m)`` the ``C * M`` output channels, channel-major), the
    spatial and window factors their own (kept whole)."""
    nd = spec.num_spatial
    if role == "kernel":
        return " ".join([*(f"w{i}" for i in range(nd)), "o", _channels(role, spec)])
    spatial = [f"{'s' if role == 'in' else 't'}{i}" for i in range(nd)]
    if spec.channels_last:
        return " ".join(["n", *spatial, _channels(role, spec)])
    return " ".join(["n", _channels(role, spec), *spatial])


def _channels(role: str, spec: ConvSpec) -> str:
    if role == "in" or spec.depth_multiplier == 1:
        return "c"
    return "(c m)"


def _sharding_rule(name: str, spec: ConvSpec) -> tuple[str, dict]:
    (role_a, role_b), role_out = ROLES[name]
    rule = f"{_factors(role_a, spec)}, {_factors(role_b, spec)} -> {_factors(role_out, spec)}"
    nd = spec.num_spatial
    whole = {f"{p}{i}" for p in "stw" for i in range(nd)} | {"o"}
    # Shardy wants the special factors in the order the rule first names them.
    named = dict.fromkeys(re.findall(r"\w+", rule))
    options: dict = {"need_replication_factors": tuple(f for f in named if f in whole)}
    if name == "kernel_transpose":
        options["reduction_factors"] = ("n",)
    if spec.depth_multiplier > 1:
        options["m"] = spec.depth_multiplier
    return rule, options


def _axes(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def partitioned(
    name: str, spec: ConvSpec, run: Callable, *, acc: np.dtype, out_dtype
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Map ``name`` of ``spec``, run by ``run``, as an operation XLA partitions over
    batch and channels (see the module docstring).

    Args:
      name: a key of :data:`ROLES`.
      spec: the whole (global) problem.
      run: ``run(name, a, b, spec, *, out_dtype) -> result``, the kernel's map on
        one device's arrays and the spec of that device's part of the problem.
      acc: the accumulation dtype, in which the kernel transpose's per-device
        partial sums are added.
      out_dtype: the result's dtype.

    Returns:
      ``(a, b) -> result``.
    """
    from jax.experimental.custom_partitioning import custom_partitioning

    (role_a, role_b), role_out = ROLES[name]

    def whole(a, b):
        return run(name, a, b, spec, out_dtype=out_dtype)

    call = custom_partitioning(whole)

    def apply(a, b):
        # A kernel with side effects (Mosaic's interpret mode calls back into Python)
        # cannot sit inside custom_partitioning; it runs as it is.
        structs = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in (a, b)]
        if jax.make_jaxpr(whole)(*structs).effects:
            return whole(a, b)
        return call(a, b)

    def partition(mesh, arg_shapes, result_shape):
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        lead = arg_shapes[0]  # an activation in every map
        pspec = tuple(lead.sharding.spec) + (None,) * (lead.ndim - len(lead.sharding.spec))
        batch = _axes(pspec[0])
        channels = _axes(pspec[spec.channel_axis])
        sizes = dict(mesh.shape)
        n_batch = math.prod(sizes[a] for a in batch)
        n_chan = math.prod(sizes[a] for a in channels)
        if spec.batch_shape[0] % n_batch:
            batch, n_batch = (), 1
        if spec.in_channels % n_chan:
            channels, n_chan = (), 1
        local = dataclasses.replace(
            spec,
            batch_shape=(spec.batch_shape[0] // n_batch,),
            in_channels=spec.in_channels // n_chan,
            out_channels=spec.out_channels // n_chan,
            groups=spec.groups // n_chan,
        )
        b_entry, c_entry = batch or None, channels or None

        def sharding(role: str):
            if role == "kernel":
                return NamedSharding(mesh, P(*(None,) * (spec.num_spatial + 1), c_entry))
            rest = (None,) * spec.num_spatial
            if spec.channels_last:
                return NamedSharding(mesh, P(b_entry, *rest, c_entry))
            return NamedSharding(mesh, P(b_entry, c_entry, *rest))

        def lower(a, b):
            if name != "kernel_transpose" or not batch:
                return run(name, a, b, local, out_dtype=out_dtype)
            # Per-device partial sums in the accumulation dtype, summed over the batch.
            dk = run(name, a, b, local, out_dtype=acc)
            return jax.lax.psum(dk, batch).astype(out_dtype)

        return mesh, lower, sharding(role_out), (sharding(role_a), sharding(role_b))

    rule, options = _sharding_rule(name, spec)
    call.def_partition(
        partition,
        infer_sharding_from_operands=lambda mesh, arg_shapes, result_shape: partition(
            mesh, arg_shapes, result_shape
        )[2],
        sharding_rule=rule,
        **options,
    )
    return apply
