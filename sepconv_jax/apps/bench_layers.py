"""The layer suite of ``sepconv-jax bench``: every depthwise impl, Flax, PyTorch,
our separable layer and the standard convolution it replaces, timed side by side
per layer shape (:mod:`sepconv_jax.apps.bench_shapes`), batch, dtype and pass.

:func:`measure_layers` returns plain records; :mod:`sepconv_jax.apps.bench_report`
turns them into tables, the summary and the plot.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from sepconv_jax import _spec, ops
from sepconv_jax.apps import bench_report, bench_torch
from sepconv_jax.apps.bench_shapes import PASSES, Layer
from sepconv_jax.apps.timing import best_time
from sepconv_jax.kernels import dispatch

__all__ = ["depthwise_impls", "measure_layers", "resolved_impl"]

# ----------------------------------------------------------------------------- passes


def _with_grads(fn: Callable, n_args: int) -> Callable:
    """``(*args, cotangent) -> (y, grads of <y, cotangent> w.r.t. every arg)``."""

    def forward_backward(*args_and_cotangent):
        *args, cotangent = args_and_cotangent
        y, vjp = jax.vjp(fn, *args[:n_args])
        return y, vjp(cotangent)

    return forward_backward


# ----------------------------------------------------------------------------- columns


def depthwise_impls(backend: str | None = None) -> tuple[str, ...]:
    """The depthwise impls the suite times by default on ``backend``.

    Every registered kernel except the names that only change separable layers
    (:data:`~sepconv_jax.kernels.dispatch.FUSED_IMPLS`: on a depthwise conv alone
    they run another kernel), and except ``"pallas"`` on CPU, where the Pallas
    kernels run in interpret mode (a test vehicle, not a contender).
    """
    backend = jax.default_backend() if backend is None else backend
    return tuple(
        impl
        for impl in dispatch.KERNELS
        if impl not in dispatch.FUSED_IMPLS and not (impl == "pallas" and backend == "cpu")
    )


def _jax_columns(
    layer: Layer,
    batch: int,
    dtype: Any,
    impls: Sequence[str],
    *,
    flax_column: bool,
    fused_column: bool,
) -> dict[str, tuple[Callable, list]]:
    """Column name -> (function of arrays, its arguments) for one layer."""
    import flax.linen as nn

    key = jax.random.key(0)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    s, k, c, n = layer.size, layer.kernel, layer.channels, layer.out_channels
    x = jax.random.normal(k1, (batch, s, s, c), dtype)
    dw = (jax.random.normal(k2, (k, k, 1, c)) / k).astype(dtype)
    pw = (jax.random.normal(k3, (c, n)) / math.sqrt(c)).astype(dtype)
    full = (jax.random.normal(k4, (k, k, c, n)) / (k * math.sqrt(c))).astype(dtype)
    columns: dict[str, tuple[Callable, list]] = {}
    for impl in impls:
        columns[impl] = (
            lambda x, dw, impl=impl: ops.depthwise_conv(
                x, dw, strides=layer.stride, padding="SAME", impl=impl
            ),
            [x, dw],
        )
    if flax_column:
        flax_conv = nn.Conv(
            features=c,
            kernel_size=(k, k),
            strides=layer.stride,
            padding="SAME",
            feature_group_count=c,
            use_bias=False,
            dtype=dtype,
            param_dtype=dtype,
        )
        columns["flax"] = (lambda x, dw: flax_conv.apply({"params": {"kernel": dw}}, x), [x, dw])
    columns["separable"] = (
        lambda x, dw, pw: ops.separable_conv(x, dw, pw, strides=layer.stride, padding="SAME"),
        [x, dw, pw],
    )
    if fused_column:
        columns["separable fused"] = (
            lambda x, dw, pw: ops.separable_conv(
                x, dw, pw, strides=layer.stride, padding="SAME", impl=dispatch.FUSED_IMPLS[0]
            ),
            [x, dw, pw],
        )
    columns["standard"] = (
        lambda x, full: lax.conv_general_dilated(
            x,
            full,
            (layer.stride, layer.stride),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ),
        [x, full],
    )
    return columns


def resolved_impl(layer: Layer, batch: int, dtype: Any) -> str:
    """The impl ``depthwise_conv(impl="auto")`` runs for this layer here."""
    spec = _spec.make_spec(
        jax.ShapeDtypeStruct((batch, layer.size, layer.size, layer.channels), dtype),
        jax.ShapeDtypeStruct((layer.kernel, layer.kernel, 1, layer.channels), dtype),
        groups=None,
        strides=layer.stride,
        padding="SAME",
        dilation=1,
        padding_mode="zeros",
        data_format="channels_last",
    )
    return dispatch.get_default_impl() or dispatch.auto_impl(spec)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _ratios(seconds: dict[str, float | None], analytic: float, ours: str) -> dict:
    impls = [impl for impl in dispatch.KERNELS if impl in seconds]
    ratios = {f"xla/{impl}": _ratio(seconds.get("xla"), seconds[impl]) for impl in impls}
    ours_seconds = seconds.get(ours)
    ratios["xla/ours"] = _ratio(seconds.get("xla"), ours_seconds)
    ratios["flax/ours"] = _ratio(seconds.get("flax"), ours_seconds)
    ratios["torch/ours"] = _ratio(seconds.get("torch"), ours_seconds)
    ratios["separable/fused"] = _ratio(seconds["separable"], seconds.get("separable fused"))
    realized = _ratio(seconds["standard"], seconds["separable"])
    ratios["standard/separable"] = realized
    ratios["realized/analytic"] = None if realized is None else realized / analytic
    return ratios


# ----------------------------------------------------------------------------- suite


def _compile_all(jobs: dict[Any, tuple[Callable, list]], threads: int) -> dict[Any, Any]:
    """Lowers every job here and compiles them on ``threads`` threads (XLA compiles
    without the GIL). Returns ``key -> compiled`` or ``key -> the exception``."""
    import concurrent.futures

    lowered: dict[Any, Any] = {}
    for key, (fn, args) in jobs.items():
        try:
            lowered[key] = jax.jit(fn).lower(*args)
        except Exception as error:  # a column that cannot run here: recorded, not fatal
            lowered[key] = error
    results: dict[Any, Any] = {}
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        futures = {
            key: pool.submit(low.compile)
            for key, low in lowered.items()
            if not isinstance(low, Exception)
        }
        for key, low in lowered.items():
            if isinstance(low, Exception):
                results[key] = low
                continue
            try:
                results[key] = futures[key].result()
            except Exception as error:
                results[key] = error
    return results


def _run_to_completion(compiled: Callable, args: Sequence[Any]) -> Any:
    return jax.block_until_ready(compiled(*args))


#: ``(batch, dtype name, pass name)``: one cell of a layer's grid.
Cell = tuple[int, str, str]
#: Column name -> ``(seconds or None, calls timed)``.
Timed = dict[str, tuple[float | None, int]]


def _layer_jobs(
    layer: Layer,
    cells: Sequence[Cell],
    impls: Sequence[str],
    cache: dict[tuple, Timed],
    *,
    flax_max_batch: int | None,
    fused_column: bool,
) -> dict[tuple, tuple[Callable, list]]:
    """``(*cell, column) -> (function, arguments)`` for one layer, skipping the
    depthwise columns already timed for the same depthwise shape (``cache``)."""
    jobs: dict[tuple, tuple[Callable, list]] = {}
    columns_of: dict[tuple[int, str], dict[str, tuple[Callable, list]]] = {}
    for batch, dtype_name, pass_name in cells:
        dtype = jnp.dtype(dtype_name)
        if (batch, dtype_name) not in columns_of:
            flax_column = flax_max_batch is None or batch <= flax_max_batch
            columns_of[(batch, dtype_name)] = _jax_columns(
                layer, batch, dtype, impls, flax_column=flax_column, fused_column=fused_column
            )
        cached = cache.get((layer.depthwise_name, batch, dtype_name, pass_name), {})
        for name, (fn, args) in columns_of[(batch, dtype_name)].items():
            if name in cached:
                continue
            if pass_name == "fwd+bwd":
                cotangent = jnp.ones(jax.eval_shape(fn, *args).shape, dtype)
                fn, args = _with_grads(fn, len(args)), [*args, cotangent]
            jobs[(batch, dtype_name, pass_name, name)] = (fn, args)
    return jobs


def _time_cell(
    cell: Cell,
    jobs: dict[tuple, tuple[Callable, list]],
    compiled: dict[tuple, Any],
    timed: Timed,
    *,
    min_time: float,
    max_reps: int,
) -> dict[str, str]:
    """Times the compiled columns of one cell into ``timed``; returns the errors."""
    errors: dict[str, str] = {}
    for key, exe in compiled.items():
        if key[:3] != cell:
            continue
        name = key[3]
        try:
            if isinstance(exe, Exception):
                raise exe
            timed[name] = best_time(
                functools.partial(_run_to_completion, exe, jobs[key][1]),
                max_reps=max_reps,
                min_time=min_time,
            )
        except Exception as error:  # a column that cannot run here: recorded, not fatal
            timed[name], errors[name] = (None, 0), f"{type(error).__name__}: {error}"
    return errors


def _record(layer: Layer, cell: Cell, timed: Timed, errors: dict[str, str]) -> dict:
    """One record of :func:`measure_layers`."""
    batch, dtype_name, pass_name = cell
    seconds = {name: value[0] for name, value in timed.items()}
    ours = resolved_impl(layer, batch, jnp.dtype(dtype_name))
    return {
        "layer": layer.name,
        "depthwise": layer.depthwise_name,
        "models": list(layer.models),
        "size": layer.size,
        "channels": layer.channels,
        "kernel": layer.kernel,
        "stride": layer.stride,
        "out_channels": layer.out_channels,
        "batch": batch,
        "dtype": dtype_name,
        "pass": pass_name,
        "ours": ours,
        "seconds": seconds,
        "reps": {name: value[1] for name, value in timed.items()},
        "errors": errors,
        "analytic_savings": layer.analytic_savings,
        "ratios": _ratios(seconds, layer.analytic_savings, ours),
    }


def measure_layers(
    layers: Sequence[Layer],
    batches: Sequence[int],
    dtypes: Sequence[str],
    *,
    min_time: float,
    max_reps: int,
    torch_enabled: bool,
    flax_max_batch: int | None = None,
    impls: Sequence[str] | None = None,
    fused_column: bool = False,
    compile_threads: int = 1,
    budget: float | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Times every column for every layer, batch, dtype and pass.

    ``flax.linen.Conv`` lowers to the same ``lax.conv_general_dilated`` as
    ``impl="xla"``; ``flax_max_batch`` skips it (``None`` in the record) at larger
    batches to save time.

    Each layer's functions (every column, dtype, batch and pass) are compiled
    together, on ``compile_threads`` threads, before any of them is timed. A column
    that fails to lower, compile or run is recorded as ``None`` with its error in the
    record's ``errors``; the suite goes on. With a ``budget`` (seconds), layers not
    started when it is spent are skipped (and logged).

    Depthwise columns are measured once per distinct depthwise shape and shared by
    the layers that differ only in ``N``.

    Args:
      impls: the depthwise impls to time (default :func:`depthwise_impls`).
      fused_column: also time ``separable_conv`` with the fused kernel.

    Returns:
      One record per (layer, batch, dtype, pass): the shape, ``seconds`` by column
      (``None`` where a column could not run), ``reps`` by column, ``errors``,
      ``ours`` (the impl ``"auto"`` picks) and ``ratios``.
    """
    impls = tuple(depthwise_impls() if impls is None else impls)
    started = time.perf_counter()
    torch_times = {}
    if torch_enabled:
        log("timing PyTorch in a separate process...")
        torch_times = bench_torch.measure_torch(
            layers, batches, dtypes, PASSES, min_time=min_time, max_reps=max_reps
        )
    cells = [(b, d, p) for b in batches for d in dtypes for p in PASSES]
    records = []
    depthwise_cache: dict[tuple, Timed] = {}
    depthwise_columns = (*impls, "flax", "torch")
    for layer in layers:
        if budget is not None and time.perf_counter() - started > budget:
            log(f"budget of {budget:.0f} s spent: skipping {layer.name}")
            continue
        jobs = _layer_jobs(
            layer,
            cells,
            impls,
            depthwise_cache,
            flax_max_batch=flax_max_batch,
            fused_column=fused_column,
        )
        compiled = _compile_all(jobs, compile_threads)
        for cell in cells:
            shape_key = (layer.depthwise_name, *cell)
            timed: Timed = dict(depthwise_cache.get(shape_key, {}))
            errors = _time_cell(cell, jobs, compiled, timed, min_time=min_time, max_reps=max_reps)
            timed.setdefault("flax", (None, 0))
            if "torch" not in timed:
                timed["torch"] = torch_times.get(shape_key, (None, 0))
            depthwise_cache[shape_key] = {
                name: timed[name] for name in depthwise_columns if name in timed
            }
            record = _record(layer, cell, timed, errors)
            records.append(record)
            log(bench_report.format_row(record))
            for name, message in errors.items():
                log(f"  {name}: {message[:300]}")
    return records
