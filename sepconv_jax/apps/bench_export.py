"""``sepconv-jax bench --export``: deployed models at batch 1, ours against the standard exports.

For MobileNetV2, MobileNetV3-Large and EfficientNet-B0 (:data:`EXPORT_MODELS`)
the timm model is built (``pretrained=False``) and converted with
:func:`sepconv_jax.interop.timm.convert`, so ours is the same network with the
same weights. In one sitting, on this CPU, one image at a time:

* ours: the jitted JAX call, our ONNX export in onnxruntime (float32, and the QDQ
  int8 model of :func:`sepconv_jax.export.quantize`), our ``.tflite`` in the LiteRT
  interpreter (float32, and full-integer int8), see :mod:`sepconv_jax.export.latency`;
* the standard ONNX export: the timm model through ``torch.onnx.export``, float32,
  and the same graph after onnxruntime's ``quant_pre_process`` and ``quantize_static`` (QDQ, per-channel,
  uint8 activations and int8 weights), both calibrated on the same generated images;
* Keras' converter: ``keras.applications`` of the same name (``weights=None``)
  through ``tf.lite.TFLiteConverter``, float32 and full-integer int8, in the same
  LiteRT interpreter (:mod:`sepconv_jax.apps.bench_keras`).

onnxruntime runs with :data:`~sepconv_jax.export.latency.THREADS` intra-op
threads, the LiteRT interpreter (XNNPACK) with as many. The runtimes take turns
(:func:`~sepconv_jax.export.latency.time_side_by_side`). Output: a table of median
milliseconds with the ratios ours / standard, the op-type counts of every graph,
``export.json``, ``export.md`` and ``export.png``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sepconv_jax.apps import bench_keras, bench_models
from sepconv_jax.apps.machine import machine_info

__all__ = ["EXPORT_MODELS", "RUNNERS", "export_models", "markdown", "plot", "run_export"]

#: The models of ``bench --export`` (keys of :data:`sepconv_jax.apps.bench_models.ZOO`).
EXPORT_MODELS = ("MobileNetV2", "MobileNetV3Large", "EfficientNetB0")

#: Every runner, in table order: ours, then the standard exports.
RUNNERS = (
    "jax",
    "onnxruntime",
    "onnxruntime-int8",
    "torch.onnx",
    "torch.onnx-int8",
    "litert",
    "litert-int8",
    "keras-litert",
    "keras-litert-int8",
)

#: ``(ours, theirs)`` of each ratio column.
RATIOS = (
    ("onnxruntime", "torch.onnx"),
    ("onnxruntime-int8", "torch.onnx-int8"),
    ("litert", "keras-litert"),
    ("litert-int8", "keras-litert-int8"),
)

_CALIBRATION_IMAGES = 8


def export_models(
    quick: bool = False, names: tuple[str, ...] | None = None
) -> list[tuple[str, Any, Any, Any]]:
    """Our models of ``bench --export``: ``(name, module, variables, x)`` at batch 1.

    Each is the timm model of :data:`sepconv_jax.apps.bench_models.ZOO` converted by
    :func:`sepconv_jax.interop.timm.convert` (random weights: latency does not
    depend on them), with 1000 classes and a standard normal ``(1, 224, 224, 3)``
    image; ``quick``: MobileNetV2 only (unless ``names``) at 32x32.
    """
    from sepconv_jax.interop.timm import convert

    names = names or (("MobileNetV2",) if quick else EXPORT_MODELS)
    size = 32 if quick else 224
    found = []
    for i, name in enumerate(names):
        module, variables = convert(bench_models._timm_model(bench_models.ZOO[name], 1000))
        x = np.asarray(jax.random.normal(jax.random.key(i), (1, size, size, 3)), np.float32)
        found.append((name, module, variables, x))
    return found


def _calibration(size: int, n: int = _CALIBRATION_IMAGES) -> np.ndarray:
    """``n`` generated ``(size, size, 3)`` images (standard normal, fixed seed)."""
    return np.random.default_rng(7).standard_normal((n, size, size, 3)).astype(np.float32)


def _torch_runners(
    name: str, x: np.ndarray, images: np.ndarray, folder: str, runners: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """The standard ONNX export of the timm model, and onnxruntime's own int8 of it."""
    from sepconv_jax.export.latency import ort_runner

    found: dict[str, dict[str, Any]] = {}
    wanted = [r for r in ("torch.onnx", "torch.onnx-int8") if r in runners]
    if not wanted:
        return found
    try:
        import torch

        q = importlib.import_module("onnxruntime.quantization")

        model = bench_models._timm_model(bench_models.ZOO[name], 1000).eval()
        path = os.path.join(folder, f"torch_{name}.onnx")
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),),
                path,
                input_names=["x"],
                output_names=["y"],
                opset_version=17,
                dynamo=False,
            )
        if "torch.onnx" in wanted:
            found["torch.onnx"] = ort_runner(path, x, layout="NCHW")
        if "torch.onnx-int8" in wanted:
            int8_path = os.path.join(folder, f"torch_{name}_int8.onnx")
            feeds = iter([{"x": image[None].transpose(0, 3, 1, 2).copy()} for image in images])

            class Reader(q.CalibrationDataReader):  # type: ignore[name-defined]
                def get_next(self) -> dict[str, np.ndarray] | None:
                    return next(feeds, None)

            # onnxruntime's documented first step: shape inference and graph
            # optimization (without it most Convs of these graphs stay in float).
            shape_inference = importlib.import_module("onnxruntime.quantization.shape_inference")
            prepared = os.path.join(folder, f"torch_{name}_prepared.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                shape_inference.quant_pre_process(path, prepared)
                q.quantize_static(
                    prepared,
                    int8_path,
                    Reader(),
                    quant_format=q.QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=q.QuantType.QUInt8,
                    weight_type=q.QuantType.QInt8,
                )
            found["torch.onnx-int8"] = ort_runner(int8_path, x, layout="NCHW")
    except Exception as error:  # recorded, and the benchmark goes on
        for runner in wanted:
            found.setdefault(runner, {"note": f"{type(error).__name__}: {error}"[:300]})
    return found


def _keras_runners(
    keras_paths: dict[str, Any], x: np.ndarray, runners: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """Keras' converted models in the LiteRT interpreter (other weights: not compared)."""
    from sepconv_jax.export.latency import litert_runner

    found: dict[str, dict[str, Any]] = {}
    for runner in ("keras-litert", "keras-litert-int8"):
        if runner not in runners:
            continue
        path = keras_paths.get(runner, {"note": "not converted"})
        if isinstance(path, dict):
            found[runner] = path
            continue
        try:
            found[runner] = {**litert_runner(path, x), "compare": False}
        except Exception as error:
            found[runner] = {"note": f"{type(error).__name__}: {error}"[:300]}
    return found


def measure(
    quick: bool, names: tuple[str, ...] | None, runners: tuple[str, ...], runs: int, folder: str
) -> list[dict[str, Any]]:
    """One row per model and runner (see :func:`sepconv_jax.export.latency.rows_of`)."""
    from sepconv_jax.export import latency

    models = export_models(quick, names)
    size = models[0][3].shape[1]
    images = _calibration(size, 2 if quick else _CALIBRATION_IMAGES)
    model_names = [name for name, *_ in models]
    child = None
    if any(r.startswith("keras") for r in runners):
        print("converting the Keras applications in a child process...")
        np.save(os.path.join(folder, "calibration.npy"), images)
        child = bench_keras.start_keras(
            model_names, size, folder, os.path.join(folder, "calibration.npy")
        )
    exported = []
    for name, module, variables, x in models:
        print(f"{name}: exporting...")
        started = time.perf_counter()
        sub = os.path.join(folder, name)
        os.makedirs(sub, exist_ok=True)
        ours = tuple(r for r in runners if r in latency.RUNTIMES)
        found = latency.our_runners(
            module, variables, x, sub, runtimes=ours, calibration_batches=[images]
        )
        found.update(_torch_runners(name, x, images, sub, runners))
        print(f"{name}: exported in {time.perf_counter() - started:.0f} s")
        exported.append((name, module, variables, x, found))
    keras_paths = {} if child is None else bench_keras.collect_keras(child, model_names, folder)
    rows: list[dict[str, Any]] = []
    for name, module, variables, x, found in exported:
        found.update(_keras_runners(keras_paths.get(name, {}), x, runners))
        ordered = {r: found[r] for r in runners if r in found}
        print(f"{name}: timing {len(ordered)} runners side by side...")
        want = np.asarray(module.apply(variables, x, train=False))
        rows.extend({"model": name, **row} for row in latency.rows_of(ordered, want, runs=runs))
    return rows


def _ms(row: dict[str, Any] | None) -> float | None:
    return None if row is None else row.get("median_ms")


def wide_table(rows: list[dict[str, Any]], runners: tuple[str, ...] = RUNNERS) -> str:
    """One line per model: the median ms of each runner, then ours / standard."""
    present = [r for r in runners if any(row["runtime"] == r for row in rows)]
    ratios = [(a, b) for a, b in RATIOS if a in present and b in present]
    header = ["model", *present, *(f"{a} / {b}" for a, b in ratios)]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for model in dict.fromkeys(row["model"] for row in rows):
        by = {row["runtime"]: row for row in rows if row["model"] == model}
        cells = [model]
        cells += [f"{v:.2f}" if (v := _ms(by.get(r))) is not None else "-" for r in present]
        for a, b in ratios:
            ours, theirs = _ms(by.get(a)), _ms(by.get(b))
            cells.append(f"{ours / theirs:.2f}x" if ours and theirs else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ops_table(rows: list[dict[str, Any]]) -> str:
    """The op types (with counts) of every graph: as exported, and as onnxruntime runs it."""
    lines = ["| model | graph | op types (count) |", "| --- | --- | --- |"]
    for row in rows:
        for key, label in (("ops", ""), ("optimized_ops", " (onnxruntime optimized)")):
            if row.get(key):
                ops = ", ".join(f"{op} {n}" for op, n in sorted(row[key].items()))
                lines.append(f"| {row['model']} | {row['runtime']}{label} | {ops} |")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    """``export.md``: the configuration, the wide table, the details and the op types."""
    from sepconv_jax.export import latency

    machine, config, rows = result["machine"], result["config"], result["rows"]
    load, load_end = machine.get("load_average"), machine.get("load_average_end")
    return "\n".join(
        [
            "# Deployed models at batch 1: ours against the standard exports",
            "",
            f"{machine['cpu']}, {machine['cores']} cores, load average "
            f"{f'{load[0]:.1f}' if load else 'n/a'} at the start and "
            f"{f'{load_end[0]:.1f}' if load_end else 'n/a'} at the end; "
            f"{config['image_size']}x{config['image_size']} float32 images, batch 1; median "
            f"of {config['runs']} calls per runner, the runners taking turns; onnxruntime "
            f"{machine.get('onnxruntime')} and the LiteRT interpreter (XNNPACK) with "
            f"{config['threads']} threads each. Ours is the timm model converted by "
            "sepconv_jax.interop.timm; torch.onnx is the same timm model through "
            "torch.onnx.export, its int8 onnxruntime's quant_pre_process then quantize_static (QDQ, per-channel, "
            "U8S8); keras-litert is keras.applications (weights=None) through "
            "TFLiteConverter. Int8 models: calibrated on the same generated images. "
            "Error: max |out - ours| / max |ours| against our float JAX output (Keras: "
            "other weights, not compared).",
            "",
            "## Median ms, and ours over the standard export",
            "",
            wide_table(rows),
            "",
            "## Every runner",
            "",
            latency.markdown(rows),
            "",
            "## Op types of each graph",
            "",
            ops_table(rows),
            "",
        ]
    )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: median ms of every runner, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(row["model"] for row in rows))
    runners = [r for r in RUNNERS if any(row["runtime"] == r for row in rows)]
    width = 0.8 / max(1, len(runners))
    fig, ax = plt.subplots(figsize=(max(6.0, 2.5 * len(models)), 4.0))
    for i, runner in enumerate(runners):
        values = []
        for model in models:
            row = next((r for r in rows if r["model"] == model and r["runtime"] == runner), None)
            values.append(_ms(row) or 0.0)
        ax.bar(
            np.arange(len(models)) + (i - (len(runners) - 1) / 2) * width,
            values,
            width,
            label=runner,
        )
    ax.set_xticks(np.arange(len(models)), models)
    ax.set_ylabel("median ms, batch 1")
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("Deployed models: ours against the standard exports")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_export(args: argparse.Namespace, out: Path) -> int:
    """``bench --export``: measures, prints, writes ``export.json``, ``export.md`` and,
    unless ``--no-plot``, ``export.png`` into ``out``."""
    from sepconv_jax.export import latency

    runs = 3 if args.quick else args.export_runs
    runners = tuple(args.export_runtimes or RUNNERS)
    names = tuple(args.export_models) if args.export_models else None
    started = time.perf_counter()
    machine = machine_info()
    try:
        machine["onnxruntime"] = importlib.import_module("onnxruntime").__version__
    except ImportError:
        machine["onnxruntime"] = None
    print(f"sepconv-jax bench --export on {machine['cpu']} ({machine['cores']} cores)")
    with tempfile.TemporaryDirectory(prefix="sepconv_export_") as folder:
        rows = measure(bool(args.quick), names, runners, runs, folder)
    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = list(os.getloadavg())
    machine["suite_seconds"] = round(time.perf_counter() - started, 1)
    config = {
        "quick": bool(args.quick),
        "batch": 1,
        "image_size": 32 if args.quick else 224,
        "runs": runs,
        "threads": latency.THREADS,
        "runtimes": list(runners),
    }
    result = {"machine": machine, "config": config, "rows": rows}
    print(wide_table(rows))
    print()
    print(latency.markdown(rows))
    print()
    print(ops_table(rows))
    (out / "export.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "export.md").write_text(markdown(result))
    written = [out / "export.json", out / "export.md"]
    if not args.no_plot:
        plot(rows, out / "export.png")
        written.append(out / "export.png")
    print("wrote " + ", ".join(str(path) for path in written))
    return 0
