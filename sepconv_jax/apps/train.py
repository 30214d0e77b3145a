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
draw the same global batches. The mesh and the batch layout live in
:mod:`sepconv_jax.apps.data_parallel`, the error of a non-finite step and its
diagnosis in :mod:`sepconv_jax.apps.non_finite`; both are re-exported here.

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
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from sepconv_jax import _spec
from sepconv_jax.apps import checkpoints
from sepconv_jax.apps.data_parallel import DATA_AXIS as DATA_AXIS
from sepconv_jax.apps.data_parallel import data_mesh as data_mesh
from sepconv_jax.apps.data_parallel import replicate as replicate
from sepconv_jax.apps.data_parallel import shard_batch as shard_batch
from sepconv_jax.apps.non_finite import NonFiniteLossError as NonFiniteLossError
from sepconv_jax.apps.non_finite import _first_non_finite_leaf
from sepconv_jax.apps.non_finite import first_non_finite_layer as first_non_finite_layer

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
    test = _check_data(*test_data, "test_data")
    loop = _Loop(
        model=model,
        mesh=data_mesh() if mesh is None else mesh,
        x_train=x_train,
        y_train=y_train,
        test=test,
        epochs=_spec.check_positive_int(epochs, "epochs"),
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=_spec.check_positive_int(checkpoint_every, "checkpoint_every"),
        keep_checkpoints=_spec.check_positive_int(keep_checkpoints, "keep_checkpoints"),
        on_step=on_step,
        on_epoch=on_epoch,
    )
    return loop.run()


def _check_batch_size(batch_size: Any, devices: int, n_train: int) -> None:
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
        or batch_size % devices
        or batch_size > n_train
    ):
        raise ValueError(
            f"`batch_size`={batch_size!r} must be a positive multiple of the {devices} "
            f"device(s) and at most the {n_train} training examples"
        )


