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
``--devices N`` picks how many. ``--processes N`` starts N processes on this machine's
CPU, joined by :func:`jax.distributed.initialize` (:mod:`sepconv_jax.apps.distributed`),
the code path of a multi-host run; on a cluster each host runs the demo with
``--coordinator HOST:PORT --num-processes N --process-id I`` instead.

A step whose loss goes NaN or infinite stops training
(:class:`~sepconv_jax.apps.train.NonFiniteLossError`); the demo then writes the fault
(step, first non-finite layer, message) to ``{task}_results.json`` and exits with 3.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from sepconv_jax import cost, ops
from sepconv_jax.apps import demo_report, distributed
from sepconv_jax.apps.data import digits_data, waveform_data
from sepconv_jax.apps.demo_records import Comparison as Comparison
from sepconv_jax.apps.demo_records import ModelRun as ModelRun
from sepconv_jax.apps.demo_records import TrainingFault as TrainingFault
from sepconv_jax.apps.networks import DigitsCNN, SequenceCNN
from sepconv_jax.apps.timing import time_jitted
from sepconv_jax.apps.train import NonFiniteLossError, data_mesh, train_classifier

__all__ = [
    "LAYERS",
    "QUICK_TRAIN",
    "TASKS",
    "Comparison",
    "ModelRun",
    "TrainingFault",
    "compare",
    "layer_rows",
    "register_cli",
    "run",
]

TASKS = ("digits", "sequence", "layers", "stream")

