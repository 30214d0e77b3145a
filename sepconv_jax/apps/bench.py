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

``--export`` measures something else: the batch-1 latency of MobileNetV2, MobileNetV1
and the demo's separable network exported to ONNX (float32 and QDQ int8, run in
onnxruntime) and LiteRT, against the jitted JAX forward
(:mod:`sepconv_jax.export.latency`), written to ``export.json`` and ``export.md``.
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
import dataclasses
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
from jax import lax

from sepconv_jax import _spec, cost, ops
from sepconv_jax.apps import bench_models, bench_report, bench_torch
from sepconv_jax.apps.timing import best_time, compile_and_time
from sepconv_jax.apps.train import train_step
from sepconv_jax.kernels import dispatch
from sepconv_jax.kernels.dispatch import Impl

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
]

#: ``(input size, channels C, kernel k, stride s, projection channels N)`` of one layer.
Shape = tuple[int, int, int, int, int]

#: Depthwise + projection layers at 224x224 input: (input size, channels C, kernel k,
#: stride s, projection channels N). MobileNetV2: Sandler et al. 2018, Table 2
#: (expansion 6 except the first block). EfficientNet-B0: Tan & Le 2019, Table 1.
MODEL_LAYERS: dict[str, tuple[Shape, ...]] = {
    "MobileNetV2": (
        (112, 32, 3, 1, 16),
        (112, 96, 3, 2, 24),
        (56, 144, 3, 1, 24),
        (56, 144, 3, 2, 32),
        (28, 192, 3, 1, 32),
        (28, 192, 3, 2, 64),
        (14, 384, 3, 1, 64),
        (14, 384, 3, 1, 96),
        (14, 576, 3, 1, 96),
        (14, 576, 3, 2, 160),
        (7, 960, 3, 1, 160),
        (7, 960, 3, 1, 320),
    ),
    "EfficientNet-B0": (
        (112, 32, 3, 1, 16),
        (112, 96, 3, 2, 24),
        (56, 144, 3, 1, 24),
        (56, 144, 5, 2, 40),
        (28, 240, 5, 1, 40),
        (28, 240, 3, 2, 80),
        (14, 480, 3, 1, 80),
        (14, 480, 5, 1, 112),
        (14, 672, 5, 1, 112),
        (14, 672, 5, 2, 192),
        (7, 1152, 5, 1, 192),
        (7, 1152, 3, 1, 320),
    ),
}

#: Small shapes for ``--quick``: enough to run every code path in seconds.
QUICK_LAYERS: tuple[Shape, ...] = ((16, 32, 3, 1, 32), (8, 16, 5, 2, 24))

