"""``sepconv-jax demo``: the seed's claim, tested by training on real data.

Separable convolutions cut compute and parameters by ``k^2 N / (k^2 + N)`` (8-9x for
3x3 windows and 64-512 channels) "without significant accuracy loss". The demo
trains two networks of the same topology, one with standard convolutions
(``flax.linen.Conv``) and one with :class:`sepconv_jax.linen.SeparableConv`, with
the same seed, optimizer and budget, and prints their parameters, mult-adds (from
:func:`sepconv_jax.cost.profile`), measured train-step time and test accuracy, with
the ratios between them. Tasks:

* ``digits`` (default): scikit-learn's bundled 8x8 handwritten digits (1,797 images,
  no download) at their native size, with a fixed stratified 80/20 split.
* ``sequence``: a 1-D task for audio-like signals: classify a noisy waveform
  (sine, square, sawtooth or triangle, random pitch and phase) with causal 1-D
  convolutions; the data are generated on the spot from a fixed seed.
* ``layers``: no training; standard vs separable cost and ``jax.jit`` time of a few
  MobileNet-sized 3x3 layers.

Training is data-parallel over every local device (see :mod:`sepconv_jax.train`);
``--devices N`` picks how many. The first layer is a standard convolution in both
networks, as in MobileNet: on a one-channel input a separable layer would be a
single filter scaled per output channel.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sepconv_jax import ops

__all__ = [
    "QUICK_TRAIN",
    "TASKS",
    "WAVEFORMS",
    "Comparison",
    "DigitsCNN",
    "ModelRun",
    "SequenceCNN",
    "compare",
    "comparison_table",
    "digits_data",
    "layer_rows",
    "plot_comparison",
    "print_table",
    "register_cli",
    "waveform_data",
    "write_outputs",
]

TASKS = ("digits", "sequence", "layers")

# ----------------------------------------------------------------------------- data


def digits_data(
    image_size: int = 8, test_fraction: float = 0.2
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's handwritten digits, standardized, with a fixed split.

    The split is stratified by class with ``random_state=0``, whatever the
    training seed, so every run tests on the same images. Pixels (0 to 16) are
    standardized with the mean and standard deviation of the training images.

    Args:
      image_size: side of the square images; the native 8x8 images are resized
        bilinearly when it differs.
      test_fraction: share of the 1,797 images held out for testing.

    Returns:
      ``((x_train, y_train), (x_test, y_test))`` with images
      ``(n, image_size, image_size, 1)`` float32 and labels ``(n,)`` int32 in 0..9.

    Raises:
      RuntimeError: when scikit-learn is not installed.

    Example:
      >>> from sepconv_jax.demo import digits_data
      >>> (x_train, y_train), (x_test, y_test) = digits_data(image_size=8)
      >>> x_train.shape, x_test.shape, int(y_train.max())
      ((1437, 8, 8, 1), (360, 8, 8, 1), 9)
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise RuntimeError(
            f"the digits task needs scikit-learn (`pip install scikit-learn`): {e}"
        ) from None
    digits = load_digits()
    images = digits.images.astype(np.float32)[..., None] / 16.0
    if image_size != images.shape[1]:
        shape = (images.shape[0], image_size, image_size, 1)
        images = np.asarray(jax.image.resize(images, shape, "linear"))
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=0
    )
    mean, std = x_train.mean(), x_train.std()
    x_train = (x_train - mean) / std
    x_test = (x_test - mean) / std
    return (x_train, y_train), (x_test, y_test)


WAVEFORMS = ("sine", "square", "rising sawtooth", "falling sawtooth")


def waveform_data(
    n_train: int = 2048, n_test: int = 512, length: int = 64, noise: float = 0.3, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A generated sequence task: which waveform is under the noise?

    Each example is one of :data:`WAVEFORMS` (the label, balanced; telling the two
    sawtooths apart needs the direction of time) with a random
    period of 6 to 40 samples, random phase, amplitude 0.5 to 1.5, and Gaussian
    noise of standard deviation ``noise``.

    Args:
      n_train: training examples.
      n_test: test examples.
      length: samples per sequence.
      noise: standard deviation of the additive noise.
      seed: seed of the generator (the data, not the training).

    Returns:
      ``((x_train, y_train), (x_test, y_test))`` with sequences ``(n, length, 1)``
      float32 and labels ``(n,)`` int32 in 0..3.

    Example:
      >>> from sepconv_jax.demo import waveform_data
      >>> (x, y), _ = waveform_data(n_train=8, n_test=4, length=32)
      >>> x.shape, y.tolist()
      ((8, 32, 1), [0, 1, 2, 3, 0, 1, 2, 3])
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    labels = np.arange(n) % len(WAVEFORMS)
    period = rng.uniform(4.0, 16.0, size=(n, 1))
    phase = rng.uniform(0.0, 1.0, size=(n, 1))
    amplitude = rng.uniform(0.5, 1.5, size=(n, 1))
    cycles = np.arange(length)[None, :] / period + phase
    frac = cycles % 1.0
    waves = np.stack(
        [
            np.sin(2 * np.pi * cycles),
            np.where(frac < 0.5, 1.0, -1.0),
            2.0 * frac - 1.0,
            1.0 - 2.0 * frac,
        ]
    )
    signal = waves[labels, np.arange(n)] * amplitude
    x = (signal + noise * rng.normal(size=signal.shape)).astype(np.float32)[..., None]
    y = labels.astype(np.int32)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


# ----------------------------------------------------------------------------- models


def _conv(separable: bool, features: int, window: tuple[int, ...], name: str, **kwargs):
    from sepconv_jax.linen import SeparableConv

    if separable:
        return SeparableConv(features, window, name=name, **kwargs)
    return nn.Conv(features, window, name=name, **kwargs)


class DigitsCNN(nn.Module):
    """A small image classifier: a standard 3x3 stem, 3x3 blocks, global pooling, dense.

    Attributes:
      separable: use :class:`sepconv_jax.linen.SeparableConv` in the blocks (the
        stem stays a standard convolution), else ``flax.linen.Conv``.
      stem: stem output channels.
      blocks: ``(features, stride)`` of each block.
      num_classes: classifier outputs.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.demo import DigitsCNN
      >>> model = DigitsCNN(separable=True)
      >>> x = jnp.zeros((2, 8, 8, 1))
      >>> variables = jax.jit(model.init)(jax.random.key(0), x)
      >>> jax.jit(model.apply)(variables, x).shape
      (2, 10)
    """

    separable: bool
    stem: int = 32
    blocks: Sequence[tuple[int, int]] = ((64, 1), (128, 2), (128, 1))
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(batch, height, width, 1)`` images to ``(batch, num_classes)`` logits."""
        x = nn.relu(nn.Conv(self.stem, (3, 3), name="stem")(x))
        for i, (features, stride) in enumerate(self.blocks, start=1):
            x = nn.relu(_conv(self.separable, features, (3, 3), f"block{i}", strides=stride)(x))
        return nn.Dense(self.num_classes, name="head")(x.mean(axis=(1, 2)))


