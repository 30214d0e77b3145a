"""Data-parallel training of a Flax linen classifier with optax and ``jax.sharding``.

:func:`train_step` is the one optimizer step of the demo and the benchmark suite;
:func:`train_classifier` runs it in a loop over epochs, split over the devices.

One loop for a laptop CPU, a GPU box or a TPU pod slice: the devices form a 1-D
:class:`jax.sharding.Mesh` with the axis ``"data"``; each global batch is split along
that axis (``NamedSharding(mesh, P("data"))``), parameters and optimizer state are
replicated (``NamedSharding(mesh, P())``), and ``jax.jit`` partitions the step, so
XLA inserts the gradient all-reduce. The loss is the mean over the *global* batch,
hence the same number (up to float32 summation order) on 1 device or 8.

Across hosts, call :func:`jax.distributed.initialize` first; :func:`data_mesh` then
spans every device of every process and :func:`shard_batch` builds the global batch
with :func:`jax.make_array_from_callback`, each process filling only the shards of
its own devices. Every process runs the same loop with the same seed, so all of them
draw the same global batches.

To try several devices on one CPU, set ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(or ``jax.config.update("jax_num_cpu_devices", 8)``) before JAX starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from sepconv_jax import _spec
from sepconv_jax.apps import checkpoints

__all__ = [
    "DATA_AXIS",
    "EpochStats",
    "NonFiniteLossError",
    "TrainResult",
    "data_mesh",
    "evaluate",
    "first_non_finite_layer",
    "replicate",
    "shard_batch",
    "train_classifier",
    "train_step",
]

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
      >>> from sepconv_jax.apps.train import data_mesh
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
      >>> from sepconv_jax.apps.train import data_mesh, replicate
      >>> replicate({"w": jnp.ones(3)}, data_mesh(1))["w"].sharding.spec
      P()
    """
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda leaf: jax.device_put(leaf, sharding), tree)


def shard_batch(batch: ArrayLike, mesh: Mesh) -> jax.Array:
    """Splits a global batch along its first dim over the ``"data"`` axis of ``mesh``.

    Every process passes the whole global batch (the same on all processes, as
    the loop below draws it from a shared seed); each keeps only the rows its own
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
      >>> from sepconv_jax.apps.train import data_mesh, shard_batch
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


@dataclasses.dataclass(frozen=True)
class EpochStats:
    """Figures of one finished epoch.

    Attributes:
      epoch: 1-based epoch number.
      mean_loss: mean training loss over the epoch's steps.
      test_accuracy: accuracy on the test set after the epoch, in ``[0, 1]``.
    """

    epoch: int
    mean_loss: float
    test_accuracy: float


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train_classifier` returns.

    Attributes:
      params: the trained parameters (replicated over the mesh).
      losses: ``(steps,)`` training loss of every step, in order.
      epochs: one :class:`EpochStats` per epoch.
      test_accuracy: accuracy on the test set after the last epoch.
      test_predictions: ``(n_test,)`` int32 predicted labels of the test set after the
        last epoch, in the test set's order.
      step_time_s: median wall time of one training step (compiled, after the
        first), in seconds.
      compile_time_s: time to compile the training step, in seconds.
      num_devices: devices the batch was split over.
    """

    params: Any
    losses: np.ndarray
    epochs: tuple[EpochStats, ...]
    test_accuracy: float
    test_predictions: np.ndarray
    step_time_s: float
    compile_time_s: float
    num_devices: int