PASSES = ("fwd", "fwd+bwd")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One depthwise (``k x k``, stride ``s``, ``C`` channels) + projection (``C -> N``) layer."""

    size: int
    channels: int
    kernel: int
    stride: int
    out_channels: int
    models: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return (
            f"{self.size}x{self.size} C{self.channels} k{self.kernel} s{self.stride} "
            f"N{self.out_channels}"
        )

    @property
    def depthwise_name(self) -> str:
        return f"{self.size}x{self.size} C{self.channels} k{self.kernel} s{self.stride}"

    @property
    def analytic_savings(self) -> float:
        """Standard over separable mult-adds: ``k^2 C N / (k^2 C + C N)``."""
        return cost.savings_factor(self.kernel, self.out_channels)


def layer_shapes(models: Sequence[str] = tuple(MODEL_LAYERS)) -> list[Layer]:
    """The distinct layer shapes of ``models``, in order, each listing its models.

    Args:
      models: keys of :data:`MODEL_LAYERS`.

    Returns:
      One :class:`Layer` per distinct ``(size, C, k, s, N)``.

    Raises:
      ValueError: for an unknown model name.
    """
    found: dict[Shape, list[str]] = {}
    for model in models:
        if model not in MODEL_LAYERS:
            raise ValueError(f"`models` must be among {tuple(MODEL_LAYERS)}, got {model!r}")
        for shape in MODEL_LAYERS[model]:
            found.setdefault(shape, []).append(model)
    return [Layer(*shape, models=tuple(names)) for shape, names in found.items()]


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


def _ours(layer: Layer, batch: int, dtype: Any) -> str:
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
    ratios = {f"xla/{impl}": _ratio(seconds["xla"], seconds[impl]) for impl in impls}
    ours_seconds = seconds.get(ours)
    ratios["xla/ours"] = _ratio(seconds["xla"], ours_seconds)
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
    records = []
    depthwise_cache: dict[tuple, dict[str, tuple[float | None, int]]] = {}
    depthwise_columns = (*impls, "flax", "torch")
    for layer in layers:
        if budget is not None and time.perf_counter() - started > budget:
            log(f"budget of {budget:.0f} s spent: skipping {layer.name}")
            continue
        jobs: dict[tuple, tuple[Callable, list]] = {}
        for batch in batches:
            for dtype_name in dtypes:
                dtype = jnp.dtype(dtype_name)
                flax_column = flax_max_batch is None or batch <= flax_max_batch
                columns = _jax_columns(
                    layer, batch, dtype, impls, flax_column=flax_column, fused_column=fused_column
                )
                for pass_name in PASSES:
                    cached = depthwise_cache.get(
                        (layer.depthwise_name, batch, dtype_name, pass_name), {}
                    )
                    for name, (fn, args) in columns.items():
                        if name in cached:
                            continue
                        if pass_name == "fwd+bwd":
                            cotangent = jnp.ones(jax.eval_shape(fn, *args).shape, dtype)
                            fn, args = _with_grads(fn, len(args)), [*args, cotangent]
                        jobs[(batch, dtype_name, pass_name, name)] = (fn, args)
        compiled = _compile_all(jobs, compile_threads)
        for batch in batches:
            for dtype_name in dtypes:
                dtype = jnp.dtype(dtype_name)
                for pass_name in PASSES:
                    shape_key = (layer.depthwise_name, batch, dtype_name, pass_name)
                    timed: dict[str, tuple[float | None, int]] = dict(
                        depthwise_cache.get(shape_key, {})
                    )
                    errors: dict[str, str] = {}
                    for (b, d, p, name), exe in compiled.items():
                        if (b, d, p) != (batch, dtype_name, pass_name):
                            continue
                        args = jobs[(b, d, p, name)][1]
                        if isinstance(exe, Exception):
                            timed[name], errors[name] = (None, 0), f"{type(exe).__name__}: {exe}"
                            continue
                        try:
                            timed[name] = best_time(
                                functools.partial(_run_to_completion, exe, args),
                                max_reps=max_reps,
                                min_time=min_time,
                            )
                        except Exception as error:
                            timed[name], errors[name] = (
                                (None, 0),
                                f"{type(error).__name__}: {error}",
                            )
                    timed.setdefault("flax", (None, 0))
                    if "torch" not in timed:
                        timed["torch"] = torch_times.get(shape_key, (None, 0))
                    depthwise_cache[shape_key] = {
                        name: timed[name] for name in depthwise_columns if name in timed
                    }
                    seconds = {name: value[0] for name, value in timed.items()}
                    ours = _ours(layer, batch, dtype)
                    record = {
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
                    records.append(record)
                    log(bench_report.format_row(record))
                    for name, message in errors.items():
                        log(f"  {name}: {message[:300]}")
    return records


# ----------------------------------------------------------------------------- whole model


#: The architectures :func:`measure_model` builds: two of the reference models, and
#: ``"blocks"`` (two of MobileNetV2's inverted residuals and a head, for ``--quick``).
MODEL_ARCHITECTURES = ("MobileNetV2", "EfficientNetB0", "blocks")


def _model(
    architecture: str, impl: Impl, num_classes: int, width_multiplier: float, dtype: Any = None
):
    """A model of :data:`MODEL_ARCHITECTURES` with ``impl`` in every layer."""
    import flax.linen as nn

    from sepconv_jax.models import EfficientNetB0, MobileNetV2
    from sepconv_jax.models.blocks import InvertedResidual

    if architecture == "MobileNetV2":
        return MobileNetV2(
            num_classes=num_classes, width_multiplier=width_multiplier, impl=impl, dtype=dtype
        )
    if architecture == "EfficientNetB0":
        return EfficientNetB0(num_classes=num_classes, impl=impl, dtype=dtype)
    if architecture != "blocks":
        raise ValueError(
            f"`architecture` must be one of {MODEL_ARCHITECTURES}, got {architecture!r}"
        )

    class Blocks(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = InvertedResidual(features=16, expand_ratio=1, impl=impl, dtype=dtype)(x, train)
            x = InvertedResidual(features=24, expand_ratio=6, strides=2, impl=impl, dtype=dtype)(
                x, train
            )
            return nn.Dense(num_classes, dtype=dtype)(x.mean(axis=(1, 2)))

    return Blocks()


def _run_to_completion(compiled: Callable, args: Sequence[Any]) -> Any:
    return jax.block_until_ready(compiled(*args))


def measure_model(
    impls: Sequence[Impl],
    *,
    architecture: str = "MobileNetV2",
    batch: int,
    image_size: int,
    width_multiplier: float,
    num_classes: int,
    min_time: float,
    max_reps: int,
    dtype: str | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Images per second of a training step (forward, backward, SGD update).

    ``architecture`` is one of :data:`MODEL_ARCHITECTURES`; ``"blocks"`` compiles in
    seconds (``--quick``). ``dtype`` is the models' compute dtype (``None``: float32;
    ``"bfloat16"`` for mixed precision, parameters staying float32). A step that
    fails to compile or run is recorded with its error and no time.

    Returns:
      One record per impl with ``seconds`` per step, ``images_per_second`` and the
      compile time.
    """
    import optax

    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    images = jax.random.normal(k1, (batch, image_size, image_size, 3))
    labels = jax.random.randint(k2, (batch,), 0, num_classes)
    optimizer = optax.sgd(0.01, momentum=0.9)
    records = []
    for impl in impls:
        record: dict[str, Any] = {
            "model": architecture,
            "impl": impl,
            # The models' depthwise layers are 3x3 and 5x5 at strides 1 and 2: the
            # kernels the rule picks for them, joined by "+" where they differ.
            "resolved_impl": impl
            if impl != "auto"
            else "+".join(
                sorted(
                    {_ours(Layer(112, 32, k, s, 16), 1, "float32") for k in (3, 5) for s in (1, 2)}
                )
            ),
            "batch": batch,
            "image_size": image_size,
            "width_multiplier": width_multiplier,
            "num_classes": num_classes,
            "dtype": dtype or "float32",
        }
        try:
            model = _model(architecture, impl, num_classes, width_multiplier, dtype)
            variables = model.init(k3, images, train=False)
            params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
            args = [params, state, optimizer.init(params), images, labels]
            # Dropout and stochastic depth (EfficientNet) draw from one fixed key: the
            # same masks every step, the same work as fresh ones.
            step = train_step(model, optimizer, train=True, rngs={"dropout": jax.random.key(1)})
            seconds, reps, compile_seconds = compile_and_time(
                step, args, max_reps=max_reps, min_time=min_time
            )
        except Exception as error:  # recorded, and the suite goes on
            record.update(
                seconds=None, images_per_second=None, error=f"{type(error).__name__}: {error}"
            )
            records.append(record)
            log(f"{architecture} train step impl={impl}: failed: {record['error'][:300]}")
            continue
        record.update(
            seconds=seconds,
            reps=reps,
            images_per_second=batch / seconds,
            compile_seconds=compile_seconds,
        )
        records.append(record)
        log(
            f"{architecture} train step impl={impl}: {1e3 * seconds:.1f} ms/step, "
            f"{batch / seconds:.1f} images/s (batch {batch}, {image_size}x{image_size}, "
            f"{record['dtype']}, compiled in {compile_seconds:.1f} s)"
        )
    return records