class SequenceCNN(nn.Module):
    """A causal 1-D classifier: a standard stem, dilated causal blocks, pooling, dense.

    Every convolution uses ``padding="CAUSAL"``: output step ``t`` sees inputs up to
    ``t`` only, as a streaming audio model needs.

    Attributes:
      separable: use :class:`sepconv_jax.linen.SeparableConv` in the blocks, else
        ``flax.linen.Conv``.
      kernel: window length.
      stem: stem output channels.
      blocks: ``(features, dilation)`` of each block.
      num_classes: classifier outputs.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.demo import SequenceCNN
      >>> model = SequenceCNN(separable=True)
      >>> x = jnp.zeros((2, 64, 1))
      >>> variables = jax.jit(model.init)(jax.random.key(0), x)
      >>> jax.jit(model.apply)(variables, x).shape
      (2, 4)
    """

    separable: bool
    kernel: int = 9
    stem: int = 32
    blocks: Sequence[tuple[int, int]] = ((64, 1), (128, 2), (128, 4))
    num_classes: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(batch, length, 1)`` sequences to ``(batch, num_classes)`` logits."""
        x = nn.relu(nn.Conv(self.stem, (self.kernel,), padding="CAUSAL", name="stem")(x))
        for i, (features, dilation) in enumerate(self.blocks, start=1):
            conv = _conv(
                self.separable,
                features,
                (self.kernel,),
                f"block{i}",
                padding="CAUSAL",
                kernel_dilation=dilation,
            )
            x = nn.relu(conv(x))
        return nn.Dense(self.num_classes, name="head")(x.mean(axis=1))


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
    from sepconv_jax import cost
    from sepconv_jax.train import data_mesh, train_classifier

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
        self.progress = None
        self.task = None
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


# ----------------------------------------------------------------------------- output


def _fmt_count(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def comparison_table(comparison: Comparison):
    """The comparison as a :class:`rich.table.Table`: one row per network, then ratios."""
    from rich.table import Table

    s = comparison.settings
    table = Table(
        title=f"{comparison.task}: standard vs separable convolutions",
        caption=f"input {s['input']}, {s['n_train']:,} train / {s['n_test']:,} test examples\n"
        f"{s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}, batch {s['batch_size']}, "
        f"seed {s['seed']}, {s['devices']} {s['backend']} "
        f"device{'s' if s['devices'] != 1 else ''}",
    )
    for col in ("network", "params", "mult-adds", "train step", "test accuracy"):
        table.add_column(col, justify="left" if col == "network" else "right")
    for run in (comparison.standard, comparison.separable):
        table.add_row(
            run.name,
            f"{run.params:,}",
            _fmt_count(run.mult_adds),
            f"{run.step_ms:.1f} ms",
            f"{100 * run.test_accuracy:.1f}%",
        )
    r = comparison.ratios()
    table.add_row(
        "standard / separable",
        f"{r['params']:.2f}x",
        f"{r['mult_adds']:.2f}x",
        f"{r['step_time']:.2f}x",
        f"{r['accuracy_points']:+.1f} pt",
        style="bold",
    )
    return table


def plot_comparison(comparison: Comparison):
    """Test accuracy against mult-adds (left) and per epoch (right), as a Figure.

    Uses matplotlib's object API only (no pyplot state), so it works headless and
    in notebooks alike.

    Returns:
      A :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    colors = {"standard": "tab:blue", "separable": "tab:orange"}
    for run in (comparison.standard, comparison.separable):
        left.scatter(run.mult_adds, 100 * run.test_accuracy, s=80, color=colors[run.name])
        left.annotate(
            f"{run.name}\n{run.params:,} params",
            (run.mult_adds, 100 * run.test_accuracy),
            textcoords="offset points",
            xytext=(10, -4),
        )
        epochs = np.arange(1, len(run.epoch_accuracy) + 1)
        right.plot(
            epochs,
            100 * np.asarray(run.epoch_accuracy),
            "o-",
            color=colors[run.name],
            label=run.name,
        )
    left.set_xscale("log")
    lo = min(comparison.standard.mult_adds, comparison.separable.mult_adds)
    hi = max(comparison.standard.mult_adds, comparison.separable.mult_adds)
    left.set_xlim(lo / 2, hi * 3)
    accuracies = [100 * r.test_accuracy for r in (comparison.standard, comparison.separable)]
    left.set_ylim(min(accuracies) - 3, min(100.5, max(accuracies) + 1.5))
    left.set_xlabel("mult-adds per example (log scale)")
    left.set_ylabel("test accuracy (%)")
    left.set_title(f"{comparison.task}: accuracy vs compute")
    left.grid(True, alpha=0.3)
    right.set_xlabel("epoch")
    right.set_ylabel("test accuracy (%)")
    right.set_title("test accuracy per epoch")
    right.grid(True, alpha=0.3)
    right.legend()
    return fig


