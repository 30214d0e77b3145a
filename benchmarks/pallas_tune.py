"""Tunes and measures the Pallas depthwise kernels on a GPU, against the other impls.

Usage (from the repository root)::

    python benchmarks/pallas_tune.py --out benchmarks/results/gpu-tune   # one GPU, < 4 min
    python benchmarks/pallas_tune.py --quick --out /tmp/tune             # any machine, seconds

Two parts, both at batch 64 on the depthwise layers of MobileNetV2 and EfficientNet-B0
(``MODEL_LAYERS``: 21 layers, 19 distinct depthwise shapes), in float32 and bfloat16:

* **layers**: every shape, forward (``fwd``) and forward plus both gradients
  (``fwd+bwd``), for ``impl="xla"``, ``impl="shift"``, ``impl="pallas"`` (its default
  blocks) and PyTorch's CUDA depthwise convolution (``conv2d(groups=C)`` on
  ``channels_last`` tensors, timed first, in a separate process that never puts JAX
  on the GPU), when PyTorch sees a GPU.
* **sweep**: a few representative shapes, each map on its own (``fwd``, the input
  transpose ``dx`` and the kernel transpose ``dk``), for every Pallas block candidate
  of :data:`CANDIDATES` beside ``xla`` and ``shift``.

Each time is the median over ``--reps`` batches of ``--inner`` back-to-back calls
of a jitted, compiled function (after a warm-up call), per call; beside it the
achieved bandwidth for the bytes a perfect kernel moves once: inputs, outputs and
weights (``fwd``: x, kernel, y; ``dx``: g, kernel, dx; ``dk``: x, g, dkernel;
``fwd+bwd``: all six). The smallest layers are bounded by the per-call launch cost,
not by bandwidth. Compilation is counted: functions are lowered one by one (the
block settings are read when lowering) and compiled on a thread pool, and the
compile times are recorded. ``--budget`` seconds cap the whole run: work left when
it runs out is recorded as skipped (jobs go in batches of ``--batch-jobs``, the
most important first, and the budget is checked between and within batches, so a
run ends at most one batch's lowering and compilation after it).

Writes ``tune.json`` and ``tune.md`` to ``--out`` and prints the Markdown.
``--quick`` runs one tiny shape in float32 at batch 2 (on CPU the Pallas kernels run
in interpret mode), as the test suite does.
"""

from __future__ import annotations

import os

# JAX must not take most of the GPU's memory up front: PyTorch measures in another
# process on the same GPU.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import concurrent.futures
import dataclasses
import datetime
import functools
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sepconv_jax import ops
from sepconv_jax.kernels import pallas_triton
from sepconv_jax.kernels.pallas_triton import Blocks

try:  # the shape table moves with the benchmark application
    from sepconv_jax.apps.bench import MODEL_LAYERS
except ImportError:
    from sepconv_jax.bench import MODEL_LAYERS

BATCH = 64
DTYPES = ("float32", "bfloat16")
#: (size, channels, kernel, stride) of the sweep's shapes: the largest stride-1 and
#: stride-2 layers, a mid-size 3x3 and a 5x5 one, and a late 5x5 stride-2 layer.
SWEEP_SHAPES = ((112, 32, 3, 1), (112, 96, 3, 2), (56, 144, 3, 1), (28, 240, 5, 1), (14, 672, 5, 2))
QUICK_SHAPES = ((8, 8, 3, 2),)

