"""``sepconv-jax bench --models``: whole models, ours against the same timm model in PyTorch.

For each model of :data:`ZOO` (MobileNetV2, MobileNetV3-Large, EfficientNet-B0,
ConvNeXt-T) the timm model is built (``pretrained=False``: nothing is downloaded)
and converted with :func:`sepconv_jax.interop.timm.convert`, so both sides run the
same network with the same weights. Then, on the same CPU, one run measures:

* ours, once per impl (``"auto"`` and ``"xla"`` by default): inference
  (``apply(..., train=False)``, jitted) and a training step (forward, backward and
  an optax SGD-with-momentum update, batch norm, dropout and stochastic depth in
  training mode; :func:`sepconv_jax.apps.train.train_step`);
* timm in PyTorch, eager, in a separate ``spawn`` process that never imports JAX
  (see :mod:`sepconv_jax.apps.bench_torch` for why): inference under
  ``torch.inference_mode()`` in ``eval()`` mode, and a training step
  (``torch.optim.SGD`` with momentum, the same loss), each with the input in
  PyTorch's default NCHW layout and in ``channels_last``; on request
  (``torch_compiled``) also under ``torch.compile`` in ``channels_last``. The child
  sets ``OMP_WAIT_POLICY=PASSIVE`` unless the caller set it: on shared cores
  OpenMP's spinning barrier slows PyTorch down many times over.

Times are :func:`~sepconv_jax.apps.timing.best_time`'s (best call after a warm-up);
JAX's compile time is recorded apart. Results: ``models.json``, ``models.md`` and,
with matplotlib, ``models.png``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sepconv_jax.apps.timing import best_time, failure_fields, time_step, timing_fields
from sepconv_jax.apps.train import train_step
from sepconv_jax.models import spec

__all__ = [
    "ZOO",
    "markdown",
    "measure_batches",
    "measure_zoo",
    "model_jobs",
    "plot",
    "scaling_reference",
    "scaling_table",
]

#: Our model name -> the timm model of the same architecture.
ZOO = {
    spec.ARCHS[name].class_name: str(spec.ARCHS[name].timm)
    for name in ("mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny")
}

#: PyTorch's two input layouts, as the records name them.
TORCH_LAYOUTS = ("NCHW", "channels_last")

MODES = ("inference", "training")

_LEARNING_RATE, _MOMENTUM = 0.01, 0.9


def _count(tree: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _timm_model(timm_name: str, num_classes: int) -> Any:
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model(timm_name, pretrained=False, num_classes=num_classes)


def model_jobs(
    module: Any,
    variables: Any,
    *,
    batch: int,
    image_size: int,
    num_classes: int = 1000,
    impl: str = "auto",
) -> dict[str, tuple[Callable, list]]:
    """Mode -> ``(function, arguments)`` of a converted model with ``impl``: inference
    (``apply(..., train=False)``) and a training step (SGD with momentum), on random
    ``(batch, image_size, image_size, 3)`` images with random labels."""
    import optax

    k1, k2 = jax.random.split(jax.random.key(0))
    images = jax.random.normal(k1, (batch, image_size, image_size, 3))
    labels = jax.random.randint(k2, (batch,), 0, num_classes)
    optimizer = optax.sgd(_LEARNING_RATE, momentum=_MOMENTUM)
    state = {key: value for key, value in variables.items() if key != "params"}
    model = module.clone(impl=impl)
    step = train_step(model, optimizer, train=True, rngs={"dropout": jax.random.key(1)})
    return {
        "inference": (lambda v, x: model.apply(v, x, train=False), [variables, images]),
        "training": (
            step,
            [variables["params"], state, optimizer.init(variables["params"]), images, labels],
        ),
    }


def _ours(
    name: str,
    impls: Sequence[str],
    *,
    modes: Sequence[str] = MODES,
    batch: int,
    image_size: int,
    num_classes: int,
    min_time: float,
    max_reps: int,
    log: Callable[[str], None],
) -> tuple[list[dict], int]:
    """Our records for one model (one per impl and mode) and the timm model's parameter count."""
    from sepconv_jax.interop.timm import convert

    timm_model = _timm_model(ZOO[name], num_classes)
    timm_params = sum(p.numel() for p in timm_model.parameters())
    module, variables = convert(timm_model)
    del timm_model
    params = _count(variables["params"])
    records = []
    for impl in impls:
        jobs = model_jobs(
            module,
            variables,
            batch=batch,
            image_size=image_size,
            num_classes=num_classes,
            impl=impl,
        )
        for mode, (fn, args) in jobs.items():
            if mode not in modes:
                continue
            record: dict[str, Any] = {
                "model": name,
                "runner": f"ours impl={impl}",
                "framework": "jax",
                "impl": impl,
                "mode": mode,
                "params": params,
            }
            records.append(record)

            def built(job: tuple[Callable, list] = (fn, args)) -> tuple[Callable, list]:
                return job

            time_step(
                record, batch, built, max_reps=max_reps, min_time=min_time,
                label=f"{name} {record['runner']} {mode}", log=log,
            )  # fmt: skip
    return records, timm_params