@dataclasses.dataclass
class _Loop:
    """One run of :func:`train_classifier`: its settings, and the state it carries.

    The state (parameters, optimizer state, step, losses, epoch figures, the data
    order's generator) is what a checkpoint holds.
    """

    model: Any
    mesh: Mesh
    x_train: np.ndarray
    y_train: np.ndarray
    test: tuple[np.ndarray, np.ndarray]
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    checkpoint_dir: str | os.PathLike | None
    checkpoint_every: int
    keep_checkpoints: int
    on_step: Callable[[int, float], None] | None
    on_epoch: Callable[[EpochStats], None] | None

    def __post_init__(self) -> None:
        self.devices = self.mesh.devices.size
        _check_batch_size(self.batch_size, self.devices, len(self.x_train))
        self.steps_per_epoch = len(self.x_train) // self.batch_size
        self.total_steps = self.epochs * self.steps_per_epoch
        schedule = optax.cosine_decay_schedule(self.learning_rate, self.total_steps)
        self.optimizer = optax.adamw(schedule, weight_decay=1e-4)

        init_key = jax.random.key(self.seed)
        params = jax.jit(self.model.init)(init_key, jnp.asarray(self.x_train[:1]))["params"]
        self.params = replicate(params, self.mesh)
        self.opt_state = replicate(self.optimizer.init(self.params), self.mesh)
        self.state: dict[str, Any] = {}  # a classifier without batch statistics
        self.replicated = NamedSharding(self.mesh, P())
        self.data = NamedSharding(self.mesh, P(DATA_AXIS))

        self.order_rng = np.random.default_rng(self.seed)
        self.epoch_rng_state: dict[str, Any] = {}
        self.losses: list[float] = []
        self.history: list[EpochStats] = []
        self.step = 0
        self.config = {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "n_train": len(self.x_train),
        }
        self.last_checkpoint: str | None = None
        self.step_times: list[float] = []

    def restore(self, checkpoint_dir: str | os.PathLike) -> None:
        """Continues from the newest good checkpoint in ``checkpoint_dir``, if any."""
        restored = checkpoints.restore_latest(
            checkpoint_dir, {"params": self.params, "opt_state": self.opt_state}
        )
        if restored is None:
            return
        tree, meta = restored
        if meta["config"] != self.config:
            raise ValueError(
                f"`checkpoint_dir` {os.fspath(checkpoint_dir)!r} holds a run with "
                f"settings {meta['config']}, not {self.config}; pass another folder"
            )
        self.params, self.opt_state = tree["params"], tree["opt_state"]
        self.step = int(meta["step"])
        self.losses = [float(v) for v in meta["losses"]]
        self.history = [EpochStats(*e) for e in meta["epochs"]]
        self.order_rng.bit_generator.state = meta["order_rng"]
        self.last_checkpoint = os.fspath(checkpoints.step_dir(checkpoint_dir, self.step))

    def save(self, checkpoint_dir: str | os.PathLike) -> str:
        """Writes a checkpoint of the state after the current step; returns its folder."""
        meta = {
            "step": self.step,
            "config": self.config,
            # The generator's state at the start of the epoch of the next step.
            "order_rng": (
                self.epoch_rng_state
                if self.step % self.steps_per_epoch
                else self._order_rng_state()
            ),
            "losses": self.losses,
            "epochs": [dataclasses.astuple(e) for e in self.history],
        }
        tree = {"params": self.params, "opt_state": self.opt_state}
        return os.fspath(
            checkpoints.save(checkpoint_dir, self.step, tree, meta, keep=self.keep_checkpoints)
        )

    def _order_rng_state(self) -> dict[str, Any]:
        return dict(self.order_rng.bit_generator.state)

    def compile(self) -> tuple[Callable, float]:
        """The guarded step, compiled for this mesh and batch, and the compile time."""
        replicated, data = self.replicated, self.data
        jitted = jax.jit(
            _guarded_step(self.model, self.optimizer),
            in_shardings=(replicated, replicated, replicated, data, data),
            out_shardings=(replicated, replicated, replicated, replicated, replicated),
            donate_argnums=(0, 1, 2),
        )
        start = time.perf_counter()
        x_spec = jax.ShapeDtypeStruct(
            (self.batch_size, *self.x_train.shape[1:]), jnp.float32, sharding=data
        )
        y_spec = jax.ShapeDtypeStruct((self.batch_size,), jnp.int32, sharding=data)
        compiled = jitted.lower(self.params, self.state, self.opt_state, x_spec, y_spec).compile()
        return compiled, time.perf_counter() - start

    def train_batch(self, compiled: Callable, rows: np.ndarray) -> float:
        """One step on the training rows ``rows``; raises on a non-finite step."""
        xb = shard_batch(self.x_train[rows], self.mesh)
        yb = shard_batch(self.y_train[rows], self.mesh)
        t0 = time.perf_counter()
        self.params, self.state, self.opt_state, loss, ok = compiled(
            self.params, self.state, self.opt_state, xb, yb
        )
        loss = float(loss)
        self.step_times.append(time.perf_counter() - t0)
        self.step += 1
        if not bool(ok):
            message, layer = _diagnose(
                self.model,
                self.optimizer,
                self.params,
                self.state,
                self.opt_state,
                xb,
                yb,
                self.x_train[rows],
                self.step,
                loss,
            )
            if self.last_checkpoint is not None:
                message += f"; the last good checkpoint is {self.last_checkpoint}"
            raise NonFiniteLossError(
                message,
                step=self.step,
                layer=layer,
                losses=np.asarray(self.losses, np.float32),
                checkpoint=self.last_checkpoint,
            )
        self.losses.append(loss)
        return loss

    def end_epoch(self, epoch: int, predict: Callable) -> np.ndarray:
        """The test predictions after ``epoch``, recorded with the epoch's figures."""
        x_test, y_test = self.test
        predictions = _predictions(predict, self.params, x_test, self.mesh, 512)
        accuracy = _fraction_correct(predictions, y_test)
        epoch_losses = self.losses[self.step - self.steps_per_epoch : self.step]
        stats = EpochStats(epoch, float(np.mean(epoch_losses)), accuracy)
        self.history.append(stats)
        if self.on_epoch is not None:
            self.on_epoch(stats)
        return predictions

    def run(self) -> TrainResult:
        """Trains from the newest checkpoint (or from the start) to the last epoch."""
        checkpoint_dir = self.checkpoint_dir
        if checkpoint_dir is not None:
            self.restore(checkpoint_dir)
        compiled, compile_time = self.compile()
        predict = _predict_fn(self.model.apply, self.mesh)
        predictions = None
        steps = self.steps_per_epoch
        for epoch in range(self.step // steps + 1, self.epochs + 1):
            self.epoch_rng_state = self._order_rng_state()
            order = self.order_rng.permutation(len(self.x_train))
            for i in range(self.step % steps, steps):
                rows = order[i * self.batch_size : (i + 1) * self.batch_size]
                loss = self.train_batch(compiled, rows)
                if self.on_step is not None:
                    self.on_step(self.step, loss)
                if i == steps - 1:
                    predictions = self.end_epoch(epoch, predict)
                if checkpoint_dir is not None and (
                    self.step % self.checkpoint_every == 0 or self.step == self.total_steps
                ):
                    self.last_checkpoint = self.save(checkpoint_dir)
        if predictions is None:  # resumed from the final checkpoint
            predictions = _predictions(predict, self.params, self.test[0], self.mesh, 512)
        timed = self.step_times[1:] if len(self.step_times) > 1 else self.step_times
        return TrainResult(
            params=self.params,
            losses=np.asarray(self.losses, np.float32),
            epochs=tuple(self.history),
            test_accuracy=self.history[-1].test_accuracy,
            test_predictions=predictions,
            step_time_s=float(np.median(timed)) if timed else float("nan"),
            compile_time_s=compile_time,
            num_devices=self.devices,
        )