#: Block candidates per map (name -> Blocks); ``default`` is what the kernel uses.
CANDIDATES: dict[str, dict[str, Blocks]] = {
    "forward": {
        "default": pallas_triton.BLOCKS["forward"],
        "2x16": Blocks(rows=2, cols=16),
        "8x8-w8": Blocks(rows=8, cols=8, num_warps=8),
        "4x8-c64-w8": Blocks(rows=4, cols=8, channels=64, num_warps=8),
    },
    "input_transpose": {
        "default": pallas_triton.BLOCKS["input_transpose"],
        "2x16": Blocks(rows=2, cols=16),
        "8x8-w8": Blocks(rows=8, cols=8, num_warps=8),
    },
    "kernel_transpose": {
        "default": pallas_triton.BLOCKS["kernel_transpose"],
        "1x16": Blocks(rows=1, cols=16, programs=1024),
        "2x8-p4096": Blocks(rows=2, cols=8, programs=4096),
        "2x8-s3": Blocks(rows=2, cols=8, num_stages=3, programs=1024),
    },
}
QUICK_CANDIDATES = {
    name: dict(list(c.items())[: 2 if name == "forward" else 1]) for name, c in CANDIDATES.items()
}
MAP_OF_PASS = {"fwd": "forward", "dx": "input_transpose", "dk": "kernel_transpose"}
IMPLS = ("xla", "shift", "pallas")