def torch_calls(model: Any, x: Any, labels: Any, optimizer: Any) -> dict[str, Callable[[], Any]]:
    """A PyTorch model's inference call (eval mode, no autograd) and training step
    (train mode: forward, cross-entropy, backward, ``optimizer`` step), by mode."""
    import torch

    def infer() -> Any:
        model.eval()
        with torch.inference_mode():
            return model(x)

    def train() -> Any:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
        return loss

    return {"inference": infer, "training": train}


def _torch_worker(
    names: list[str],
    batch: int,
    image_size: int,
    num_classes: int,
    min_time: float,
    max_reps: int,
    modes: Sequence[str] = MODES,
    compiled: Sequence[str] = (),
    retain_memory: bool = False,
) -> tuple[list[dict], int]:
    """Times every timm model of ``names`` in PyTorch (in a child process): eager in
    both layouts, and ``torch.compile``'d in ``channels_last`` for the modes of
    ``compiled``; with ``retain_memory``, after
    :func:`sepconv_jax.runtime.retain_freed_memory`."""
    import os

    if retain_memory:
        from sepconv_jax import runtime

        runtime.retain_freed_memory()  # before torch allocates anything

    # OpenMP's spinning barrier makes PyTorch tens of times slower when the cores are
    # shared (measured: 2.9 s against 0.07 s a MobileNetV2 call at 64x64, batch 2, on
    # a loaded 2-core machine); waiting passively keeps it at its unloaded speed. Set
    # before torch starts OpenMP; a value set by the caller wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    records = []
    for name in names:
        timm_model = _timm_model(ZOO[name], num_classes)
        params = sum(p.numel() for p in timm_model.parameters())
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(batch, 3, image_size, image_size, generator=generator)
        labels = torch.randint(0, num_classes, (batch,), generator=generator)
        for layout in TORCH_LAYOUTS:
            memory_format = (
                torch.channels_last if layout == "channels_last" else torch.contiguous_format
            )
            model = timm_model.to(memory_format=memory_format)
            x = images.contiguous(memory_format=memory_format)
            optimizer = torch.optim.SGD(model.parameters(), lr=_LEARNING_RATE, momentum=_MOMENTUM)

            calls = torch_calls(model, x, labels, optimizer)
            for mode in modes:
                seconds, reps = best_time(calls[mode], max_reps=max_reps, min_time=min_time)
                records.append(
                    {
                        "model": name,
                        "runner": f"timm {layout}",
                        "framework": "torch",
                        "layout": layout,
                        "mode": mode,
                        "params": params,
                        "seconds": seconds,
                        "reps": reps,
                        "images_per_second": batch / seconds,
                    }
                )
        for mode in [m for m in modes if m in compiled]:
            records.append(
                _torch_compiled(timm_model, name, mode, images, labels, min_time, max_reps)
            )
    return records, torch.get_num_threads()


def _torch_compiled(timm_model, name, mode, images, labels, min_time, max_reps) -> dict:
    """One record of the ``torch.compile``'d model (default inductor backend, which
    builds C++ with the system compiler), in ``channels_last``; compile failures are
    recorded with their error."""
    import time

    import torch

    model = timm_model.to(memory_format=torch.channels_last)
    x = images.contiguous(memory_format=torch.channels_last)
    record: dict[str, Any] = {
        "model": name,
        "runner": "timm compiled",
        "framework": "torch",
        "layout": "channels_last",
        "mode": mode,
        "params": sum(p.numel() for p in model.parameters()),
    }
    try:
        compiled = torch.compile(model)
        if mode == "inference":
            model.eval()

            def call():
                with torch.inference_mode():
                    return compiled(x)

        else:
            model.train()
            optimizer = torch.optim.SGD(model.parameters(), lr=_LEARNING_RATE, momentum=_MOMENTUM)

            def call():
                optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(compiled(x), labels)
                loss.backward()
                optimizer.step()
                return loss

        start = time.perf_counter()
        call()
        compile_seconds = time.perf_counter() - start
        seconds, reps = best_time(call, max_reps=max_reps, min_time=min_time)
    except Exception as error:  # recorded (no compiler, an unsupported op...), and on
        record.update(failure_fields(error))
        return record
    record.update(timing_fields(images.shape[0], seconds, reps, compile_seconds))
    return record