def _check_data(x: ArrayLike, y: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if y.ndim != 1 or x.ndim < 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`{name}` must be (inputs, labels) with inputs (n, ...) and labels (n,); "
            f"got shapes {x.shape} and {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"`{name}` labels must be integers, got dtype {y.dtype}")
    return x.astype(np.float32), y.astype(np.int32)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_step(
    model: Any, optimizer: optax.GradientTransformation, **apply_kwargs: Any
) -> Callable[..., tuple[Any, dict[str, Any], Any, jax.Array]]:
    """One optimizer step of a linen classifier on softmax cross-entropy, to be jitted.

    The returned function maps ``(params, state, opt_state, x, y)`` to ``(params,
    state, opt_state, loss)``. ``state`` holds the model's variable collections
    other than ``params`` (``{"batch_stats": ...}`` for a model with batch norm),
    which the step updates as ``apply(..., mutable=...)`` returns them; ``{}`` for a
    model without any. The loss is the mean over the batch ``x``; the update is
    ``optimizer``'s, given the parameters (for weight decay).

    Args:
      model: a ``flax.linen.Module`` returning ``(batch, classes)`` logits.
      optimizer: an optax gradient transformation.
      **apply_kwargs: passed to ``model.apply`` (e.g. ``train=True``).

    Returns:
      The step function, pure and unjitted.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
      >>> from sepconv_jax.apps.train import train_step
      >>> model, optimizer = nn.Dense(2), optax.sgd(0.1)
      >>> params = model.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
      >>> step = jax.jit(train_step(model, optimizer))
      >>> x, y = jnp.ones((4, 3)), jnp.array([0, 1, 0, 1])
      >>> params, state, opt_state, loss = step(params, {}, optimizer.init(params), x, y)
      >>> state, loss.shape
      ({}, ())
    """

    def step(params, state, opt_state, x, y):
        def loss_fn(p):
            variables = {"params": p, **state}
            if state:
                logits, new_state = model.apply(variables, x, mutable=list(state), **apply_kwargs)
            else:
                logits, new_state = model.apply(variables, x, **apply_kwargs), {}
            return _cross_entropy(logits, y), dict(new_state)

        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    return step


def evaluate(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    x: ArrayLike,
    y: ArrayLike,
    mesh: Mesh,
    *,
    batch_size: int = 512,
) -> float:
    """Classification accuracy of ``apply_fn`` on ``(x, y)``, batches split over ``mesh``.

    Args:
      apply_fn: ``apply_fn({"params": params}, x) -> logits`` of shape ``(batch, classes)``,
        e.g. a linen module's ``apply``.
      params: parameters, replicated on ``mesh`` (see :func:`replicate`).
      x: ``(n, ...)`` inputs.
      y: ``(n,)`` integer labels.
      mesh: the mesh from :func:`data_mesh`.
      batch_size: evaluation batch size, rounded up to a multiple of the devices;
        the last batch is padded and the padding ignored.

    Returns:
      The fraction of correct argmax predictions, in ``[0, 1]``.

    Example:
      >>> import jax.numpy as jnp
      >>> from sepconv_jax.apps.train import data_mesh, evaluate, replicate
      >>> mesh = data_mesh(1)
      >>> apply_fn = lambda v, x: x @ v["params"]["w"]
      >>> params = replicate({"w": jnp.eye(2)}, mesh)
      >>> evaluate(apply_fn, params, [[1.0, 0.0], [0.0, 1.0], [2.0, 3.0]], [0, 1, 0], mesh)
      0.6666666666666666
    """
    x, y = _check_data(x, y, "(x, y)")
    predictions = _predictions(_predict_fn(apply_fn, mesh), params, x, mesh, batch_size)
    return _fraction_correct(predictions, y)


def _predict_fn(apply_fn: Callable, mesh: Mesh) -> Callable:
    replicated = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P(DATA_AXIS))

    def predict(params, x):
        return jnp.argmax(apply_fn({"params": params}, x), axis=-1)

    return jax.jit(predict, in_shardings=(replicated, data), out_shardings=replicated)


def _predictions(
    predict: Callable, params: Any, x: np.ndarray, mesh: Mesh, batch_size: int
) -> np.ndarray:
    """``(n,)`` predicted labels, in batches split over ``mesh`` (the last one padded)."""
    devices = mesh.devices.size
    batch_size = max(devices, math.ceil(batch_size / devices) * devices)
    found = []
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        n = len(chunk)
        pad = (-n) % devices
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        found.append(np.asarray(predict(params, shard_batch(chunk, mesh)))[:n])
    return np.concatenate(found).astype(np.int32)


def _fraction_correct(predictions: np.ndarray, labels: np.ndarray) -> float:
    return int((predictions == labels).sum()) / len(labels)


class NonFiniteLossError(FloatingPointError):
    """Training stopped: a step gave a NaN or infinite loss, or would have made a
    parameter non-finite.

    The parameters and optimizer state of the failed step are not applied, and no
    checkpoint is written for it, so the last checkpoint is the last good state.

    Attributes:
      step: the 1-based step that failed.
      layer: the path of the first layer (in call order) whose output is
        non-finite on the failing batch, ``"input"`` when the batch itself is, the
        name of the first parameter the update made non-finite, or ``None`` when
        every layer's output is finite (the loss itself is at fault).
      losses: the losses of the steps before, in order.
      checkpoint: the folder of the last checkpoint written, or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        step: int,
        layer: str | None,
        losses: np.ndarray,
        checkpoint: str | None,
    ):
        super().__init__(message)
        self.step, self.layer, self.losses, self.checkpoint = step, layer, losses, checkpoint

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: message, step, layer, checkpoint."""
        return {
            "message": str(self),
            "step": self.step,
            "layer": self.layer,
            "checkpoint": self.checkpoint,
        }


