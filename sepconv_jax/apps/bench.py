"""Benchmark suite: our depthwise kernels against XLA, Flax, PyTorch and a standard conv.

Runs on whatever backend JAX finds. For every distinct depthwise / separable layer
shape of MobileNetV2 and EfficientNet-B0 (224x224 input), at the requested batch
sizes and dtypes, forward and forward+backward, it measures side by side in one run:

* ``depthwise_conv`` with each impl of :data:`sepconv_jax.kernels.dispatch.KERNELS`;
* ``flax.linen.Conv(feature_group_count=C)`` (by default up to batch 8 only: it
  lowers to the same ``lax`` op as ``impl="xla"``, and is as slow);
* PyTorch's ``conv2d(groups=C)`` on a channels-last tensor, when torch is installed
  (timed in a separate process, see :mod:`sepconv_jax.apps.bench_torch`);
* our ``separable_conv`` (``impl="auto"``) and the standard ``k x k`` convolution from
  ``C`` to ``N`` channels it replaces;

and reports ratios: each impl against ``xla``, ours (``auto``) against PyTorch, and
the realized separable-vs-standard speedup beside the analytic savings factor
``k^2 N / (k^2 + N)``. A whole-model line times a MobileNetV2 training step
(forward, backward, optax update) with ``impl="auto"`` against ``impl="xla"``.

Times are the best of ``n`` calls after compilation (``timeit``'s convention, the
least disturbed by other processes on a shared machine), after one untimed warm-up
call (on a GPU the first call of an executable carries one-time costs); a call slower
than ``min_time`` is timed once. PyTorch uses symmetric padding ``k // 2``, which gives
the same output size and cost as ``"SAME"``. Results go to stdout (a table), a JSON file,
a PNG plot (needs matplotlib) and a Markdown report.

:mod:`sepconv_jax.apps.bench_report` turns the records into the table, the summary,
the Markdown report and the plot.

The suite lives in topic modules: :mod:`~sepconv_jax.apps.bench_shapes` (the layer
shapes), :mod:`~sepconv_jax.apps.bench_layers` (the layer columns),
:mod:`~sepconv_jax.apps.bench_train` (the training-step line) and
:mod:`~sepconv_jax.apps.machine` (where the numbers came from); this module holds
the command line and re-exports their public names.

``--export`` measures something else: the batch-1 latency of MobileNetV2,
MobileNetV3-Large and EfficientNet-B0 deployed, ours (JAX, ONNX float32 and int8 in
onnxruntime, LiteRT float32 and int8) against the standard exports (timm through
``torch.onnx.export`` and onnxruntime's ``quantize_static``, Keras applications
through the TFLite converter), written to ``export.json``, ``export.md`` and
``export.png`` (:mod:`sepconv_jax.apps.bench_export`).
``--models`` measures whole models: inference and training images/s of MobileNetV2,
MobileNetV3-Large, EfficientNet-B0 and ConvNeXt-T, ours against the same timm model
in PyTorch (:mod:`sepconv_jax.apps.bench_models`), written to ``models.json``,
``models.md`` and ``models.png``.

Example:
  >>> from sepconv_jax.apps import bench
  >>> layers = bench.layer_shapes(("MobileNetV2",))
  >>> len(layers), layers[0].name
  (12, '112x112 C32 k3 s1 N16')
  >>> round(layers[0].analytic_savings, 2)  # 9 * 16 / (9 + 16)
  5.76
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sepconv_jax.apps import bench_export, bench_models, bench_report
from sepconv_jax.apps.bench_export import export_models as export_models
from sepconv_jax.apps.bench_layers import depthwise_impls as depthwise_impls
from sepconv_jax.apps.bench_layers import measure_layers as measure_layers
from sepconv_jax.apps.bench_shapes import MODEL_LAYERS as MODEL_LAYERS
from sepconv_jax.apps.bench_shapes import PASSES as PASSES
from sepconv_jax.apps.bench_shapes import QUICK_LAYERS as QUICK_LAYERS
from sepconv_jax.apps.bench_shapes import Layer as Layer
from sepconv_jax.apps.bench_shapes import layer_shapes as layer_shapes
from sepconv_jax.apps.bench_train import MODEL_ARCHITECTURES as MODEL_ARCHITECTURES
from sepconv_jax.apps.bench_train import measure_model as measure_model
from sepconv_jax.apps.machine import machine_info as machine_info
from sepconv_jax.kernels import dispatch

__all__ = [
    "MODEL_ARCHITECTURES",
    "MODEL_LAYERS",
    "PASSES",
    "QUICK_LAYERS",
    "Layer",
    "add_arguments",
    "depthwise_impls",
    "export_models",
    "layer_shapes",
    "machine_info",
    "main",
    "measure_layers",
    "measure_model",
    "register_cli",
    "run",
    "run_export",
    "run_layers",
    "run_models",
]

#: ``bench --export``'s entry point (:func:`sepconv_jax.apps.bench_export.run_export`).
run_export = bench_export.run_export


def _models_report(
    machine: dict[str, Any], config: dict[str, Any], table: str, scaling: str, records: list[dict]
) -> list[str]:
    """The lines of ``models.md``: the setting, the table and the scaling table."""
    load, load_end = machine.get("load_average"), machine.get("load_average_end")
    report = [
        "# Whole models: ours against timm in PyTorch",
        "",
        f"{machine['cpu']}, {machine['cores']} cores, load average "
        f"{f'{load[0]:.1f}' if load else 'n/a'} at the start and "
        f"{f'{load_end[0]:.1f}' if load_end else 'n/a'} at the end; jax {machine['jax']}, "
        f"torch {machine['torch']} ({machine['torch_threads']} threads). Inference at batch "
        f"{', '.join(map(str, config['inference_batches']))}, training at batch "
        f"{', '.join(map(str, config['training_batches']))}, "
        f"{config['image_size']}x{config['image_size']} float32 images; the best of up to "
        f"{config['max_reps']} calls after a warm-up. Both sides run the same network: ours "
        "is the timm model converted by sepconv_jax.interop.timm. `vs timm`: images/s "
        "over the faster of timm's two eager layouts at the same batch (> 1: ours is "
        "faster). Training: forward, backward and an SGD-with-momentum update, in "
        "training mode."
        + (
            " Both processes keep freed heap memory for reuse "
            "(sepconv_jax.runtime.retain_freed_memory)."
            if config.get("retain_memory")
            else ""
        )
        + (
            " `timm compiled`: under torch.compile, channels_last."
            if config["torch_compile"]
            else ""
        ),
        "",
        table,
        "",
    ]
    if scaling:
        report += [
            "Per-image throughput at each batch over that at batch "
            f"{bench_models.scaling_reference(records)} (1.00: the cost per image does not "
            "grow with the batch):",
            "",
            scaling,
            "",
        ]
    return report


def run_models(args: argparse.Namespace, out: Path) -> int:
    """``bench --models``: whole models, ours against timm's in PyTorch.

    Writes ``models.json`` (machine, configuration, records), ``models.md`` and, unless
    ``--no-plot``, ``models.png`` into ``out`` and prints the table. Returns 2, with
    a message, for a model name not in :data:`~sepconv_jax.apps.bench_models.ZOO`
    or without timm.
    """
    if args.retain_memory:
        from sepconv_jax import runtime

        try:
            runtime.retain_freed_memory()
        except RuntimeError as error:
            print(f"sepconv-jax bench: --retain-memory: {error}", file=sys.stderr)
            return 2
    names = args.models or (["MobileNetV2"] if args.quick else list(bench_models.ZOO))
    unknown = [name for name in names if name not in bench_models.ZOO]
    if unknown:
        print(
            f"sepconv-jax bench: --models takes {' '.join(bench_models.ZOO)}, got "
            f"{' '.join(unknown)}",
            file=sys.stderr,
        )
        return 2
    if importlib.util.find_spec("timm") is None:
        print(
            "sepconv-jax bench: --models builds every model from timm: "
            "pip install 'sepconv-jax[timm]'",
            file=sys.stderr,
        )
        return 2
    config: dict[str, Any] = {
        "quick": bool(args.quick),
        "models": names,
        "impls": args.model_impls or ["auto", "xla"],
        "inference_batches": [1, 2] if args.quick else args.inference_batches,
        "training_batches": [2] if args.quick else args.training_batches,
        "image_size": 32 if args.quick else args.model_image_size,
        "min_time": 0.0 if args.quick else args.min_time,
        "max_reps": 1 if args.quick else args.max_reps,
        "torch": not args.no_torch,
        "torch_compile": bool(args.torch_compile),
        "retain_memory": bool(args.retain_memory),
    }
    started = time.perf_counter()
    machine = machine_info()
    batches = sorted({*config["inference_batches"], *config["training_batches"]})
    print(
        f"sepconv-jax bench --models on {machine['cpu']} ({machine['cores']} cores), batches "
        f"{' '.join(map(str, batches))}, {config['image_size']}x{config['image_size']}, float32"
    )
    records, facts = bench_models.measure_batches(
        names,
        config["impls"],
        inference_batches=config["inference_batches"],
        training_batches=config["training_batches"],
        image_size=config["image_size"],
        min_time=config["min_time"],
        max_reps=config["max_reps"],
        torch_enabled=config["torch"],
        torch_compiled=bench_models.MODES if config["torch_compile"] else (),
        retain_memory=config["retain_memory"],
    )
    machine["torch_threads"] = facts.get("torch_threads", machine.get("torch_threads"))
    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = list(os.getloadavg())
    machine["suite_seconds"] = round(time.perf_counter() - started, 1)
    result = {"machine": machine, "config": config, "facts": facts, "records": records}
    table = bench_models.markdown(records)
    scaling = bench_models.scaling_table(records)
    print(table)
    if scaling:
        print(scaling)
    (out / "models.json").write_text(json.dumps(result, indent=2) + "\n")
    report = _models_report(machine, config, table, scaling, records)
    (out / "models.md").write_text("\n".join(report))
    written = [out / "models.json", out / "models.md"]
    if not args.no_plot:
        bench_models.plot(records, out / "models.png")
        written.append(out / "models.png")
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


# ----------------------------------------------------------------------------- entry points


def run(args: argparse.Namespace) -> int:
    """The ``bench`` subcommand: measure, print, and write JSON, PNG and Markdown.

    Returns:
      The process exit code: 0, or 2 when the plot was asked for without matplotlib.
    """
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "sepconv-jax bench: the PNG plot needs matplotlib (pip install "
                "'sepconv-jax[demo]'); install it or pass --no-plot",
                file=sys.stderr,
            )
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.export:
        return run_export(args, out)
    if args.models is not None:
        return run_models(args, out)
    return run_layers(args, out)


def _suite_options(args: argparse.Namespace) -> tuple[list[Layer], list, list, float, int, dict]:
    """Layers, batches, dtypes, min_time, max_reps and the training-step options."""
    if args.quick:
        layers = [Layer(*shape, models=("quick",)) for shape in QUICK_LAYERS]
        model_options = {"batch": 2, "image_size": 16, "width_multiplier": 1.0, "num_classes": 10}
        return layers, args.batch or [2], args.dtype or ["float32"], 0.0, 1, model_options
    model_options = {
        "batch": args.model_batch,
        "image_size": args.model_image_size,
        "width_multiplier": 1.0,
        "num_classes": 1000,
    }
    return (
        layer_shapes(args.layers_of or tuple(MODEL_LAYERS)),
        args.batch or [8, 32],
        args.dtype or ["float32", "bfloat16"],
        args.min_time,
        args.max_reps,
        model_options,
    )


def run_layers(args: argparse.Namespace, out: Path) -> int:
    """``bench``: the layer suite and the training steps; writes ``bench.json``,
    ``bench.md`` and, unless ``--no-plot``, ``bench.png`` into ``out``."""
    layers, batches, dtypes, min_time, max_reps, model_options = _suite_options(args)
    started = time.perf_counter()
    machine = machine_info()
    impls = tuple(args.impls or depthwise_impls())
    gpu = machine["backend"] in ("gpu", "cuda", "rocm")
    fused_column = args.fused if args.fused is not None else gpu
    print(f"sepconv-jax bench on {machine['backend']} ({machine['device']}, {machine['cpu']})")
    records: list[dict] = []
    if not args.model_only:
        print(bench_report.format_table([], impls))
        records = measure_layers(
            layers,
            batches,
            dtypes,
            min_time=min_time,
            max_reps=max_reps,
            torch_enabled=not args.no_torch,
            flax_max_batch=None if args.quick else args.flax_max_batch,
            impls=impls,
            fused_column=fused_column,
            compile_threads=args.compile_threads,
            budget=args.budget,
        )
    model: list[dict] = []
    if not args.no_model:
        architectures = args.model_architectures or (["blocks"] if args.quick else ["MobileNetV2"])
        model_impls = args.model_impls or ["auto", "xla"]
        for architecture in architectures:
            model += measure_model(
                model_impls,
                architecture=architecture,
                min_time=min_time,
                max_reps=max_reps,
                dtype=args.model_dtype,
                **model_options,
            )
    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = list(os.getloadavg())
    machine["suite_seconds"] = round(time.perf_counter() - started, 1)
    result = {
        "machine": machine,
        "config": {
            "quick": bool(args.quick),
            "batches": list(batches),
            "dtypes": list(dtypes),
            "min_time": min_time,
            "max_reps": max_reps,
            "flax_max_batch": None if args.quick else args.flax_max_batch,
            "impls": list(impls),
            "fused_column": fused_column,
            "model_dtype": args.model_dtype or "float32",
        },
        "records": records,
        "model": model,
        "summary": bench_report.summarize(records, model),
    }
    print("\nsummary:")
    print(json.dumps(result["summary"], indent=2))
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench.md").write_text(bench_report.markdown_report(result))
    written = [out / "bench.json", out / "bench.md"]
    if not args.no_plot:
        bench_report.plot(records, out / "bench.png", dtype=dtypes[0])
        written.append(out / "bench.png")
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench`` options to ``parser``."""
    _layer_arguments(parser)
    _model_arguments(parser)
    _export_arguments(parser)


