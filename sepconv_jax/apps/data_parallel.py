"""The data-parallel layout of the training loop: a 1-D device mesh, batches split along it.

The devices form a 1-D :class:`jax.sharding.Mesh` with the axis ``"data"``
(:func:`data_mesh`); each global batch is split along that axis
(:func:`shard_batch`, ``NamedSharding(mesh, P("data"))``) and parameters and
optimizer state are replicated (:func:`replicate`, ``NamedSharding(mesh, P())``).
Across hosts, :func:`shard_batch` builds the global batch with
:func:`jax.make_array_from_callback`, each process filling only the shards of its own
devices.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

__all__ = ["DATA_AXIS", "data_mesh", "replicate", "shard_batch"]

#: Name of the mesh axis the batch is split along.
DATA_AXIS = "data"


def data_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices, with the axis ``"data"``.

    Args:
      num_devices: how many devices to use; ``None`` means all of them (of every
        process after :func:`jax.distributed.initialize`).

    Returns:
      A :class:`jax.sharding.Mesh` of shape ``(num_devices,)``.

    Raises:
      TypeError: when ``num_devices`` is not an int.
      ValueError: when ``num_devices`` is not between 1 and the number of devices,
        or is a strict subset of the devices of a multi-process run.

    Example:
      >>> from sepconv_jax.apps.data_parallel import data_mesh
      >>> mesh = data_mesh(1)
      >>> mesh.axis_names, mesh.devices.shape
      (('data',), (1,))
    """
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if isinstance(num_devices, bool) or not isinstance(num_devices, int):
        raise TypeError(f"`num_devices` must be an int, got {type(num_devices).__name__}")
    if not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"`num_devices`={num_devices} but {len(devices)} {jax.default_backend()} "
            f"device(s) are available; pass a number from 1 to {len(devices)} (on a CPU, "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={num_devices} simulates more)"
        )
    if jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError(
            f"`num_devices`={num_devices}: a run over {jax.process_count()} processes "
            f"uses all {len(devices)} devices; pass None"
        )
    return jax.make_mesh(
        (num_devices,), (DATA_AXIS,), (AxisType.Auto,), devices=devices[:num_devices]
    )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of ``tree`` whole on every device of ``mesh``.

    Args:
      tree: a pytree of arrays (parameters, optimizer state), the same on every
        process.
      mesh: the mesh from :func:`data_mesh`.

    Returns:
      The pytree with each leaf a :class:`jax.Array` sharded as ``P()``.

    Example:
      >>> import jax.numpy as jnp
      >>> from sepconv_jax.apps.data_parallel import data_mesh, replicate
      >>> replicate({"w": jnp.ones(3)}, data_mesh(1))["w"].sharding.spec
      P()
    """
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda leaf: jax.device_put(leaf, sharding), tree)


def shard_batch(batch: ArrayLike, mesh: Mesh) -> jax.Array:
    """Splits a global batch along its first dim over the ``"data"`` axis of ``mesh``.

    Every process passes the whole global batch (the same on all processes, as
    the training loop draws it from a shared seed); each keeps only the rows its own
    devices hold, so the host-to-device traffic is the local share.

    Args:
      batch: ``(global_batch, ...)``; ``global_batch`` must be a multiple of the
        number of devices in ``mesh``.
      mesh: the mesh from :func:`data_mesh`.

    Returns:
      A :class:`jax.Array` of the same shape, sharded as ``P("data")``.

    Raises:
      ValueError: when the batch does not split evenly over the devices.

    Example:
      >>> import numpy as np
      >>> from sepconv_jax.apps.data_parallel import data_mesh, shard_batch
      >>> x = shard_batch(np.zeros((8, 3), np.float32), data_mesh(1))
      >>> x.shape, x.sharding.spec
      ((8, 3), P('data',))
    """
    batch = np.asarray(batch)
    devices = mesh.devices.size
    if batch.ndim == 0 or batch.shape[0] % devices:
        raise ValueError(
            f"`batch` of shape {batch.shape} must have a leading batch dim that is a "
            f"multiple of the {devices} devices of the mesh; pick a batch size divisible "
            f"by {devices}"
        )
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    # Each process fills only the shards of its own devices from the global batch.
    return jax.make_array_from_callback(batch.shape, sharding, lambda index: batch[index])