def _ordered_outputs(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(path, outputs)`` of captured intermediates, in the order the modules returned.

    Flax stores a module's output when its ``__call__`` returns, so a dict's keys are
    in completion order: children before their parent's own ``__call__`` entry.
    """
    found = []
    for key, value in tree.items():
        if key == "__call__":
            found.append((prefix or "<model>", value))
        elif isinstance(value, dict) or hasattr(value, "items"):
            found.extend(_ordered_outputs(value, f"{prefix}/{key}" if prefix else key))
    return found


def first_non_finite_layer(
    model: Any, variables: dict[str, Any], x: jax.Array, **apply_kwargs: Any
) -> str | None:
    """The path of the first module (in call order) whose output has a NaN or Inf.

    Runs ``model`` once on ``x`` with every module's output captured
    (``capture_intermediates=True``).

    Args:
      model: a ``flax.linen.Module``.
      variables: its variables, ``{"params": ..., ...}``.
      x: the input batch.
      **apply_kwargs: passed to ``model.apply``.

    Returns:
      A path such as ``"block2"`` or ``"encoder/conv1"``, ``"<model>"`` when only the
      model's own output is non-finite, or ``None`` when every output is finite.

    Example:
      >>> import flax.linen as nn, jax.numpy as jnp
      >>> from sepconv_jax.apps.train import first_non_finite_layer
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         return nn.Dense(2, name="out")(jnp.log(nn.Dense(3, name="hidden")(x)))
      >>> model, x = Net(), jnp.ones((1, 2))
      >>> variables = model.init(jax.random.key(0), x)
      >>> first_non_finite_layer(model, variables, -1e30 * x)
      'out'
    """
    paths: list[str] = []

    def flags(variables, x):
        _, state = model.apply(
            variables, x, capture_intermediates=True, mutable=["intermediates"], **apply_kwargs
        )
        found = _ordered_outputs(state.get("intermediates", {}))
        paths[:] = [path for path, _ in found]
        return [
            jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(out)]))
            for _, out in found
        ]

    finite = jax.jit(flags)(variables, x)
    for path, ok in zip(paths, finite, strict=True):
        if not bool(ok):
            return path
    return None


def _first_non_finite_leaf(tree: Any) -> str | None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not bool(jnp.all(jnp.isfinite(leaf))):
            return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    return None


def _guarded_step(model: Any, optimizer: optax.GradientTransformation) -> Callable:
    """:func:`train_step` that keeps the old state when the step is not finite.

    Returns ``(params, state, opt_state, loss, ok)``: ``ok`` is false when the loss or
    any updated parameter is NaN or infinite, and then the old state comes back.
    """
    step = train_step(model, optimizer)

    def guarded(params, state, opt_state, x, y):
        new_params, new_state, new_opt_state, loss = step(params, state, opt_state, x, y)
        finite = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(new_params)]
        ok = jnp.all(jnp.asarray([jnp.isfinite(loss), *finite]))

        def pick(new, old):
            return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)

        return (
            pick(new_params, params),
            pick(new_state, state),
            pick(new_opt_state, opt_state),
            loss,
            ok,
        )

    return guarded


def _diagnose(
    model: Any,
    optimizer: optax.GradientTransformation,
    params: Any,
    state: dict[str, Any],
    opt_state: Any,
    xb: jax.Array,
    yb: jax.Array,
    x_host: np.ndarray,
    step: int,
    loss: float,
) -> tuple[str, str | None]:
    """The message and layer of a failed step (see :class:`NonFiniteLossError`)."""
    head = f"training stopped at step {step}: "
    if not np.isfinite(x_host).all():
        bad = int((~np.isfinite(x_host)).reshape(len(x_host), -1).any(axis=1).sum())
        return (
            head + f"the loss is {loss} and the input batch has non-finite values "
            f"({bad} of {len(x_host)} examples)",
            "input",
        )
    if not math.isfinite(loss):
        layer = first_non_finite_layer(model, {"params": params, **state}, xb)
        if layer is None:
            return head + f"the loss is {loss} though every layer's output is finite", None
        message = f"the loss is {loss}; the first layer whose output is non-finite on this batch is {layer!r}"
        return head + message, layer
    new_params = jax.jit(train_step(model, optimizer))(params, state, opt_state, xb, yb)[0]
    name = _first_non_finite_leaf(new_params)
    message = f"the loss is finite ({loss:.6g}) but the update makes parameter {name!r} non-finite (learning rate too high?)"
    return head + message, name


def train_classifier(
    model: Any,
    train_data: tuple[ArrayLike, ArrayLike],
    test_data: tuple[ArrayLike, ArrayLike],
    *,
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
    mesh: Mesh | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    keep_checkpoints: int = 2,
) -> TrainResult:
    """Trains a linen classifier with AdamW and softmax cross-entropy, data-parallel.

    The data order (a NumPy permutation per epoch) and the initialization depend on
    ``seed`` only, not on the number of devices or processes, so runs on 1 and on 8
    devices see the same batches and compute the same losses up to float32 summation
    order. Each epoch runs ``len(train) // batch_size`` full batches (the remainder is
    dropped).

    With ``checkpoint_dir``, the parameters, optimizer state, step, data-order state
    (the permutation generator's state and the position in the epoch) and the loss
    history are saved there every ``checkpoint_every`` steps and after the last one
    (:mod:`sepconv_jax.apps.checkpoints`: atomic, verified on read). A call that finds
    checkpoints there resumes from the newest good one, and ends with parameters
    bitwise equal to those of an uninterrupted run on the same devices.

    A step whose loss, or whose updated parameters, are NaN or infinite stops
    training with :class:`NonFiniteLossError`; that step's update is not applied
    and not checkpointed.

    Args:
      model: a ``flax.linen.Module`` called as ``model.apply({"params": p}, x)`` and
        returning ``(batch, classes)`` logits; no mutable collections.
      train_data: ``(x, y)``: inputs ``(n, ...)`` and integer labels ``(n,)``.
      test_data: ``(x, y)`` for the accuracy after each epoch.
      epochs: number of passes over the training data.
      batch_size: global batch size, a multiple of the mesh's devices.
      learning_rate: peak AdamW learning rate, decayed to zero by a cosine schedule.
      seed: seeds the initialization and the data order.
      mesh: the devices to use (:func:`data_mesh`); ``None`` means all devices.
      on_step: called as ``on_step(step, loss)`` after every step (reading the loss
        waits for the step).
      on_epoch: called with the :class:`EpochStats` after every epoch.
      checkpoint_dir: folder for checkpoints; ``None`` (default) writes none.
      checkpoint_every: steps between checkpoints.
      keep_checkpoints: how many of the newest checkpoints to keep.

    Returns:
      A :class:`TrainResult`.

    Raises:
      ValueError: for a batch size that is not a positive multiple of the devices or
        larger than the training set, non-positive ``epochs``, malformed data, or a
        checkpoint written with other settings.
      TypeError: for non-integer labels or a non-integer ``epochs``.
      NonFiniteLossError: when a step is not finite.

    Example:
      >>> import flax.linen as nn, numpy as np
      >>> from sepconv_jax.apps.train import train_classifier
      >>> rng = np.random.default_rng(0)
      >>> x = rng.normal(size=(64, 4)).astype(np.float32)
      >>> y = (x[:, 0] > 0).astype(np.int32)
      >>> result = train_classifier(nn.Dense(2), (x, y), (x, y), epochs=2, batch_size=16)
      >>> result.losses.shape, result.num_devices
      ((8,), 1)
    """
    x_train, y_train = _check_data(*train_data, "train_data")
    x_test, y_test = _check_data(*test_data, "test_data")
    mesh = data_mesh() if mesh is None else mesh
    devices = mesh.devices.size
    epochs = _spec.check_positive_int(epochs, "epochs")
    checkpoint_every = _spec.check_positive_int(checkpoint_every, "checkpoint_every")
    keep_checkpoints = _spec.check_positive_int(keep_checkpoints, "keep_checkpoints")
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
        or batch_size % devices
        or batch_size > len(x_train)
    ):
        raise ValueError(
            f"`batch_size`={batch_size!r} must be a positive multiple of the {devices} "
            f"device(s) and at most the {len(x_train)} training examples"
        )
    steps_per_epoch = len(x_train) // batch_size
    total_steps = epochs * steps_per_epoch
    schedule = optax.cosine_decay_schedule(learning_rate, total_steps)
    optimizer = optax.adamw(schedule, weight_decay=1e-4)

    init_key = jax.random.key(seed)
    params = jax.jit(model.init)(init_key, jnp.asarray(x_train[:1]))["params"]
    params = replicate(params, mesh)
    opt_state = replicate(optimizer.init(params), mesh)

    replicated = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P(DATA_AXIS))

    order_rng = np.random.default_rng(seed)
    losses: list[float] = []
    history: list[EpochStats] = []
    step = 0
    config = {
        "seed": seed,
        "batch_size": batch_size,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "n_train": len(x_train),
    }
    last_checkpoint: str | None = None
    if checkpoint_dir is not None:
        restored = checkpoints.restore_latest(
            checkpoint_dir, {"params": params, "opt_state": opt_state}
        )
        if restored is not None:
            tree, meta = restored
            if meta["config"] != config:
                raise ValueError(
                    f"`checkpoint_dir` {os.fspath(checkpoint_dir)!r} holds a run with "
                    f"settings {meta['config']}, not {config}; pass another folder"
                )
            params, opt_state = tree["params"], tree["opt_state"]
            step = int(meta["step"])
            losses = [float(v) for v in meta["losses"]]
            history = [EpochStats(*e) for e in meta["epochs"]]
            order_rng.bit_generator.state = meta["order_rng"]
            last_checkpoint = os.fspath(checkpoints.step_dir(checkpoint_dir, step))

    jitted = jax.jit(
        _guarded_step(model, optimizer),
        in_shardings=(replicated, replicated, replicated, data, data),
        out_shardings=(replicated, replicated, replicated, replicated, replicated),
        donate_argnums=(0, 1, 2),
    )
    state: dict[str, Any] = {}  # a classifier without batch statistics
    start = time.perf_counter()
    x_spec = jax.ShapeDtypeStruct((batch_size, *x_train.shape[1:]), jnp.float32, sharding=data)
    y_spec = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=data)
    compiled = jitted.lower(params, state, opt_state, x_spec, y_spec).compile()
    compile_time = time.perf_counter() - start

    def save_checkpoint() -> str:
        meta = {
            "step": step,
            "config": config,
            # The generator's state at the start of the epoch of the next step.
            "order_rng": epoch_rng_state if step % steps_per_epoch else order_rng_state(),
            "losses": losses,
            "epochs": [dataclasses.astuple(e) for e in history],
        }
        assert checkpoint_dir is not None
        tree = {"params": params, "opt_state": opt_state}
        return os.fspath(checkpoints.save(checkpoint_dir, step, tree, meta, keep=keep_checkpoints))

    def order_rng_state() -> dict[str, Any]:
        return dict(order_rng.bit_generator.state)

    predict = _predict_fn(model.apply, mesh)
    step_times: list[float] = []
    predictions = None
    for epoch in range(step // steps_per_epoch + 1, epochs + 1):
        epoch_rng_state = order_rng_state()
        order = order_rng.permutation(len(x_train))
        for i in range(step % steps_per_epoch, steps_per_epoch):
            rows = order[i * batch_size : (i + 1) * batch_size]
            xb = shard_batch(x_train[rows], mesh)
            yb = shard_batch(y_train[rows], mesh)
            t0 = time.perf_counter()
            params, state, opt_state, loss, ok = compiled(params, state, opt_state, xb, yb)
            loss = float(loss)
            step_times.append(time.perf_counter() - t0)
            step += 1
            if not bool(ok):
                message, layer = _diagnose(
                    model, optimizer, params, state, opt_state, xb, yb, x_train[rows], step, loss
                )
                if last_checkpoint is not None:
                    message += f"; the last good checkpoint is {last_checkpoint}"
                raise NonFiniteLossError(
                    message,
                    step=step,
                    layer=layer,
                    losses=np.asarray(losses, np.float32),
                    checkpoint=last_checkpoint,
                )
            losses.append(loss)
            if on_step is not None:
                on_step(step, loss)
            if i == steps_per_epoch - 1:
                predictions = _predictions(predict, params, x_test, mesh, 512)
                accuracy = _fraction_correct(predictions, y_test)
                epoch_losses = losses[step - steps_per_epoch : step]
                stats = EpochStats(epoch, float(np.mean(epoch_losses)), accuracy)
                history.append(stats)
                if on_epoch is not None:
                    on_epoch(stats)
            if checkpoint_dir is not None and (step % checkpoint_every == 0 or step == total_steps):
                last_checkpoint = save_checkpoint()
    if predictions is None:  # resumed from the final checkpoint
        predictions = _predictions(predict, params, x_test, mesh, 512)
    timed = step_times[1:] if len(step_times) > 1 else step_times
    return TrainResult(
        params=params,
        losses=np.asarray(losses, np.float32),
        epochs=tuple(history),
        test_accuracy=history[-1].test_accuracy,
        test_predictions=predictions,
        step_time_s=float(np.median(timed)) if timed else float("nan"),
        compile_time_s=compile_time,
        num_devices=devices,
    )
