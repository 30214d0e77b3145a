"""Batch-1 latency of an exported model in the runtimes phones use, beside our JAX forward.

:func:`latency_table` exports one model to ONNX (float32 and QDQ int8) and LiteRT,
and times one call at a time in each runtime on this CPU against the jitted JAX
forward: median and 90th percentile of ``runs`` calls after ``warmup`` calls.
Timings are measurements, never test assertions; ``sepconv-jax bench --export``
prints them (the benchmark calls :func:`export_latency`).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from sepconv_jax.export import _model

__all__ = ["RUNTIMES", "export_latency", "latency_table", "markdown", "time_calls"]

#: What :func:`latency_table` measures, in order.
RUNTIMES = ("jax", "onnxruntime", "onnxruntime-int8", "litert")


def time_calls(call: Callable[[], Any], *, runs: int = 50, warmup: int = 3) -> dict[str, float]:
    """Median and 90th percentile (milliseconds) of ``runs`` timed calls of ``call()``.

    Example:
      >>> stats = time_calls(lambda: sum(range(100)), runs=5, warmup=1)
      >>> sorted(stats), stats["median_ms"] <= stats["p90_ms"]
      (['median_ms', 'p90_ms', 'runs'], True)
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"`runs` must be a positive int, got {runs!r}")
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "runs": runs,
    }


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def latency_table(
    module: Any,
    variables: Any,
    example_input: Any,
    *,
    runs: int = 50,
    runtimes: Sequence[str] = RUNTIMES,
    calibration_batches: Any = None,
    workdir: str | None = None,
) -> list[dict[str, Any]]:
    """Times one model at batch 1 in each runtime.

    Args:
      module, variables: a linen model and its variables.
      example_input: one input, ``(1, height, width, channels)`` float32.
      runs: timed calls per runtime.
      runtimes: a subset of :data:`RUNTIMES`.
      calibration_batches: inputs for the int8 model's activation ranges (default:
        ``example_input``).
      workdir: where the exported files go (default: a temporary folder, removed after).

    Returns:
      One row per runtime: ``runtime``, ``median_ms``, ``p90_ms``, ``runs``, and
      ``max_rel_error`` against our float output; a runtime whose extra is not
      installed gets ``median_ms=None`` and a ``note``. The onnxruntime rows also
      get ``optimized_ops``, the op types (with counts) of the graph onnxruntime
      runs after its optimizations: for the int8 model, ``QLinearConv`` (or
      ``ConvInteger``) nodes are convolutions in integer arithmetic, a ``Conv``
      between ``DequantizeLinear`` and ``QuantizeLinear`` is one in float.
    """
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise ValueError(f"`runtimes` has {unknown}; choose from {RUNTIMES}")
    x = np.asarray(example_input, np.float32)
    reference = jax.jit(_model.inference_function(module, variables, x, fold_batch_norm=False))
    want = np.asarray(reference(x))
    if workdir is not None:
        return _measure(
            module, variables, x, reference, want, runs, runtimes, calibration_batches, workdir
        )
    with tempfile.TemporaryDirectory(prefix="sepconv_export_") as folder:
        return _measure(
            module, variables, x, reference, want, runs, runtimes, calibration_batches, folder
        )


def _measure(module, variables, x, reference, want, runs, runtimes, calibration_batches, folder):
    """The rows of :func:`latency_table`, the exported files written to ``folder``."""

    def row(runtime: str, call: Callable[[], Any]) -> dict[str, Any]:
        got = np.asarray(call())
        error = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
        return {"runtime": runtime, **time_calls(call, runs=runs), "max_rel_error": error}

    rows = []
    for runtime in runtimes:
        if runtime == "jax":
            rows.append(row(runtime, lambda: reference(x).block_until_ready()))
            continue
        needs = "tensorflow" if runtime == "litert" else "onnxruntime"
        if not _available(needs):
            extra = "litert" if runtime == "litert" else "export"
            rows.append(
                {
                    "runtime": runtime,
                    "median_ms": None,
                    "p90_ms": None,
                    "runs": 0,
                    "note": f'needs the {extra} extra: pip install "sepconv-jax[{extra}]"',
                }
            )
            continue
        if runtime == "litert":
            from sepconv_jax.export.litert import interpreter, run_tflite, to_tflite

            path = to_tflite(module, variables, x, os.path.join(folder, "model.tflite"))
            it = interpreter(path)
            rows.append(row(runtime, functools.partial(run_tflite, it, x)))
            continue
        from sepconv_jax.export.onnx import op_counts, run_onnx, session, to_onnx

        if runtime == "onnxruntime":
            path = to_onnx(module, variables, x, os.path.join(folder, "model.onnx"))
        else:
            from sepconv_jax.export.quantization import quantize

            batches = [x] if calibration_batches is None else calibration_batches
            # 7-bit weights: onnxruntime's uint8 x int8 kernels on x86 without VNNI
            # add product pairs in 16 bits, which full-range weights can overflow.
            qmodel, qvars = quantize(
                module, variables, batches, per_channel=True, reduce_range=True
            )
            path = to_onnx(qmodel, qvars, x, os.path.join(folder, "model_int8.onnx"))
        optimized = os.path.splitext(path)[0] + "_optimized.onnx"
        sess = session(path, optimized_path=optimized)
        rows.append(row(runtime, functools.partial(run_onnx, sess, x)))
        rows[-1]["optimized_ops"] = dict(sorted(op_counts(optimized).items()))
    return rows


def export_latency(
    models_and_inputs: Sequence[tuple[str, Any, Any, Any]],
    *,
    runs: int = 50,
    runtimes: Sequence[str] = RUNTIMES,
    calibration: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """:func:`latency_table` for several ``(name, module, variables, x)``; rows get ``model``.

    ``calibration`` maps a model's name to its int8 calibration batches (default:
    its ``x``).
    """
    rows: list[dict[str, Any]] = []
    for name, module, variables, x in models_and_inputs:
        batches = (calibration or {}).get(name)
        table = latency_table(
            module, variables, x, runs=runs, runtimes=runtimes, calibration_batches=batches
        )
        rows.extend({"model": name, **entry} for entry in table)
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table (median and p90 in ms, error vs our float output)."""
    lines = [
        "| model | runtime | median (ms) | p90 (ms) | max rel. error |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r.get("median_ms") is None:
            lines.append(f"| {r.get('model', '')} | {r['runtime']} | - | - | {r.get('note', '')} |")
            continue
        lines.append(
            f"| {r.get('model', '')} | {r['runtime']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} "
            f"| {r['max_rel_error']:.1e} |"
        )
    return "\n".join(lines)