@dataclasses.dataclass(frozen=True)
class Shape:
    size: int
    channels: int
    kernel: int
    stride: int

    @property
    def name(self) -> str:
        return f"{self.size}x{self.size} C{self.channels} k{self.kernel} s{self.stride}"

    @property
    def out_size(self) -> int:
        return -(-self.size // self.stride)


@dataclasses.dataclass
class Job:
    """One function to lower, compile and time."""

    section: str  # "layers" or "sweep"
    shape: Shape
    dtype: str
    pass_name: str  # "fwd", "dx", "dk" or "fwd+bwd"
    impl: str
    variant: str = ""  # a Pallas block candidate's name
    blocks: dict[str, Blocks] = dataclasses.field(default_factory=dict)
    lowered: Any = None
    compiled: Any = None
    result: dict = dataclasses.field(default_factory=dict)

    @property
    def column(self) -> str:
        return f"{self.impl}:{self.variant}" if self.variant else self.impl


def depthwise_shapes() -> list[Shape]:
    """The distinct depthwise shapes of ``MODEL_LAYERS``, in order."""
    seen: dict[Shape, None] = {}
    for layers in MODEL_LAYERS.values():
        for size, channels, kernel, stride, _ in layers:
            seen.setdefault(Shape(size, channels, kernel, stride), None)
    return list(seen)


def _dims(shape: Shape, batch: int) -> list[tuple[int, ...]]:
    """Shapes of ``x``, the kernel and the cotangent ``g``."""
    return [
        (batch, shape.size, shape.size, shape.channels),
        (shape.kernel, shape.kernel, 1, shape.channels),
        (batch, shape.out_size, shape.out_size, shape.channels),
    ]


def _data(shape: Shape, batch: int) -> list[np.ndarray]:
    """Uniform float32 data for ``x``, the kernel and ``g`` (NumPy: no compilation)."""
    rng = np.random.default_rng(0)
    return [rng.random(d, dtype=np.float32) - np.float32(0.5) for d in _dims(shape, batch)]


def moved_bytes(shape: Shape, dtype: str, batch: int, pass_name: str) -> int:
    """Bytes a perfect kernel reads and writes once (see the module docstring)."""
    itemsize = np.dtype(jnp.dtype(dtype)).itemsize
    x = batch * shape.size**2 * shape.channels
    y = batch * shape.out_size**2 * shape.channels
    w = shape.kernel**2 * shape.channels
    elements = {"fwd": x + w + y, "dx": y + w + x, "dk": x + y + w, "fwd+bwd": 2 * (x + y + w)}
    return elements[pass_name] * itemsize


def _function(shape: Shape, pass_name: str, impl: str) -> Callable:
    def conv(x, kernel):
        return ops.depthwise_conv(x, kernel, strides=shape.stride, padding="SAME", impl=impl)

    if pass_name == "fwd":
        return lambda x, kernel, g: conv(x, kernel)
    if pass_name == "dx":
        return lambda x, kernel, g: jax.vjp(lambda x: conv(x, kernel), x)[1](g)[0]
    if pass_name == "dk":
        return lambda x, kernel, g: jax.vjp(lambda k: conv(x, k), kernel)[1](g)[0]

    def forward_backward(x, kernel, g):
        y, vjp = jax.vjp(conv, x, kernel)
        return y, *vjp(g)

    return forward_backward


def plan(args) -> list[Job]:
    """Every job, the most important first (what a short budget keeps)."""
    shapes = [Shape(*s) for s in QUICK_SHAPES] if args.quick else depthwise_shapes()
    sweep = [Shape(*s) for s in (QUICK_SHAPES[:1] if args.quick else SWEEP_SHAPES)]
    candidates = QUICK_CANDIDATES if args.quick else CANDIDATES
    jobs = []
    for dtype in args.dtypes:
        for shape in shapes:
            for pass_name in ("fwd", "fwd+bwd"):
                jobs += [Job("layers", shape, dtype, pass_name, impl) for impl in args.impls]
    for dtype in () if args.no_sweep else args.dtypes:
        for shape in sweep:
            for pass_name, map_name in MAP_OF_PASS.items():
                jobs += [
                    Job("sweep", shape, dtype, pass_name, impl)
                    for impl in IMPLS[:2]
                    if impl in args.impls
                ]
                for name, b in candidates[map_name].items():
                    jobs.append(
                        Job("sweep", shape, dtype, pass_name, "pallas", name, {map_name: b})
                    )
    return jobs


# ----------------------------------------------------------------------------- timing


def _time(call: Callable[[], Any], reps: int, inner: int) -> float:
    """Median over ``reps`` batches of ``inner`` calls, per call, after a warm-up."""
    jax.block_until_ready(call())
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(inner):
            out = call()
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def _torch_call(torch, shape: Shape, dtype: str, pass_name: str, batch: int) -> Callable:
    """A no-argument callable running PyTorch's depthwise conv (and its backward)."""
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, shape.channels, shape.size, shape.size, generator=gen, device=device)
    x = x.to(getattr(torch, dtype)).contiguous(memory_format=torch.channels_last)
    w = torch.randn(shape.channels, 1, shape.kernel, shape.kernel, generator=gen, device=device)
    w = w.to(getattr(torch, dtype))
    opts = dict(stride=shape.stride, padding=shape.kernel // 2, groups=shape.channels)
    conv = torch.nn.functional.conv2d
    if pass_name == "fwd":

        def call():
            with torch.no_grad():
                return conv(x, w, **opts)

        return call
    x.requires_grad_(True)
    w.requires_grad_(True)
    with torch.no_grad():
        g = torch.randn_like(conv(x, w, **opts))

    def call():
        x.grad = w.grad = None
        conv(x, w, **opts).backward(g)

    return call


def _torch_times(jobs: list[tuple[Shape, str, str]], batch: int, reps: int, inner: int) -> dict:
    """PyTorch CUDA depthwise times, run in a child process that never uses JAX."""
    try:
        import torch
    except ImportError:
        return {"error": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"error": "torch sees no GPU"}
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "times": {}}
    for shape, dtype, pass_name in jobs:
        key = f"{shape.name}|{dtype}|{pass_name}"
        try:
            call = _torch_call(torch, shape, dtype, pass_name, batch)
            call()
            torch.cuda.synchronize()
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                for _ in range(inner):
                    call()
                torch.cuda.synchronize()
                times.append((time.perf_counter() - start) / inner)
            out["times"][key] = statistics.median(times)
        except (RuntimeError, NotImplementedError) as e:  # no kernel for this dtype
            out["times"][key] = repr(e)[:200]
    return out


def measure_torch(jobs: list[Job], args) -> dict:
    keys = sorted(
        {(j.shape, j.dtype, j.pass_name) for j in jobs if j.section == "layers"},
        key=lambda k: (k[1], k[0].name, k[2]),
    )
    if args.no_torch or jax.default_backend() != "gpu":
        return {"error": "disabled" if args.no_torch else "no GPU for PyTorch"}
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_torch_times, (keys, args.batch, args.reps, args.inner))