# ----------------------------------------------------------------------------- machine


def machine_info() -> dict:
    """Where the numbers came from: CPU, cores, load, library versions, backend."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
    }
    if hasattr(os, "getloadavg"):
        info["load_average"] = list(os.getloadavg())
    info["flax"] = flax.__version__
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


# ----------------------------------------------------------------------------- export


def export_models(quick: bool = False) -> list[tuple[str, Any, Any, Any]]:
    """The models of ``bench --export``: ``(name, module, variables, x)`` at batch 1.

    MobileNetV2 (1.0, 224) and MobileNetV1 (1.0, 224) with 1000 classes, and the
    demo's separable digits network (:class:`~sepconv_jax.apps.networks.DigitsCNN`,
    8x8 inputs); ``quick`` keeps the digits network only (exporting a MobileNet
    takes tens of seconds). Variables come from ``init`` (latency does not depend
    on their values); each ``x`` is a standard normal image.
    """
    from sepconv_jax import models
    from sepconv_jax.apps.networks import DigitsCNN

    specs: list[tuple[str, Any, int, int]] = []
    if not quick:
        specs = [
            ("MobileNetV2 1.0/224", models.MobileNetV2(num_classes=1000), 224, 3),
            ("MobileNetV1 1.0/224", models.MobileNetV1(num_classes=1000), 224, 3),
        ]
    specs.append(("DigitsCNN separable 8x8", DigitsCNN(separable=True), 8, 1))
    found = []
    for i, (name, module, size, channels) in enumerate(specs):
        x = jax.random.normal(jax.random.key(i), (1, size, size, channels), jnp.float32)
        variables = jax.jit(module.init)(jax.random.key(100 + i), x)
        found.append((name, module, variables, x))
    return found


def run_export(args: argparse.Namespace, out: Path) -> int:
    """``bench --export``: batch-1 latency of the exported models in each runtime.

    Writes ``export.json`` (machine, configuration, one row per model and runtime)
    and ``export.md`` into ``out`` and prints the table.
    """
    from sepconv_jax.export import latency

    runs = 3 if args.quick else args.export_runs
    runtimes = tuple(args.export_runtimes or latency.RUNTIMES)
    started = time.perf_counter()
    machine = machine_info()
    print(f"sepconv-jax bench --export on {machine['cpu']} ({machine['cores']} cores)")
    candidates = export_models(args.quick)
    calibration = {
        name: [jax.random.normal(jax.random.key(7), (8, *x.shape[1:]), jnp.float32)]
        for name, _, _, x in candidates
    }
    rows = latency.export_latency(candidates, runs=runs, runtimes=runtimes, calibration=calibration)
    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = list(os.getloadavg())
    machine["suite_seconds"] = round(time.perf_counter() - started, 1)
    config = {"quick": bool(args.quick), "batch": 1, "runs": runs, "runtimes": list(runtimes)}
    result = {"machine": machine, "config": config, "rows": rows}
    table = latency.markdown(rows)
    print(table)
    (out / "export.json").write_text(json.dumps(result, indent=2) + "\n")
    load = machine.get("load_average")
    report = [
        "# Batch-1 latency of the exported models",
        "",
        f"{machine['cpu']}, {machine['cores']} cores, load average at the start "
        f"{f'{load[0]:.1f}' if load else 'n/a'}; median and 90th percentile of {runs} calls "
        f"after 3 warm-up calls; error: max |ours - theirs| / max |ours| against our float "
        f"JAX output (the int8 row includes the quantization error).",
        "",
        table,
        "",
    ]
    (out / "export.md").write_text("\n".join(report))
    print(f"wrote {out / 'export.json'}, {out / 'export.md'}")
    return 0


def run_models(args: argparse.Namespace, out: Path) -> int:
    """``bench --models``: whole models, ours against timm's in PyTorch.

    Writes ``models.json`` (machine, configuration, records), ``models.md`` and, unless
    ``--no-plot``, ``models.png`` into ``out`` and prints the table. Returns 2, with
    a message, for a model name not in :data:`~sepconv_jax.apps.bench_models.ZOO`
    or without timm.
    """
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
        "batch": 2 if args.quick else args.model_batch,
        "image_size": 32 if args.quick else args.model_image_size,
        "min_time": 0.0 if args.quick else args.min_time,
        "max_reps": 1 if args.quick else args.max_reps,
        "torch": not args.no_torch,
    }
    started = time.perf_counter()
    machine = machine_info()
    print(
        f"sepconv-jax bench --models on {machine['cpu']} ({machine['cores']} cores), batch "
        f"{config['batch']}, {config['image_size']}x{config['image_size']}, float32"
    )
    records, facts = bench_models.measure_zoo(
        names,
        config["impls"],
        batch=config["batch"],
        image_size=config["image_size"],
        min_time=config["min_time"],
        max_reps=config["max_reps"],
        torch_enabled=config["torch"],
    )
    machine["torch_threads"] = facts.get("torch_threads", machine.get("torch_threads"))
    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = list(os.getloadavg())
    machine["suite_seconds"] = round(time.perf_counter() - started, 1)
    result = {"machine": machine, "config": config, "facts": facts, "records": records}
    table = bench_models.markdown(records)
    print(table)
    (out / "models.json").write_text(json.dumps(result, indent=2) + "\n")
    load, load_end = machine.get("load_average"), machine.get("load_average_end")
    report = [
        "# Whole models: ours against timm in PyTorch",
        "",
        f"{machine['cpu']}, {machine['cores']} cores, load average "
        f"{f'{load[0]:.1f}' if load else 'n/a'} at the start and "
        f"{f'{load_end[0]:.1f}' if load_end else 'n/a'} at the end; jax {machine['jax']}, "
        f"torch {machine['torch']} ({machine['torch_threads']} threads). Batch {config['batch']}, "
        f"{config['image_size']}x{config['image_size']} float32 images; the best of up to "
        f"{config['max_reps']} calls after a warm-up. Both sides run the same network: ours "
        "is the timm model converted by sepconv_jax.interop.timm. `vs timm`: images/s "
        "over the faster of timm's two layouts (> 1: ours is faster). Training: forward, "
        "backward and an SGD-with-momentum update, in training mode.",
        "",
        table,
        "",
    ]
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
    if not args.no_plot and not args.export:
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
    model_options: dict[str, Any]
    if args.quick:
        layers = [Layer(*shape, models=("quick",)) for shape in QUICK_LAYERS]
        batches, dtypes = args.batch or [2], args.dtype or ["float32"]
        min_time, max_reps = 0.0, 1
        model_options = {
            "batch": 2,
            "image_size": 16,
            "width_multiplier": 1.0,
            "num_classes": 10,
        }
    else:
        layers = layer_shapes(args.layers_of or tuple(MODEL_LAYERS))
        batches, dtypes = args.batch or [8, 32], args.dtype or ["float32", "bfloat16"]
        min_time, max_reps = args.min_time, args.max_reps
        model_options = {
            "batch": args.model_batch,
            "image_size": args.model_image_size,
            "width_multiplier": 1.0,
            "num_classes": 1000,
        }
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
    from sepconv_jax.export.latency import RUNTIMES

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
    parser.add_argument(
        "--model-batch", type=int, default=8, help="batch of the model steps and of --models"
    )
    parser.add_argument(
        "--model-image-size",
        type=int,
        default=224,
        help="image size of the model steps and of --models",
    )
    parser.add_argument(
        "--models",
        nargs="*",
        metavar="MODEL",
        help="instead: inference and training images/s of whole models (default: "
        f"{' '.join(bench_models.ZOO)}), ours (--model-impls) against the same timm model "
        "in PyTorch; writes models.json, models.md and models.png",
    )
    parser.add_argument(
        "--export",
        action="store_true",
        help="instead: batch-1 latency of MobileNetV2, MobileNetV1 and the demo's network in "
        "JAX, onnxruntime (float32, int8) and LiteRT; writes export.json and export.md",
    )
    parser.add_argument(
        "--export-runs", type=int, default=50, help="timed calls per runtime with --export"
    )
    parser.add_argument(
        "--export-runtimes",
        nargs="+",
        choices=RUNTIMES,
        help="runtimes timed with --export (default: all)",
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