def _layer_arguments(parser: argparse.ArgumentParser) -> None:
    """The layer suite's options."""
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one call each (CI)")
    parser.add_argument("--out", default="bench-results", help="directory for JSON/PNG/Markdown")
    parser.add_argument(
        "--layers-of", nargs="+", choices=tuple(MODEL_LAYERS), help="whose layer shapes to run"
    )
    parser.add_argument("--batch", nargs="+", type=int, help="batch sizes (default 8 32)")
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=("float32", "bfloat16"),
        help="dtypes (default float32 bfloat16)",
    )
    parser.add_argument("--min-time", type=float, default=0.15, help="seconds per measurement")
    parser.add_argument("--max-reps", type=int, default=7, help="calls per measurement at most")
    parser.add_argument(
        "--flax-max-batch",
        type=int,
        default=8,
        help="time flax.linen.Conv only up to this batch (default 8; it lowers like impl='xla')",
    )
    parser.add_argument(
        "--impls",
        nargs="+",
        choices=tuple(dispatch.KERNELS),
        help="depthwise impls to time (default: every kernel; pallas only off CPU)",
    )
    parser.add_argument(
        "--fused",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time separable_conv with the fused kernel too (default: on GPU only)",
    )
    parser.add_argument(
        "--compile-threads",
        type=int,
        default=min(16, os.cpu_count() or 1),
        help="threads compiling a layer's functions before they are timed",
    )
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds after which no new layer starts"
    )