# ----------------------------------------------------------------------------- running


def _compile(job: Job) -> None:
    t_compile = time.perf_counter()
    try:
        job.compiled = job.lowered.compile()
    except Exception as e:  # one failing candidate must not stop the sweep
        job.result["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    job.result["compile_s"] = time.perf_counter() - t_compile


def run(args) -> dict:
    start = time.perf_counter()
    deadline = start + args.budget
    jobs = plan(args)
    phases = {}

    torch_result = measure_torch(jobs, args)
    phases["torch_s"] = time.perf_counter() - start

    phases.update(lower_s=0.0, compile_s=0.0, time_s=0.0)
    data: dict[Shape, list[np.ndarray]] = {}  # host data of the latest shape only
    for first in range(0, len(jobs), args.batch_jobs):
        batch = jobs[first : first + args.batch_jobs]
        if time.perf_counter() > deadline:
            for job in batch:
                job.result["skipped"] = "budget"
            continue
        t = time.perf_counter()
        for job in batch:
            fn = _function(job.shape, job.pass_name, job.impl)
            abstract = [jax.ShapeDtypeStruct(d, job.dtype) for d in _dims(job.shape, args.batch)]
            t_lower = time.perf_counter()
            with pallas_triton.blocks(**job.blocks):
                job.lowered = jax.jit(fn).trace(*abstract).lower()
            job.result["lower_s"] = time.perf_counter() - t_lower
        phases["lower_s"] += time.perf_counter() - t

        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.compile_threads) as pool:
            list(pool.map(_compile, batch))
        phases["compile_s"] += time.perf_counter() - t

        t = time.perf_counter()
        for job in batch:
            if job.compiled is None:
                continue
            if time.perf_counter() > deadline:
                job.result["skipped"] = "budget"
                continue
            if job.shape not in data:
                data = {job.shape: _data(job.shape, args.batch)}
            arrays = [jnp.asarray(a).astype(job.dtype) for a in data[job.shape]]
            seconds = _time(functools.partial(job.compiled, *arrays), args.reps, args.inner)
            nbytes = moved_bytes(job.shape, job.dtype, args.batch, job.pass_name)
            job.result.update(ms=seconds * 1e3, gbs=nbytes / seconds / 1e9)
            job.compiled = job.lowered = None  # free the executable
            del arrays
        phases["time_s"] += time.perf_counter() - t
    phases["total_s"] = time.perf_counter() - start

    records = []
    for job in jobs:
        record = dict(
            section=job.section,
            shape=job.shape.name,
            dtype=job.dtype,
            pass_name=job.pass_name,
            impl=job.impl,
            variant=job.variant,
            blocks={k: dataclasses.asdict(v) for k, v in job.blocks.items()},
            bytes=moved_bytes(job.shape, job.dtype, args.batch, job.pass_name),
            **job.result,
        )
        records.append(record)
    for key, value in (torch_result.get("times") or {}).items():
        name, dtype, pass_name = key.split("|")
        shape = next(j.shape for j in jobs if j.shape.name == name)
        record = dict(
            section="layers",
            shape=name,
            dtype=dtype,
            pass_name=pass_name,
            impl="torch",
            variant="",
            blocks={},
            bytes=moved_bytes(shape, dtype, args.batch, pass_name),
        )
        if isinstance(value, float):
            record.update(ms=value * 1e3, gbs=record["bytes"] / value / 1e9)
        else:
            record["error"] = value
        records.append(record)
    return dict(
        machine=dict(
            date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            device=jax.devices()[0].device_kind,
            backend=jax.default_backend(),
            jax=jax.__version__,
            python=platform.python_version(),
            cores=os.cpu_count(),
            torch={k: v for k, v in torch_result.items() if k != "times"},
        ),
        settings=dict(
            batch=args.batch,
            dtypes=list(args.dtypes),
            reps=args.reps,
            inner=args.inner,
            budget_s=args.budget,
            peak_gbs=args.peak_gbs,
            quick=args.quick,
            impls=list(args.impls),
            compile_threads=args.compile_threads,
            sweep=not args.no_sweep,
            default_blocks={k: dataclasses.asdict(v) for k, v in pallas_triton.BLOCKS.items()},
        ),
        phases=phases,
        records=records,
    )


