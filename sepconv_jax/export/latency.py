"""Batch-1 latency of an exported model in the runtimes phones use, beside our JAX forward.

:func:`our_runners` exports one model to ONNX (float32 and QDQ int8, run in
onnxruntime) and LiteRT (float32 and full-integer int8, run in the LiteRT
interpreter with XNNPACK) and returns one call per runtime with what each graph
holds; :func:`time_side_by_side` times several calls in interleaved rounds, so
that a load that comes and goes on the machine falls on every runtime alike;
:func:`latency_table` does both for one model. Timings are measurements, never
test assertions; ``sepconv-jax bench --export`` prints them beside the standard
exports (:mod:`sepconv_jax.apps.bench_export`).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from sepconv_jax.export import _model

__all__ = [
    "RUNTIMES",
    "THREADS",
    "Runner",
    "export_latency",
    "latency_table",
    "litert_runner",
    "markdown",
    "ort_runner",
    "our_runners",
    "relative_error",
    "rows_of",
    "time_calls",
    "time_side_by_side",
]

#: What :func:`latency_table` measures, in order.
RUNTIMES = ("jax", "onnxruntime", "onnxruntime-int8", "litert", "litert-int8")

#: Threads of every runtime unless told otherwise (onnxruntime's intra-op threads,
#: the LiteRT interpreter's XNNPACK threads).
THREADS = 2

#: A runtime's call and facts: ``{"call": f, "ops": {...}, ...}`` or ``{"note": why not}``.
Runner = dict[str, Any]


def time_calls(call: Callable[[], Any], *, runs: int = 50, warmup: int = 3) -> dict[str, float]:
    """Median and 90th percentile (milliseconds) of ``runs`` timed calls of ``call()``.

    Example:
      >>> stats = time_calls(lambda: sum(range(100)), runs=5, warmup=1)
      >>> sorted(stats), stats["median_ms"] <= stats["p90_ms"]
      (['median_ms', 'p90_ms', 'runs'], True)
    """
    return time_side_by_side({"call": call}, runs=runs, warmup=warmup, rounds=1)["call"]


def time_side_by_side(
    calls: Mapping[str, Callable[[], Any]], *, runs: int = 50, warmup: int = 3, rounds: int = 5
) -> dict[str, dict[str, float]]:
    """Median and 90th percentile (ms) of ``runs`` calls of each of ``calls``, interleaved.

    Each call is warmed up ``warmup`` times, then the calls take turns: ``rounds``
    rounds, each timing every call ``runs / rounds`` times (at least once).

    Example:
      >>> stats = time_side_by_side({"a": lambda: None, "b": lambda: sum(range(99))}, runs=4)
      >>> sorted(stats), stats["b"]["runs"]
      (['a', 'b'], 5)
    """
    for name, value in (("runs", runs), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    for call in calls.values():
        for _ in range(warmup):
            call()
    per_round = max(1, round(runs / rounds))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(per_round):
                start = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: {
            "median_ms": float(np.median(t)),
            "p90_ms": float(np.percentile(t, 90)),
            "runs": len(t),
        }
        for name, t in times.items()
    }


def relative_error(got: Any, want: Any) -> float:
    """``max |got - want| / max |want|``."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def ort_runner(path: str, x: np.ndarray, *, threads: int = THREADS, layout: str = "NHWC") -> Runner:
    """The call of an ONNX file in onnxruntime, with the op types of the exported graph
    (``ops``) and of the graph onnxruntime runs after its optimizations
    (``optimized_ops``: for an int8 model, ``QLinearConv`` or ``ConvInteger`` nodes
    are convolutions in integer arithmetic, a ``Conv`` between ``DequantizeLinear``
    and ``QuantizeLinear`` one in float). ``layout="NCHW"`` feeds ``x`` transposed.

    The session's threads sleep between runs instead of spinning: the runners take
    turns on the same cores (:func:`time_side_by_side`), and a session spinning after
    its last call slowed whichever runner came next (measured on 2 cores: the same
    MobileNetV2 ``.tflite`` took 4.2 ms alone and 7-8 ms timed right after an
    onnxruntime runner)."""
    from sepconv_jax.export.onnx import op_counts, session

    optimized = os.path.splitext(path)[0] + "_optimized.onnx"
    sess = session(path, threads=threads, optimized_path=optimized, spinning=False)
    feed = {sess.get_inputs()[0].name: x.transpose(0, 3, 1, 2).copy() if layout == "NCHW" else x}

    def call() -> Any:
        return sess.run(None, feed)[0]

    return {
        "call": call,
        "ops": dict(sorted(op_counts(path).items())),
        "optimized_ops": dict(sorted(op_counts(optimized).items())),
    }


def litert_runner(path: str, x: np.ndarray, *, threads: int = THREADS) -> Runner:
    """The call of a ``.tflite`` file in the LiteRT interpreter, with its operators."""
    from sepconv_jax.export.litert import interpreter, tflite_ops

    it = interpreter(path, num_threads=threads)
    index = it.get_input_details()[0]["index"]
    out = it.get_output_details()[0]["index"]

    def call() -> Any:
        it.set_tensor(index, x)
        it.invoke()
        return it.get_tensor(out)

    return {"call": call, "ops": dict(sorted(tflite_ops(path).items()))}


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _missing(runtime: str) -> str | None:
    needs, extra = ("tensorflow", "litert") if runtime.startswith("litert") else ("onnx", "export")
    if runtime == "jax" or _available(needs):
        return None
    return f'needs the {extra} extra: pip install "sepconv-jax[{extra}]"'