def _positive_int(text: str) -> int:
    """An argparse type: a positive int."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the training steps and of ``--models``."""
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib)")
    parser.add_argument("--no-model", action="store_true", help="skip the training steps")
    parser.add_argument(
        "--model-only", action="store_true", help="only the training steps, no layers"
    )
    parser.add_argument(
        "--model-architectures",
        nargs="+",
        choices=MODEL_ARCHITECTURES,
        help="models whose training step is timed (default MobileNetV2)",
    )
    parser.add_argument(
        "--model-impls",
        nargs="+",
        choices=dispatch.IMPLS,
        help="impls of the training steps (default auto xla)",
    )
    parser.add_argument(
        "--model-dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="compute dtype of the training steps (default float32; parameters stay float32)",
    )
    parser.add_argument("--model-batch", type=int, default=8, help="batch of the model steps")
    parser.add_argument(
        "--model-image-size",
        type=int,
        default=224,
        help="image size of the model steps and of --models",
    )
    parser.add_argument(
        "--inference-batches",
        type=_positive_int,
        nargs="+",
        default=[1, 8, 32],
        help="batches of --models' inference (default 1 8 32)",
    )
    parser.add_argument(
        "--training-batches",
        type=_positive_int,
        nargs="+",
        default=[8, 32],
        help="batches of --models' training steps (default 8 32)",
    )
    parser.add_argument(
        "--torch-compile",
        action="store_true",
        help="--models: also time timm under torch.compile (channels_last)",
    )
    parser.add_argument(
        "--retain-memory",
        action="store_true",
        help="--models: both processes (ours and PyTorch's) keep freed heap memory for "
        "reuse (sepconv_jax.runtime.retain_freed_memory), so per-call buffers are not "
        "page-faulted in again on every call",
    )
    parser.add_argument(
        "--models",
        nargs="*",
        metavar="MODEL",
        help="instead: inference and training images/s of whole models (default: "
        f"{' '.join(bench_models.ZOO)}), ours (--model-impls) against the same timm model "
        "in PyTorch; writes models.json, models.md and models.png",
    )


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``--export``."""
    parser.add_argument(
        "--export",
        action="store_true",
        help="instead: batch-1 latency of MobileNetV2, MobileNetV3-Large and EfficientNet-B0 "
        "deployed, ours (JAX, ONNX and LiteRT, float32 and int8) against torch.onnx, "
        "onnxruntime's quantize_static and Keras' TFLite converter; writes export.json, "
        "export.md and export.png",
    )
    parser.add_argument(
        "--export-models",
        nargs="+",
        choices=bench_export.EXPORT_MODELS,
        help="models of --export (default: all three; MobileNetV2 with --quick)",
    )
    parser.add_argument(
        "--export-runs", type=int, default=50, help="timed calls per runtime with --export"
    )
    parser.add_argument(
        "--export-runtimes",
        nargs="+",
        choices=bench_export.RUNNERS,
        help="runners timed with --export (default: all)",
    )


def register_cli(subparsers: Any) -> None:
    """Adds the ``bench`` subcommand to a ``sepconv-jax`` subparsers object."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark our depthwise kernels against XLA, Flax and PyTorch",
        description=__doc__.split("\n\n")[0],
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the suite as a script: ``python -m sepconv_jax.apps.bench [options]``."""
    parser = argparse.ArgumentParser(prog="sepconv-jax bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