# ----------------------------------------------------------------------------- report


def _cell(record: dict | None, peak: float) -> str:
    if record is None:
        return "-"
    if "ms" not in record:
        return "skipped" if "skipped" in record else "error"
    return f"{record['ms']:.3f} ({record['gbs']:.0f} GB/s, {100 * record['gbs'] / peak:.0f}%)"


def _index(records):
    return {
        (r["section"], r["shape"], r["dtype"], r["pass_name"], r["impl"], r["variant"]): r
        for r in records
    }


def _ratio(a: dict | None, b: dict | None) -> float | None:
    if a and b and "ms" in a and "ms" in b:
        return a["ms"] / b["ms"]
    return None


def summary(result: dict) -> list[str]:
    """The figures the targets are stated in, from the layers table."""
    records, peak = result["records"], result["settings"]["peak_gbs"]
    index = _index(records)
    lines = []
    for dtype in result["settings"]["dtypes"]:
        shapes = sorted({r["shape"] for r in records if r["section"] == "layers"})

        def get(s, p, impl, dtype=dtype):
            return index.get(("layers", s, dtype, p, impl, ""))

        big = [s for s in shapes if int(s.split("x")[0]) >= 56]
        fwd = [get(s, "fwd", "pallas") for s in big]
        fwd = [100 * r["gbs"] / peak for r in fwd if r and "gbs" in r]
        vs_xla = [_ratio(get(s, "fwd+bwd", "xla"), get(s, "fwd+bwd", "pallas")) for s in shapes]
        vs_torch = [_ratio(get(s, "fwd+bwd", "pallas"), get(s, "fwd+bwd", "torch")) for s in shapes]
        med = lambda v: (
            statistics.median([x for x in v if x is not None])
            if any(x is not None for x in v)
            else None
        )
        fmt = lambda v, unit: "n/a" if v is None else f"{v:.2f}{unit}"
        lines.append(
            f"- {dtype}: pallas forward on the 56x56 and larger shapes: "
            f"{fmt(min(fwd) if fwd else None, '%')} to {fmt(max(fwd) if fwd else None, '%')} "
            f"of {peak:.0f} GB/s; fwd+bwd speed-up over xla (median): {fmt(med(vs_xla), 'x')}; "
            f"pallas fwd+bwd time / PyTorch's (median): {fmt(med(vs_torch), 'x')}"
        )
    sweep = [r for r in records if r["section"] == "sweep" and r["impl"] == "pallas"]
    for map_pass in ("fwd", "dx", "dk"):
        by_variant: dict[str, list[float]] = {}
        for r in sweep:
            default = index.get(("sweep", r["shape"], r["dtype"], map_pass, "pallas", "default"))
            if r["pass_name"] == map_pass and "ms" in r and default and "ms" in default:
                by_variant.setdefault(r["variant"], []).append(math.log(r["ms"] / default["ms"]))
        if by_variant:
            ranked = sorted((math.exp(statistics.mean(v)), k) for k, v in by_variant.items())
            lines.append(
                f"- sweep {map_pass}: time relative to the default blocks (geometric mean): "
                + ", ".join(f"{k} {v:.2f}" for v, k in ranked)
            )
    return lines