def measure_zoo(
    names: Sequence[str] = tuple(ZOO),
    impls: Sequence[str] = ("auto", "xla"),
    *,
    batch: int,
    image_size: int,
    min_time: float,
    max_reps: int,
    num_classes: int = 1000,
    torch_enabled: bool = True,
    modes: Sequence[str] = MODES,
    torch_compiled: Sequence[str] = (),
    retain_memory: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[list[dict], dict[str, Any]]:
    """Images per second of inference and of a training step, ours against timm's.

    Args:
      names: models of :data:`ZOO`.
      impls: depthwise impls of our side (see :mod:`sepconv_jax.kernels.dispatch`).
      batch, image_size: the input, ``(batch, image_size, image_size, 3)``.
      min_time, max_reps: as for :func:`~sepconv_jax.apps.timing.best_time`.
      num_classes: classifier width of every model.
      torch_enabled: also time timm in PyTorch (in a child process).
      modes: which of :data:`MODES` to time.
      torch_compiled: the modes in which to time timm under ``torch.compile`` too
        (runner ``"timm compiled"``, channels_last; its compile time is recorded
        apart, and a failure is recorded with its error).
      retain_memory: the PyTorch process calls
        :func:`sepconv_jax.runtime.retain_freed_memory` before importing torch. This
        process is the caller's to set (``bench --retain-memory`` sets both).
      log: where progress lines go.

    Returns:
      ``(records, facts)``: one record per model, runner (``"ours impl=..."`` or
      ``"timm NCHW"`` / ``"timm channels_last"``) and mode, with ``seconds``,
      ``images_per_second`` and ``params``; and facts of the run (PyTorch's
      thread count, each model's timm parameter count).

    Raises:
      ValueError: for a name not in :data:`ZOO`.
      ImportError: when timm (which builds both sides) is not installed.
    """
    unknown = [name for name in names if name not in ZOO]
    if unknown:
        raise ValueError(f"`names` must be models of {tuple(ZOO)}, got {unknown}")
    if not names:
        raise ValueError("`names` must name at least one model")
    try:
        import timm  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "bench --models builds every model from timm: pip install 'sepconv-jax[timm]'"
        ) from error
    records: list[dict] = []
    facts: dict[str, Any] = {"timm_params": {}}
    for name in names:
        ours, timm_params = _ours(
            name,
            impls,
            modes=modes,
            batch=batch,
            image_size=image_size,
            num_classes=num_classes,
            min_time=min_time,
            max_reps=max_reps,
            log=log,
        )
        records += ours
        facts["timm_params"][name] = timm_params
    if torch_enabled:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(1) as pool:
            theirs, threads = pool.apply(
                _torch_worker,
                (
                    list(names),
                    batch,
                    image_size,
                    num_classes,
                    min_time,
                    max_reps,
                    tuple(modes),
                    tuple(torch_compiled),
                    retain_memory,
                ),
            )
        facts["torch_threads"] = threads
        for record in theirs:
            if record["seconds"] is None:
                log(f"{record['model']} {record['runner']} {record['mode']}: {record['error']}")
                continue
            log(
                f"{record['model']} {record['runner']} {record['mode']}: "
                f"{1e3 * record['seconds']:.1f} ms, {record['images_per_second']:.1f} images/s"
            )
        records += theirs
    return records, facts


def measure_batches(
    names: Sequence[str] = tuple(ZOO),
    impls: Sequence[str] = ("auto", "xla"),
    *,
    inference_batches: Sequence[int] = (1, 8, 32),
    training_batches: Sequence[int] = (8, 32),
    log: Callable[[str], None] = print,
    **options: Any,
) -> tuple[list[dict], dict[str, Any]]:
    """:func:`measure_zoo` at several batches in one run, smallest batch first.

    Each batch times the modes it is listed for (inference at ``inference_batches``,
    training at ``training_batches``); each record gets its ``batch``. ``options``
    are :func:`measure_zoo`'s other keywords (``image_size``, ``min_time``, ...).

    Returns:
      ``(records, facts)`` as :func:`measure_zoo`'s, the facts of the last batch.

    Raises:
      ValueError: for a batch that is not a positive int, or no batch at all.
    """
    for arg, batches in (
        ("inference_batches", inference_batches),
        ("training_batches", training_batches),
    ):
        bad = [b for b in batches if isinstance(b, bool) or not isinstance(b, int) or b < 1]
        if bad:
            raise ValueError(f"`{arg}` must hold positive ints, got {bad}")
    if not inference_batches and not training_batches:
        raise ValueError("`inference_batches` and `training_batches` are both empty")
    records: list[dict] = []
    facts: dict[str, Any] = {}
    for batch in sorted({*inference_batches, *training_batches}):
        modes = [
            m
            for m, of in zip(MODES, (inference_batches, training_batches), strict=True)
            if batch in of
        ]
        log(f"batch {batch}: {', '.join(modes)}")
        found, facts = measure_zoo(names, impls, batch=batch, modes=modes, log=log, **options)
        records += [{**record, "batch": batch} for record in found]
    return records, facts