def our_runners(
    module: Any,
    variables: Any,
    example_input: Any,
    folder: str,
    *,
    runtimes: Sequence[str] = RUNTIMES,
    calibration_batches: Any = None,
    threads: int = THREADS,
) -> dict[str, Runner]:
    """Our model exported for each runtime of ``runtimes`` (files in ``folder``).

    Args:
      module, variables: a linen model and its variables.
      example_input: one input, ``(1, height, width, channels)`` float32.
      folder: where the exported files go.
      runtimes: a subset of :data:`RUNTIMES`.
      calibration_batches: inputs for the int8 models' activation ranges (default:
        ``example_input``).
      threads: onnxruntime's intra-op threads and the LiteRT interpreter's.

    Returns:
      ``runtime -> runner``: ``call`` (no arguments, returns the output), ``ops``
      (op types and counts of the graph); or ``note`` where a runtime's extra is
      missing or its export failed (the message).
    """
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise ValueError(f"`runtimes` has {unknown}; choose from {RUNTIMES}")
    x = np.asarray(example_input, np.float32)
    batches = [x] if calibration_batches is None else calibration_batches
    runners: dict[str, Runner] = {}
    for runtime in runtimes:
        note = _missing(runtime)
        if note is not None:
            runners[runtime] = {"note": note}
            continue
        try:
            runners[runtime] = _our_runner(runtime, module, variables, x, batches, folder, threads)
        except Exception as error:  # recorded, and the benchmark goes on
            runners[runtime] = {"note": f"{type(error).__name__}: {error}"[:300]}
    return runners


def _our_runner(runtime, module, variables, x, batches, folder, threads) -> Runner:
    if runtime == "jax":
        forward = jax.jit(_model.inference_function(module, variables, x, fold_batch_norm=False))
        return {"call": lambda: forward(x).block_until_ready()}
    if runtime.startswith("litert"):
        from sepconv_jax.export.litert import to_tflite

        int8 = runtime == "litert-int8"
        path = to_tflite(
            module,
            variables,
            x,
            os.path.join(folder, f"ours{'_int8' if int8 else ''}.tflite"),
            calibration_batches=batches if int8 else None,
        )
        return litert_runner(path, x, threads=threads)
    from sepconv_jax.export.onnx import to_onnx

    if runtime == "onnxruntime":
        path = to_onnx(module, variables, x, os.path.join(folder, "ours.onnx"))
    else:
        from sepconv_jax.export.quantization import quantize

        # 7-bit weights: onnxruntime's uint8 x int8 kernels on x86 without VNNI add
        # product pairs in 16 bits, which full-range weights can overflow.
        qmodel, qvars = quantize(module, variables, batches, per_channel=True, reduce_range=True)
        path = to_onnx(qmodel, qvars, x, os.path.join(folder, "ours_int8.onnx"))
    return ort_runner(path, x, threads=threads)


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
    """Times one model at batch 1 in each runtime, side by side.

    Args:
      module, variables, example_input, runtimes, calibration_batches: as in
        :func:`our_runners`.
      runs: timed calls per runtime.
      workdir: where the exported files go (default: a temporary folder, removed after).

    Returns:
      One row per runtime: ``runtime``, ``median_ms``, ``p90_ms``, ``runs``,
      ``max_rel_error`` against our float JAX output, and the graph's ``ops`` (the
      onnxruntime rows also ``optimized_ops``); a runtime that could not run gets
      ``median_ms=None`` and a ``note``.
    """
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="sepconv_export_") as folder:
            return latency_table(
                module,
                variables,
                example_input,
                runs=runs,
                runtimes=runtimes,
                calibration_batches=calibration_batches,
                workdir=folder,
            )
    x = np.asarray(example_input, np.float32)
    runners = our_runners(
        module, variables, x, workdir, runtimes=runtimes, calibration_batches=calibration_batches
    )
    want = np.asarray(_model.inference_function(module, variables, x, fold_batch_norm=False)(x))
    return rows_of(runners, want, runs=runs)


def rows_of(
    runners: Mapping[str, Runner], want: Any, *, runs: int, rounds: int = 5
) -> list[dict[str, Any]]:
    """Times the runners side by side; one row each (``max_rel_error`` against
    ``want``, or ``None`` for a runner marked ``"compare": False``)."""
    calls = {name: r["call"] for name, r in runners.items() if "call" in r}
    stats = time_side_by_side(calls, runs=runs, rounds=min(rounds, runs))
    rows = []
    for name, runner in runners.items():
        facts = {k: v for k, v in runner.items() if k not in ("call", "compare")}
        if name not in stats:
            rows.append({"runtime": name, "median_ms": None, "p90_ms": None, "runs": 0, **facts})
            continue
        error = relative_error(runner["call"](), want) if runner.get("compare", True) else None
        rows.append({"runtime": name, **stats[name], "max_rel_error": error, **facts})
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
        error = r.get("max_rel_error")
        lines.append(
            f"| {r.get('model', '')} | {r['runtime']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} "
            f"| {'-' if error is None else f'{error:.1e}'} |"
        )
    return "\n".join(lines)