def markdown(result: dict) -> str:
    records, peak = result["records"], result["settings"]["peak_gbs"]
    index = _index(records)
    m, s = result["machine"], result["settings"]
    out = [
        "## Pallas depthwise kernels: tuning run",
        "",
        f"{m['device']} ({m['backend']}), jax {m['jax']}, {m['date']}; batch {s['batch']}; "
        f"median of {s['reps']} x {s['inner']} calls; ms per call (achieved GB/s, % of "
        f"{peak:.0f} GB/s). Phases (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in result["phases"].items()),
        "",
        "### Summary",
        "",
        *summary(result),
        "",
        "### Layers",
        "",
        "| shape | dtype | pass | xla | shift | pallas | torch | xla/pallas | torch/pallas |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = sorted(
        {(r["shape"], r["dtype"], r["pass_name"]) for r in records if r["section"] == "layers"},
        key=lambda k: (k[1], -int(k[0].split("x")[0]), k[0], k[2]),
    )
    for shape, dtype, pass_name in keys:
        cell = {i: index.get(("layers", shape, dtype, pass_name, i, "")) for i in (*IMPLS, "torch")}
        ratios = [_ratio(cell["xla"], cell["pallas"]), _ratio(cell["torch"], cell["pallas"])]
        out.append(
            f"| {shape} | {dtype} | {pass_name} | "
            + " | ".join(_cell(cell[i], peak) for i in (*IMPLS, "torch"))
            + " | "
            + " | ".join("-" if r is None else f"{r:.2f}" for r in ratios)
            + " |"
        )
    sweep = [r for r in records if r["section"] == "sweep"]
    if sweep:
        out += ["", "### Sweep (each map alone)", ""]
        columns = list(dict.fromkeys((r["impl"], r["variant"]) for r in sweep))
        names = [f"{i}:{v}" if v else i for i, v in columns]
        out += [
            "| shape | dtype | map | " + " | ".join(names) + " |",
            "| --- | --- | --- |" + " --- |" * len(names),
        ]
        keys = list(dict.fromkeys((r["shape"], r["dtype"], r["pass_name"]) for r in sweep))
        for shape, dtype, pass_name in keys:
            out.append(
                f"| {shape} | {dtype} | {pass_name} | "
                + " | ".join(
                    _cell(index.get(("sweep", shape, dtype, pass_name, i, v)), peak)
                    for i, v in columns
                )
                + " |"
            )
    errors = [r for r in records if "error" in r]
    if errors:
        out += ["", "### Errors", ""]
        out += [
            f"- {r['shape']} {r['dtype']} {r['pass_name']} {r['impl']}"
            f"{':' + r['variant'] if r['variant'] else ''}: {r['error']}"
            for r in errors
        ]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for tune.json, tune.md")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, float32, batch 2")
    parser.add_argument("--batch", type=int, default=None, help=f"default {BATCH} (2 with --quick)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=None)
    parser.add_argument("--reps", type=int, default=None, help="timed batches (default 7, 2 quick)")
    parser.add_argument("--inner", type=int, default=None, help="calls per batch (5, 1 quick)")
    parser.add_argument(
        "--budget", type=float, default=200.0, help="seconds for the run (checked per batch)"
    )
    parser.add_argument(
        "--peak-gbs",
        type=float,
        default=3000.0,
        help="HBM bandwidth for the %% column (H100 SXM: ~3000 GB/s measured)",
    )
    parser.add_argument("--compile-threads", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument(
        "--batch-jobs", type=int, default=48, help="jobs lowered, compiled and timed together"
    )
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument(
        "--impls", nargs="+", choices=IMPLS, default=IMPLS, help="impls to time (default all)"
    )
    parser.add_argument("--no-sweep", action="store_true", help="only the layers table")
    args = parser.parse_args(argv)
    args.batch = args.batch or (2 if args.quick else BATCH)
    args.dtypes = tuple(args.dtypes or (("float32",) if args.quick else DTYPES))
    args.reps = args.reps or (2 if args.quick else 7)
    args.inner = args.inner or (1 if args.quick else 5)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (args.out / "tune.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
