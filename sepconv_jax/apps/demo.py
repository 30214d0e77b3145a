"""``sepconv-jax demo``: the seed's claim, tested by training on real data.

Separable convolutions cut compute and parameters by ``k^2 N / (k^2 + N)`` (8-9x for
3x3 windows and 64-512 channels) "without significant accuracy loss". The demo
trains two networks of the same topology (:mod:`sepconv_jax.apps.networks`), one with
standard convolutions (``flax.linen.Conv``) and one with
:class:`sepconv_jax.linen.SeparableConv`, with the same seed, optimizer and budget,
and prints their parameters, mult-adds (from :func:`sepconv_jax.cost.profile`),
measured train-step time and test accuracy, with the ratios between them
(:mod:`sepconv_jax.apps.demo_report`). Tasks (:mod:`sepconv_jax.apps.data`):

* ``digits`` (default): scikit-learn's bundled 8x8 handwritten digits (1,797 images,
  no download) at their native size, with a fixed stratified 80/20 split.
* ``sequence``: a 1-D task for audio-like signals: classify a noisy waveform
  (sine, square, rising or falling sawtooth, random period, phase and amplitude)
  with causal 1-D convolutions; the data are generated on the spot from a fixed seed.
* ``layers``: no training; standard vs separable cost (:mod:`sepconv_jax.cost`) and
  ``jax.jit`` time of a few MobileNet-sized 3x3 layers.
* ``stream``: a causal separable detector trained on generated 16 kHz audio, then
  streamed chunk by chunk with ``decode=True`` (:mod:`sepconv_jax.apps.stream_demo`).

Training is data-parallel over every local device (see :mod:`sepconv_jax.apps.train`);
``--devices N`` picks how many.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from sepconv_jax import cost, ops
from sepconv_jax.apps import demo_report
from sepconv_jax.apps.data import digits_data, waveform_data
from sepconv_jax.apps.networks import DigitsCNN, SequenceCNN
from sepconv_jax.apps.timing import time_jitted
from sepconv_jax.apps.train import data_mesh, train_classifier

__all__ = [
    "LAYERS",
    "QUICK_TRAIN",
    "TASKS",
    "Comparison",
    "ModelRun",
    "compare",
    "layer_rows",
    "register_cli",
    "run",
]

TASKS = ("digits", "sequence", "layers", "stream")

# ----------------------------------------------------------------------------- comparison


@dataclasses.dataclass(frozen=True)
class ModelRun:
    """One trained network of a :class:`Comparison`.

    Attributes:
      name: ``"standard"`` or ``"separable"``.
      params: trainable parameters.
      mult_adds: mult-adds per example (:func:`sepconv_jax.cost.profile`).
      block_mult_adds: mult-adds per example in the blocks, the layers that differ.
      block_params: parameters of the blocks.
      step_ms: median wall time of one training step, in milliseconds.
      compile_s: compile time of the training step, in seconds.
      test_accuracy: accuracy on the test set after training, in ``[0, 1]``.
      test_predictions: the predicted label of every test example after training,
        in the test set's order (``test_accuracy`` is the fraction of them correct).
      epoch_accuracy: test accuracy after each epoch.
      losses: training loss of every step.
    """

    name: str
    params: int
    mult_adds: int
    block_mult_adds: int
    block_params: int
    step_ms: float
    compile_s: float
    test_accuracy: float
    test_predictions: tuple[int, ...]
    epoch_accuracy: tuple[float, ...]
    losses: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`compare`: the two runs and their settings.

    Attributes:
      task: ``"digits"`` or ``"sequence"``.
      standard: the standard-convolution run.
      separable: the separable-convolution run.
      settings: epochs, batch size, seed, devices, backend, input shape, sizes.
      wall_s: wall time of the whole comparison (data, compile, training), seconds.
    """

    task: str
    standard: ModelRun
    separable: ModelRun
    settings: dict[str, Any]
    wall_s: float

    def ratios(self) -> dict[str, float]:
        """Standard over separable for params, mult-adds and step time; accuracy difference.

        ``accuracy_points`` is separable minus standard test accuracy, in
        percentage points.
        """
        s, p = self.standard, self.separable
        return {
            "params": s.params / p.params,
            "mult_adds": s.mult_adds / p.mult_adds,
            "block_params": s.block_params / p.block_params,
            "block_mult_adds": s.block_mult_adds / p.block_mult_adds,
            "step_time": s.step_ms / p.step_ms,
            "accuracy_points": 100.0 * (p.test_accuracy - s.test_accuracy),
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: settings, both runs, ratios."""
        return {
            "task": self.task,
            "settings": self.settings,
            "wall_s": self.wall_s,
            "standard": dataclasses.asdict(self.standard),
            "separable": dataclasses.asdict(self.separable),
            "ratios": self.ratios(),
        }


#: Training examples in a ``quick`` run.
QUICK_TRAIN = 512


def _task_setup(task: str, quick: bool) -> tuple[Any, Any, nn.Module, nn.Module]:
    if task == "digits":
        train, test = digits_data()
        if quick:
            train = (train[0][:QUICK_TRAIN], train[1][:QUICK_TRAIN])
        return train, test, DigitsCNN(separable=False), DigitsCNN(separable=True)
    if task == "sequence":
        n_train, n_test = (QUICK_TRAIN, 256) if quick else (2048, 512)
        train, test = waveform_data(n_train=n_train, n_test=n_test)
        return train, test, SequenceCNN(separable=False), SequenceCNN(separable=True)
    raise ValueError(f"`task` must be 'digits' or 'sequence' for training, got {task!r}")


def _block_cost(profile) -> tuple[int, int]:
    rows = [row for row in profile.layers if row.path.startswith("block")]
    return sum(r.mult_adds for r in rows), sum(r.params for r in rows)


def compare(
    task: Literal["digits", "sequence"] = "digits",
    *,
    epochs: int | None = None,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    devices: int | None = None,
    quick: bool = False,
    progress: bool = True,
) -> Comparison:
    """Trains a standard and a separable network on ``task`` with the same budget.

    Both networks get the same seed (initialization and data order), optimizer
    (AdamW, cosine decay) and number of steps; the batch is split over the devices.

    Args:
      task: ``"digits"`` (images) or ``"sequence"`` (1-D causal).
      epochs: passes over the training data; default 15 (digits) or 6 (sequence),
        1 with ``quick``.
      batch_size: global batch size, a multiple of the number of devices.
      learning_rate: peak learning rate.
      seed: training seed.
      devices: how many devices to split the batch over; ``None`` means all.
      quick: a short run for CI: one epoch over :data:`QUICK_TRAIN` examples.
      progress: show a progress bar per epoch (rich).

    Returns:
      A :class:`Comparison`.

    Raises:
      ValueError: for an unknown task or a bad batch size or device count.
      RuntimeError: when the digits task lacks scikit-learn.
    """
    start = time.perf_counter()
    mesh = data_mesh(devices)
    if epochs is None:
        epochs = 1 if quick else {"digits": 15, "sequence": 6}.get(task, 1)
    train, test, standard, separable = _task_setup(task, quick)
    example = jax.ShapeDtypeStruct((1, *train[0].shape[1:]), jnp.float32)
    runs = []
    for name, model in (("standard", standard), ("separable", separable)):
        prof = cost.profile(model, example)
        block_mult_adds, block_params = _block_cost(prof)
        with _EpochBars(name, epochs, len(train[0]) // batch_size, progress) as bars:
            result = train_classifier(
                model,
                train,
                test,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                seed=seed,
                mesh=mesh,
                on_step=bars.step,
                on_epoch=bars.epoch,
            )
        runs.append(
            ModelRun(
                name=name,
                params=prof.params,
                mult_adds=prof.mult_adds,
                block_mult_adds=block_mult_adds,
                block_params=block_params,
                step_ms=1e3 * result.step_time_s,
                compile_s=result.compile_time_s,
                test_accuracy=result.test_accuracy,
                test_predictions=tuple(int(v) for v in result.test_predictions),
                epoch_accuracy=tuple(e.test_accuracy for e in result.epochs),
                losses=tuple(float(v) for v in result.losses),
            )
        )
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "devices": int(mesh.devices.size),
        "backend": jax.default_backend(),
        "input": "x".join(map(str, train[0].shape[1:])),
        "n_train": len(train[0]),
        "n_test": len(test[0]),
    }
    return Comparison(task, runs[0], runs[1], settings, time.perf_counter() - start)


class _EpochBars:
    """One rich progress bar per epoch: steps done, then the mean loss and test accuracy."""

    def __init__(self, name: str, epochs: int, steps: int, enabled: bool):
        self.name, self.epochs, self.steps, self.enabled = name, epochs, steps, enabled
        self.progress: Any = None  # a rich.progress.Progress while enabled
        self.task: Any = None
        self.current = 0

    def __enter__(self) -> _EpochBars:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
            )
            self.progress.start()
        return self

    def _new_bar(self) -> None:
        self.current += 1
        description = f"{self.name:>9} epoch {self.current:>2}/{self.epochs}"
        self.task = self.progress.add_task(description, total=self.steps, status="")

    def step(self, step: int, loss: float) -> None:
        if self.progress is None:
            return
        if self.task is None:
            self._new_bar()
        self.progress.update(self.task, advance=1, status=f"loss {loss:.3f}")

    def epoch(self, stats) -> None:
        if self.progress is None:
            return
        self.progress.update(
            self.task,
            status=f"loss {stats.mean_loss:.3f}  test accuracy {100 * stats.test_accuracy:.1f}%",
        )
        self.task = None

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


# ----------------------------------------------------------------------------- layers task

#: (spatial size, in channels C, out channels N) of MobileNetV1 3x3 layers at 224x224.
LAYERS = ((112, 32, 64), (56, 128, 128), (28, 256, 256), (14, 512, 512), (7, 1024, 1024))
KERNEL = 3


def layer_rows(batch: int = 1, repeats: int = 5, layers=None) -> list[dict]:
    """Standard vs separable cost and ``jax.jit`` time of 3x3 layers, one dict per layer.

    Costs come from the closed forms of :mod:`sepconv_jax.cost` (stride 1, ``"SAME"``
    padding, no biases); times from :func:`sepconv_jax.apps.timing.time_jitted`.

    Args:
      batch: batch size of the timed calls.
      repeats: timed calls per layer (the best is kept).
      layers: ``(spatial size, in channels, out channels)`` of each layer; default
        :data:`LAYERS`.

    Returns:
      Per layer: ``layer``, ``standard_mult_adds``, ``separable_mult_adds``,
      ``standard_params``, ``separable_params``, ``savings_factor``,
      ``standard_ms``, ``separable_ms``.

    Example:
      >>> from sepconv_jax.apps.demo import layer_rows
      >>> row = layer_rows(repeats=1, layers=((8, 16, 32),))[0]
      >>> row["layer"], row["standard_mult_adds"], row["separable_mult_adds"]
      ('8x8x16->32', 294912, 41984)
    """
    layers = LAYERS if layers is None else layers
    rows = []
    key = jax.random.key(0)

    def standard_fn(x, k):
        return ops.grouped_conv(x, k, groups=1)

    def separable_fn(x, dk, pk):
        return ops.separable_conv(x, dk, pk)

    for hw, c, n in layers:
        kx, kd, kp, ks = jax.random.split(jax.random.fold_in(key, hw * c), 4)
        x = jax.random.normal(kx, (batch, hw, hw, c))
        dk = jax.random.normal(kd, (KERNEL, KERNEL, 1, c))
        pk = jax.random.normal(kp, (c, n))
        sk = jax.random.normal(ks, (KERNEL, KERNEL, c, n))
        standard = cost.standard_conv_cost(KERNEL, c, n, output_spatial=hw)
        separable = cost.separable_conv_cost(KERNEL, c, n, output_spatial=hw)
        standard_s, _ = time_jitted(standard_fn, [x, sk], max_reps=repeats)
        separable_s, _ = time_jitted(separable_fn, [x, dk, pk], max_reps=repeats)
        rows.append(
            {
                "layer": f"{hw}x{hw}x{c}->{n}",
                "standard_mult_adds": standard.mult_adds,
                "separable_mult_adds": separable.mult_adds,
                "standard_params": standard.params,
                "separable_params": separable.params,
                "savings_factor": cost.savings_factor(KERNEL, n),
                "standard_ms": 1e3 * standard_s,
                "separable_ms": 1e3 * separable_s,
            }
        )
    return rows


# ----------------------------------------------------------------------------- CLI


def _request_devices(devices: int | None) -> None:
    """Asks for ``devices`` host devices when JAX has not started yet (CPU simulation)."""
    if devices is None or devices <= 1:
        return
    try:
        if jax.config.jax_num_cpu_devices < devices:  # type: ignore[attr-defined]
            jax.config.update("jax_num_cpu_devices", devices)
    except RuntimeError:  # JAX already started: use the devices it has
        pass


def run(args: argparse.Namespace) -> int:
    """Runs the ``demo`` subcommand; returns the exit code."""
    from rich.console import Console

    _request_devices(args.devices)
    console = Console()
    if args.task == "stream":
        from sepconv_jax.apps import stream_demo

        return stream_demo.run(args)
    if args.task == "layers":
        batch = 1 if args.batch_size is None else args.batch_size
        demo_report.print_layer_table(layer_rows(batch=batch, repeats=3 if args.quick else 10))
        return 0
    try:
        comparison = compare(
            args.task,
            epochs=args.epochs,
            batch_size=32 if args.batch_size is None else args.batch_size,
            seed=args.seed,
            devices=args.devices,
            quick=args.quick,
        )
    except (ValueError, TypeError, RuntimeError) as e:
        print(f"sepconv-jax demo: error: {e}", file=sys.stderr)
        return 2
    paths = demo_report.write_outputs(comparison, args.out)
    demo_report.print_comparison(comparison, paths, console)
    return 0


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Adds the ``demo`` subcommand to an ``argparse`` subparsers object.

    Returns:
      The ``demo`` parser; its ``func`` default runs the demo.
    """
    parser = subparsers.add_parser(
        "demo",
        help="train standard vs separable CNNs and compare cost and accuracy",
        description="Trains two networks of the same topology, one with standard and one "
        "with separable convolutions, and prints parameters, mult-adds, step time and test "
        "accuracy with their ratios. --task layers times single layers instead; --task stream "
        "streams a causal separable network on generated audio and prints its latency.",
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="digits",
        help="digits (default: scikit-learn's handwritten digits), sequence (1-D causal, "
        "generated waveforms), layers (no training: single-layer costs and times) or stream "
        "(a causal separable detector on generated audio, streamed chunk by chunk)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="default 15 digits, 6 sequence")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="global batch (default 32; layers: 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument(
        "--devices",
        type=int,
        default=None,
        help="devices to split each batch over (default: all); on a CPU, N > 1 simulates N",
    )
    parser.add_argument(
        "--out", default="out/demo", help="folder for the JSON figures and the PNG plot"
    )
    parser.add_argument("--quick", action="store_true", help="a short run (for CI)")
    parser.set_defaults(func=run)
    return parser