def _fastest_timm(
    records: Sequence[dict], model: str, mode: str, batch: int | None = None
) -> dict | None:
    timed = [
        r
        for r in records
        if r["model"] == model
        and r["mode"] == mode
        and r.get("batch") == batch
        and r["framework"] == "torch"
        and r["runner"] != "timm compiled"
        and r.get("seconds") is not None
    ]
    return min(timed, key=lambda r: r["seconds"], default=None)


def markdown(records: Sequence[dict]) -> str:
    """One row per model, batch and runner: parameters, images/s of each mode, and each
    against the faster of timm's two eager layouts at that batch (> 1: faster than
    PyTorch eager). A mode not timed at that batch shows ``-``."""
    lines = [
        "| model | batch | runner | params | inference images/s | vs timm | training images/s "
        "| vs timm | compile s (inf / train) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, batch, runner in dict.fromkeys(
        (r["model"], r.get("batch"), r["runner"]) for r in records
    ):
        row = {
            r["mode"]: r
            for r in records
            if (r["model"], r.get("batch"), r["runner"]) == (model, batch, runner)
        }
        cells = [model, "" if batch is None else str(batch), runner]
        cells.append(f"{next(iter(row.values()))['params'] / 1e6:.2f}M")
        compiles = []
        for mode in MODES:
            record = row.get(mode)
            if record is None:
                cells += ["-", ""]
                continue
            rate = record.get("images_per_second")
            best = _fastest_timm(records, model, mode, batch)
            cells.append("failed" if rate is None else f"{rate:.1f}")
            cells.append(
                "" if rate is None or best is None else f"{rate / best['images_per_second']:.2f}"
            )
            if record.get("compile_seconds") is not None:
                compiles.append(f"{record['compile_seconds']:.1f}")
        cells.append(" / ".join(compiles))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scaling_reference(records: Sequence[dict]) -> int | None:
    """The batch :func:`scaling_table` divides by: 8 where it was timed, else the
    smallest batch (``None`` without batches)."""
    batches = sorted({r["batch"] for r in records if r.get("batch") is not None})
    return 8 if 8 in batches else next(iter(batches), None)


def scaling_table(records: Sequence[dict], reference: int | None = None) -> str:
    """Per-image throughput at each batch over that at ``reference`` (default
    :func:`scaling_reference`), per model, runner and mode (1.00: the cost per image
    does not grow with the batch); empty when only one batch was timed."""
    batches = sorted({r["batch"] for r in records if r.get("batch") is not None})
    reference = scaling_reference(records) if reference is None else reference
    others = [b for b in batches if b != reference]
    if reference not in batches or not others:
        return ""
    rate = {
        (r["model"], r["runner"], r["mode"], r["batch"]): r.get("images_per_second")
        for r in records
        if r.get("batch") is not None
    }
    lines = [
        "| model | runner | mode | " + " | ".join(f"b{b} / b{reference}" for b in others) + " |",
        "|---|---|---|" + "---:|" * len(others),
    ]
    for model, runner, mode in dict.fromkeys(key[:3] for key in rate):
        base = rate.get((model, runner, mode, reference))
        if not base:
            continue
        cells = [model, runner, mode]
        for b in others:
            value = rate.get((model, runner, mode, b))
            cells.append("-" if not value else f"{value / base:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(records: Sequence[dict], path: Path) -> None:
    """Images per second by model and batch, one panel per mode, one bar per runner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["model"], r.get("batch")) for r in records))
    runners = list(dict.fromkeys(r["runner"] for r in records))
    fig, axes = plt.subplots(1, len(MODES), figsize=(7 * len(MODES), 5))
    width = 0.8 / max(1, len(runners))
    for ax, mode in zip(axes, MODES, strict=True):
        for i, runner in enumerate(runners):
            rates = [
                next(
                    (
                        r["images_per_second"] or 0.0
                        for r in records
                        if (r["model"], r.get("batch")) == group
                        and r["runner"] == runner
                        and r["mode"] == mode
                    ),
                    0.0,
                )
                for group in groups
            ]
            ax.bar(np.arange(len(groups)) + i * width, rates, width, label=runner)
        ax.set_xticks(np.arange(len(groups)) + width * (len(runners) - 1) / 2)
        labels = [m if b is None else f"{m} b{b}" for m, b in groups]
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("images / s")
        ax.set_title(mode)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