# ----------------------------------------------------------------------------- comparison


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
    device: cost.Device | None = None,
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
      device: the roofline device for the predicted step times; ``None`` measures
        this machine (:meth:`sepconv_jax.cost.Device.measure`).

    Returns:
      A :class:`Comparison`.

    Raises:
      ValueError: for an unknown task or a bad batch size or device count.
      RuntimeError: when the digits task lacks scikit-learn.
      TrainingFault: when a network's training stops on a non-finite step.
    """
    start = time.perf_counter()
    mesh = data_mesh(devices)
    if epochs is None:
        epochs = 1 if quick else {"digits": 15, "sequence": 6}.get(task, 1)
    train, test, standard, separable = _task_setup(task, quick)
    example = jax.ShapeDtypeStruct((1, *train[0].shape[1:]), jnp.float32)
    per_device = max(1, batch_size // int(mesh.devices.size))
    step_example = jax.ShapeDtypeStruct((per_device, *train[0].shape[1:]), jnp.float32)
    if device is None:
        device = cost.Device.measure(copy_bytes=1 << 26, matmul_size=512 if quick else 1024)
    settings = _settings(epochs, batch_size, learning_rate, seed, mesh, train, test, device)
    runs = [
        _train_run(
            task,
            name,
            model,
            train,
            test,
            settings,
            example=example,
            step_example=step_example,
            device=device,
            mesh=mesh,
            progress=progress,
        )
        for name, model in (("standard", standard), ("separable", separable))
    ]
    return Comparison(task, runs[0], runs[1], settings, time.perf_counter() - start)


def _settings(
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    mesh: Any,
    train: Any,
    test: Any,
    device: cost.Device,
) -> dict[str, Any]:
    """The settings of a :class:`Comparison`: the budget, the machine, the data."""
    return {
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "devices": int(mesh.devices.size),
        "processes": jax.process_count(),
        "backend": jax.default_backend(),
        "input": "x".join(map(str, train[0].shape[1:])),
        "n_train": len(train[0]),
        "n_test": len(test[0]),
        "roofline_device": {
            "name": device.name,
            "peak_flops": device.peak_flops,
            "bandwidth": device.bandwidth,
            "source": device.source,
        },
    }


def _train_run(
    task: str,
    name: str,
    model: nn.Module,
    train: Any,
    test: Any,
    settings: dict[str, Any],
    *,
    example: jax.ShapeDtypeStruct,
    step_example: jax.ShapeDtypeStruct,
    device: cost.Device,
    mesh: Any,
    progress: bool,
) -> ModelRun:
    """Profiles and trains one network of :func:`compare` with its settings."""
    epochs, batch_size = settings["epochs"], settings["batch_size"]
    prof = cost.profile(model, example)
    block_mult_adds, block_params = _block_cost(prof)
    predicted = cost.roofline(cost.profile(model, step_example), device, training=True)
    with _EpochBars(name, epochs, len(train[0]) // batch_size, progress) as bars:
        try:
            result = train_classifier(
                model,
                train,
                test,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=settings["learning_rate"],
                seed=settings["seed"],
                mesh=mesh,
                on_step=bars.step,
                on_epoch=bars.epoch,
            )
        except NonFiniteLossError as e:
            raise TrainingFault(task, name, settings, e) from e
    return ModelRun(
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
        predicted_step_ms=1e3 * predicted.predicted_s,
    )


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


def layer_rows(
    batch: int = 1, repeats: int = 5, layers=None, device: cost.Device | None = None
) -> list[dict]:
    """Standard vs separable cost and ``jax.jit`` time of 3x3 layers, one dict per layer.

    Costs come from the closed forms of :mod:`sepconv_jax.cost` (stride 1, ``"SAME"``
    padding, no biases); times from :func:`sepconv_jax.apps.timing.time_jitted`; with
    a ``device``, the roofline's predicted times too (:func:`sepconv_jax.cost.roofline`
    of each function's :func:`~sepconv_jax.cost.count`).

    Args:
      batch: batch size of the timed calls.
      repeats: timed calls per layer (the best is kept).
      layers: ``(spatial size, in channels, out channels)`` of each layer; default
        :data:`LAYERS`.
      device: a :class:`~sepconv_jax.cost.Device` for the roofline predictions.

    Returns:
      Per layer: ``layer``, ``standard_mult_adds``, ``separable_mult_adds``,
      ``standard_params``, ``separable_params``, ``savings_factor``,
      ``standard_ms``, ``separable_ms``; with a ``device`` also
      ``standard_predicted_ms`` and ``separable_predicted_ms``.

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
        predicted = {}
        if device is not None:
            for name, fn, args in (
                ("standard", standard_fn, [x, sk]),
                ("separable", separable_fn, [x, dk, pk]),
            ):
                rf = cost.roofline(cost.count(fn, *args), device)
                predicted[f"{name}_predicted_ms"] = 1e3 * rf.predicted_s
        rows.append(
            {
                **predicted,
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

    if args.task == "stream":
        if args.processes is not None or args.coordinator is not None:
            print(
                "sepconv-jax demo: error: --processes and --coordinator train the digits or "
                "sequence task across processes; --task stream runs in one process",
                file=sys.stderr,
            )
            return 2
        _request_devices(args.devices)
        from sepconv_jax.apps import stream_demo

        return stream_demo.run(args)
    if args.processes is not None and args.coordinator is None:
        return _launch_processes(args)
    if args.coordinator is not None:
        _request_devices(args.devices)
        try:
            distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        except (ValueError, TypeError) as e:
            print(f"sepconv-jax demo: error: {e}", file=sys.stderr)
            return 2
    else:
        _request_devices(args.devices)
    primary = jax.process_index() == 0
    console = Console(quiet=not primary)
    if args.task == "layers":
        batch = 1 if args.batch_size is None else args.batch_size
        device = cost.Device.measure(copy_bytes=1 << 26, matmul_size=512 if args.quick else 1024)
        rows = layer_rows(batch=batch, repeats=3 if args.quick else 10, device=device)
        demo_report.print_layer_table(rows)
        console.print(
            f"roofline: {device.name}, {device.peak_flops / 1e9:.1f} GFLOP/s, "
            f"{device.bandwidth / 1e9:.1f} GB/s; gap explained: how much of the gap between "
            f"the MAC ratio and the time ratio (on a log scale) the roofline ratio accounts for",
            soft_wrap=True,
        )
        return 0
    try:
        comparison = compare(
            args.task,
            epochs=args.epochs,
            batch_size=32 if args.batch_size is None else args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            # Every process's devices take part in a multi-process run.
            devices=None if args.coordinator is not None else args.devices,
            quick=args.quick,
            progress=primary,
        )
    except TrainingFault as fault:
        if primary:
            path = demo_report.write_fault(fault, args.out)
            print(f"sepconv-jax demo: {fault}\nFault recorded in {path}", file=sys.stderr)
        return 3
    except (ValueError, TypeError, RuntimeError) as e:
        print(f"sepconv-jax demo: error: {e}", file=sys.stderr)
        return 2
    if not primary:
        return 0
    paths = demo_report.write_outputs(comparison, args.out)
    demo_report.print_comparison(comparison, paths, console)
    return 0


def _launch_processes(args: argparse.Namespace) -> int:
    """``--processes N``: the same demo as N local processes joined into one run."""
    if args.processes < 1:
        print(
            f"sepconv-jax demo: error: `--processes` must be >= 1, got {args.processes}",
            file=sys.stderr,
        )
        return 2
    forwarded = ["-m", "sepconv_jax.cli", "demo", "--task", args.task, "--seed", str(args.seed)]
    forwarded += ["--out", str(args.out), "--learning-rate", repr(args.learning_rate)]
    if args.epochs is not None:
        forwarded += ["--epochs", str(args.epochs)]
    if args.batch_size is not None:
        forwarded += ["--batch-size", str(args.batch_size)]
    if args.quick:
        forwarded.append("--quick")
    try:
        results = distributed.launch_local(
            args.processes,
            forwarded,
            timeout_s=args.timeout,
            devices_per_process=args.devices or 1,
        )
    except RuntimeError as e:
        print(f"sepconv-jax demo: error: {e}", file=sys.stderr)
        return 2
    return max((r.returncode for r in results), default=0)


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
    parser.add_argument(
        "--learning-rate", type=float, default=3e-3, help="peak learning rate (default 3e-3)"
    )
    multi = parser.add_argument_group(
        "multi-process",
        "--processes N runs N processes on this machine's CPU (each with --devices CPU "
        "devices); on a cluster, run the demo on every host with --coordinator, "
        "--num-processes and --process-id.",
    )
    multi.add_argument("--processes", type=int, default=None, help="local processes to start")
    multi.add_argument(
        "--timeout", type=float, default=1800.0, help="bound on a --processes run, in seconds"
    )
    multi.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
    multi.add_argument("--num-processes", type=int, default=1, help="processes in the run")
    multi.add_argument("--process-id", type=int, default=0, help="this process's index")
    parser.set_defaults(func=run)
    return parser