def write_outputs(comparison: Comparison, out: str | Path) -> dict[str, Path]:
    """Writes ``{task}_results.json`` and ``{task}_accuracy_vs_mult_adds.png`` into ``out``.

    The PNG needs matplotlib; without it only the JSON is written.

    Returns:
      The written paths by kind: ``{"json": ...}``, plus ``"png"`` when written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{comparison.task}_results.json"}
    paths["json"].write_text(json.dumps(comparison.to_dict(), indent=2) + "\n")
    try:
        figure = plot_comparison(comparison)
    except ImportError:
        return paths
    paths["png"] = out / f"{comparison.task}_accuracy_vs_mult_adds.png"
    figure.savefig(paths["png"], dpi=120)
    return paths


def _print_comparison(comparison: Comparison, paths: dict[str, Path], console) -> None:
    console.print(comparison_table(comparison))
    console.print("mult-adds are per example; train step is the median time of one step.")
    r = comparison.ratios()
    console.print(
        f"In the convolution blocks alone (the layers that differ): "
        f"{r['block_mult_adds']:.2f}x fewer mult-adds, {r['block_params']:.2f}x fewer parameters."
    )
    console.print(
        f"Compile: {comparison.standard.compile_s:.1f} s standard, "
        f"{comparison.separable.compile_s:.1f} s separable; "
        f"total {comparison.wall_s:.1f} s."
    )
    plot = paths.get("png", "not written (`pip install matplotlib` for the plot)")
    console.print(f"Plot: {plot}\nFigures: {paths['json']}", soft_wrap=True)


# ----------------------------------------------------------------------------- layers task

# (spatial size, in channels C, out channels N) of MobileNetV1 3x3 layers at 224x224.
LAYERS = ((112, 32, 64), (56, 128, 128), (28, 256, 256), (14, 512, 512), (7, 1024, 1024))
KERNEL = 3


def _time(fn, *args, repeats: int) -> float:
    """Median wall time of ``fn(*args)`` in seconds, after one compile-and-warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def layer_rows(batch: int = 1, repeats: int = 5, layers=None) -> list[dict]:
    """Standard vs separable cost and ``jax.jit`` time of 3x3 layers, one dict per layer.

    Args:
      batch: batch size of the timed calls.
      repeats: timed calls per layer (the median is kept).
      layers: ``(spatial size, in channels, out channels)`` of each layer; default
        :data:`LAYERS`.

    Returns:
      Per layer: ``layer``, ``standard_mult_adds``, ``separable_mult_adds``,
      ``standard_params``, ``separable_params``, ``savings_factor``,
      ``standard_ms``, ``separable_ms``.

    Example:
      >>> from sepconv_jax.demo import layer_rows
      >>> row = layer_rows(repeats=1, layers=((8, 16, 32),))[0]
      >>> row["layer"], row["standard_mult_adds"], row["separable_mult_adds"]
      ('8x8x16->32', 294912, 41984)
    """
    layers = LAYERS if layers is None else layers
    rows = []
    key = jax.random.key(0)
    standard = jax.jit(lambda x, k: ops.grouped_conv(x, k, groups=1))
    separable = jax.jit(lambda x, dk, pk: ops.separable_conv(x, dk, pk))
    for hw, c, n in layers:
        kx, kd, kp, ks = jax.random.split(jax.random.fold_in(key, hw * c), 4)
        x = jax.random.normal(kx, (batch, hw, hw, c))
        dk = jax.random.normal(kd, (KERNEL, KERNEL, 1, c))
        pk = jax.random.normal(kp, (c, n))
        sk = jax.random.normal(ks, (KERNEL, KERNEL, c, n))
        positions = hw * hw
        rows.append(
            {
                "layer": f"{hw}x{hw}x{c}->{n}",
                "standard_mult_adds": KERNEL**2 * c * n * positions,
                "separable_mult_adds": (KERNEL**2 * c + c * n) * positions,
                "standard_params": KERNEL**2 * c * n,
                "separable_params": KERNEL**2 * c + c * n,
                "savings_factor": KERNEL**2 * n / (KERNEL**2 + n),
                "standard_ms": 1e3 * _time(standard, x, sk, repeats=repeats),
                "separable_ms": 1e3 * _time(separable, x, dk, pk, repeats=repeats),
            }
        )
    return rows


def print_table(rows: list[dict], console=None) -> None:
    """Prints :func:`layer_rows` as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"3x3 standard vs depthwise separable conv on {jax.default_backend()}")
    for col in (
        "layer",
        "std MACs",
        "sep MACs",
        "MAC ratio",
        "k²N/(k²+N)",
        "std params",
        "sep params",
        "std ms",
        "sep ms",
        "time ratio",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["layer"],
            f"{r['standard_mult_adds'] / 1e6:.1f}M",
            f"{r['separable_mult_adds'] / 1e6:.1f}M",
            f"{r['standard_mult_adds'] / r['separable_mult_adds']:.2f}x",
            f"{r['savings_factor']:.2f}x",
            f"{r['standard_params']:,}",
            f"{r['separable_params']:,}",
            f"{r['standard_ms']:.2f}",
            f"{r['separable_ms']:.2f}",
            f"{r['standard_ms'] / r['separable_ms']:.2f}x",
        )
    if console is None:
        console = Console()
        console = Console(width=max(console.width, 150))
    console.print(table)


# ----------------------------------------------------------------------------- CLI


def _request_devices(devices: int | None) -> None:
    """Asks for ``devices`` host devices when JAX has not started yet (CPU simulation)."""
    if devices is None or devices <= 1:
        return
    try:
        if jax.config.jax_num_cpu_devices < devices:
            jax.config.update("jax_num_cpu_devices", devices)
    except RuntimeError:  # JAX already started: use the devices it has
        pass


def run(args: argparse.Namespace) -> int:
    """Runs the ``demo`` subcommand; returns the exit code."""
    from rich.console import Console

    _request_devices(args.devices)
    console = Console()
    if args.task == "layers":
        batch = 1 if args.batch_size is None else args.batch_size
        print_table(layer_rows(batch=batch, repeats=3 if args.quick else 10))
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
    paths = write_outputs(comparison, args.out)
    _print_comparison(comparison, paths, console)
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
        "accuracy with their ratios. --task layers times single layers instead.",
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="digits",
        help="digits (default: scikit-learn's handwritten digits), sequence (1-D causal, "
        "generated waveforms) or layers (no training: single-layer costs and times)",
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
