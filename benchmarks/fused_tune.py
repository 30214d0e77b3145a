"""The fused separable kernel against the unfused pair, on a GPU.

For every distinct separable layer (depthwise ``k x k`` with stride ``s`` on ``C``
channels, then the 1x1 projection to ``N``) of MobileNetV2 and EfficientNet-B0 at
224x224 input, at batch 64, in float32 and bfloat16, it times side by side in one
run:

* ``pair``: ``separable_conv(impl="xla")``, XLA's grouped convolution then the 1x1
  convolution (the unfused pair, the intermediate written to memory and read back);
* ``fused[...]``: the fused Pallas kernel (:mod:`sepconv_jax.kernels.pallas_fused`)
  with each candidate tile size (``--candidates``), forward only;

and then forward+backward (``jax.grad`` of the summed output w.r.t. the input and
both kernels) for the pair and for the fused layer with the tiles that were fastest
forward for that shape. The fused layer's backward pass is unfused: the depthwise
transposes of the kernel ``"auto"`` picks (on GPU, ``"xla"``, the pair's) and 1x1
steps, so the two differ in the forward pass and the recomputed intermediate. Each row has
the fused/pair speedup, the fused forward's effective bandwidth (input, output and
weights moved once, over its time) and the largest difference between the fused and
the pair's outputs relative to the output's scale, as a sanity check of the compiled
kernel.

Usage (from the repository root, ``PYTHONPATH=.``)::

    python benchmarks/fused_tune.py --out benchmarks/results/gpu      # on a GPU
    python benchmarks/fused_tune.py --quick --out /tmp/fused          # CPU smoke run

It prints a table and writes ``fused_tune.json`` (every measurement) and
``fused_tune.md`` to ``--out``. ``--budget`` bounds the wall time (compiles
included): shapes not reached in time are listed as skipped. Times are the median of
``--repeats`` timings of ``--inner`` back-to-back calls after compilation. On CPU the
fused kernel runs in Pallas interpret mode, so ``--quick`` there checks the code
paths, not the speed.
"""

from __future__ import annotations

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
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sepconv_jax import _spec, ops
from sepconv_jax.kernels import pallas_fused
from sepconv_jax.kernels import separable as sep_op

try:  # the table's home moves with the applications
    from sepconv_jax.apps.bench import MODEL_LAYERS
except ImportError:
    from sepconv_jax.bench import MODEL_LAYERS

#: Tiny layers for ``--quick``: (input size, C, k, s, N).
QUICK_LAYERS = ((8, 16, 3, 1, 16), (6, 24, 5, 2, 20))

#: Default tile candidates: (positions, channels, out, num_warps, num_stages).
CANDIDATES = ((64, 32, 128, 4, 2), (128, 32, 128, 8, 2))

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def layers(quick: bool) -> list[tuple[int, int, int, int, int]]:
    """The distinct (size, C, k, s, N) of MobileNetV2 and EfficientNet-B0, in order."""
    if quick:
        return list(QUICK_LAYERS)
    seen: dict[tuple[int, ...], None] = {}
    for shapes in MODEL_LAYERS.values():
        for shape in shapes:
            seen.setdefault(tuple(shape), None)
    return list(seen)


def _name(shape) -> str:
    size, c, k, s, n = shape
    return f"{size}x{size} C{c} k{k} s{s} N{n}"


def _blocks_name(blocks: pallas_fused.Blocks) -> str:
    return (
        f"p{blocks.positions}/c{blocks.channels}/o{blocks.out}/"
        f"w{blocks.num_warps}/s{blocks.num_stages}"
    )


def time_call(fn, args, *, repeats: int, inner: int) -> float:
    """Median seconds per call of the compiled ``fn(*args)`` (one warm-up call first)."""
    jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = None
        for _ in range(inner):
            out = fn(*args)
        jax.block_until_ready(out)
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def _arrays(shape, batch: int, dtype):
    """Input, depthwise and pointwise kernels of one layer (O(1) outputs)."""
    size, c, k, _, n = shape
    kx, kd, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (batch, size, size, c), dtype)
    dk = (jax.random.normal(kd, (k, k, 1, c), jnp.float32) / k).astype(dtype)
    pk = (jax.random.normal(kp, (c, n), jnp.float32) / math.sqrt(c)).astype(dtype)
    return x, dk, pk


def _programs(shape, batch: int, dtype, candidates):
    """The jitted programs of one layer by name: the pair and each candidate, forward
    and forward+backward."""
    s, n = shape[3], shape[4]
    x, dk, _ = jax.eval_shape(functools.partial(_arrays, shape, batch, dtype))
    spec = _spec.make_spec(
        x,
        dk,
        groups=None,
        strides=s,
        padding="SAME",
        dilation=1,
        padding_mode="zeros",
        data_format="channels_last",
    )

    def pair(x, dk, pk):
        return ops.separable_conv(x, dk, pk, strides=s, impl="xla")

    def fused(blocks, x, dk, pk):
        flat = sep_op.separable(x, dk, pk, spec, impl="fused", blocks=blocks)
        return flat.reshape(batch, *spec.out_spatial, n)

    def with_grad(f):
        def loss(x, dk, pk):
            return jnp.sum(f(x, dk, pk).astype(jnp.float32))

        return jax.grad(loss, argnums=(0, 1, 2))

    programs = {("pair", "fwd"): jax.jit(pair), ("pair", "fwd+bwd"): jax.jit(with_grad(pair))}
    for blocks in candidates:
        f = functools.partial(fused, blocks)
        programs[(_blocks_name(blocks), "fwd")] = jax.jit(f)
        programs[(_blocks_name(blocks), "fwd+bwd")] = jax.jit(with_grad(f))
    return programs


def compile_all(configs, batch: int, candidates, workers: int) -> dict:
    """Lowers every program (in this thread) and compiles them in a pool of threads:
    XLA and Triton compile outside Python's lock, so the compiles overlap."""
    lowered = {}
    for config in configs:
        dtype_name, shape = config
        structs = jax.eval_shape(functools.partial(_arrays, shape, batch, DTYPES[dtype_name]))
        for key, program in _programs(shape, batch, DTYPES[dtype_name], candidates).items():
            lowered[(config, *key)] = program.lower(*structs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {key: pool.submit(low.compile) for key, low in lowered.items()}
        return {key: future.result() for key, future in futures.items()}


def run(
    *,
    quick: bool,
    batch: int,
    dtypes: list[str],
    candidates: list[pallas_fused.Blocks],
    repeats: int,
    inner: int,
    budget: float,
    workers: int,
) -> dict[str, Any]:
    """Compiles and times one layer at a time (its programs compiled together) until
    ``budget`` seconds are spent; returns the JSON-ready results."""
    start = time.perf_counter()
    configs = [(d, shape) for d in dtypes for shape in layers(quick)]
    compile_seconds = 0.0
    print(HEADER, flush=True)
    rows, skipped = [], []
    names = [_blocks_name(b) for b in candidates]
    for config in configs:
        dtype_name, shape = config
        if time.perf_counter() - start > budget:
            skipped.append({"layer": _name(shape), "dtype": dtype_name})
            continue
        t_compile = time.perf_counter()
        compiled = compile_all([config], batch, candidates, workers)
        compile_seconds += time.perf_counter() - t_compile
        dtype = DTYPES[dtype_name]
        args = _arrays(shape, batch, dtype)
        row: dict[str, Any] = {"layer": _name(shape), "dtype": dtype_name, "batch": batch}
        row["channels"] = shape[1]
        pair_fwd = compiled[(config, "pair", "fwd")]
        reference = np.asarray(pair_fwd(*args), np.float32)
        scale = float(np.abs(reference).max()) or 1.0
        row["pair_fwd_s"] = time_call(pair_fwd, args, repeats=repeats, inner=inner)
        fused_times, worst = {}, 0.0
        for name in names:
            f = compiled[(config, name, "fwd")]
            got = np.asarray(f(*args), np.float32)
            worst = max(worst, float(np.abs(got - reference).max()) / scale)
            fused_times[name] = time_call(f, args, repeats=repeats, inner=inner)
        best = min(fused_times, key=fused_times.get)
        row["fused_fwd_s"] = fused_times
        row["best_blocks"] = best
        row["fwd_speedup"] = row["pair_fwd_s"] / fused_times[best]
        row["max_rel_diff"] = worst
        moved = (args[0].size + reference.size + args[1].size + args[2].size) * jnp.dtype(
            dtype
        ).itemsize
        row["fused_fwd_gbps"] = moved / fused_times[best] / 1e9
        row["pair_fwdbwd_s"] = time_call(
            compiled[(config, "pair", "fwd+bwd")], args, repeats=repeats, inner=inner
        )
        row["fused_fwdbwd_s"] = time_call(
            compiled[(config, best, "fwd+bwd")], args, repeats=repeats, inner=inner
        )
        row["fwdbwd_speedup"] = row["pair_fwdbwd_s"] / row["fused_fwdbwd_s"]
        rows.append(row)
        print(_format_row(row), flush=True)
    device = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": getattr(device, "device_kind", str(device)),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "batch": batch,
        "quick": quick,
        "candidates": [dataclasses.asdict(b) for b in candidates],
        "repeats": repeats,
        "inner": inner,
        "compile_seconds": compile_seconds,
        "seconds": time.perf_counter() - start,
        "rows": rows,
        "skipped": skipped,
        "summary": summarize(rows),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median speedups per dtype and pass, over all layers and over C <= 256."""
    out: dict[str, Any] = {}
    for dtype in sorted({r["dtype"] for r in rows}):
        picked = [r for r in rows if r["dtype"] == dtype]
        small = [r for r in picked if r["channels"] <= 256]
        out[dtype] = {
            "fwd_median": statistics.median(r["fwd_speedup"] for r in picked),
            "fwdbwd_median": statistics.median(r["fwdbwd_speedup"] for r in picked),
            "fwd_median_c_le_256": (
                statistics.median(r["fwd_speedup"] for r in small) if small else None
            ),
            "fwd_min": min(r["fwd_speedup"] for r in picked),
            "fwd_max": max(r["fwd_speedup"] for r in picked),
        }
    return out


HEADER = (
    "| layer | dtype | pair fwd ms | fused fwd ms (best tiles) | fwd speedup | fused GB/s "
    "| pair fwd+bwd ms | fused fwd+bwd ms | fwd+bwd speedup | max rel diff |"
)


def _format_row(row: dict[str, Any]) -> str:
    best = row["best_blocks"]
    return (
        f"| {row['layer']} | {row['dtype']} | {1e3 * row['pair_fwd_s']:.3f} "
        f"| {1e3 * row['fused_fwd_s'][best]:.3f} ({best}) | {row['fwd_speedup']:.2f}x "
        f"| {row['fused_fwd_gbps']:.1f} | {1e3 * row['pair_fwdbwd_s']:.3f} "
        f"| {1e3 * row['fused_fwdbwd_s']:.3f} | {row['fwdbwd_speedup']:.2f}x "
        f"| {row['max_rel_diff']:.1e} |"
    )


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Fused separable kernel vs the unfused pair",
        "",
        f"- device: {result['device']} ({result['backend']}), jax {result['jax']}, "
        f"{result['date']}; batch {result['batch']}; {result['seconds']:.0f} s in all, "
        f"{result['compile_seconds']:.0f} s of it compiling",
        "- tile candidates (positions/channels/out/warps/stages): "
        + ", ".join(_blocks_name(pallas_fused.Blocks(**c)) for c in result["candidates"]),
        f"- times: median of {result['repeats']} timings of {result['inner']} calls",
        "",
        HEADER,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_format_row(r) for r in result["rows"]]
    lines += ["", "## Summary (fused / pair speedups, median over layers)", ""]
    lines += ["| dtype | fwd | fwd, C <= 256 | fwd+bwd | fwd range |", "|---|---:|---:|---:|---|"]
    for dtype, s in result["summary"].items():
        small = "n/a" if s["fwd_median_c_le_256"] is None else f"{s['fwd_median_c_le_256']:.2f}x"
        lines.append(
            f"| {dtype} | {s['fwd_median']:.2f}x | {small} | {s['fwdbwd_median']:.2f}x "
            f"| {s['fwd_min']:.2f}x-{s['fwd_max']:.2f}x |"
        )
    if result["skipped"]:
        lines += ["", "Not reached within the time budget: "]
        lines += [f"- {s['layer']} ({s['dtype']})" for s in result["skipped"]]
    return "\n".join(lines) + "\n"


def _candidate(text: str) -> pallas_fused.Blocks:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 5:
        raise argparse.ArgumentTypeError(
            f"a candidate is positions,channels,out,num_warps,num_stages (5 ints), got {text!r}"
        )
    try:
        return pallas_fused.Blocks(*values)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for fused_tune.json/.md")
    parser.add_argument("--quick", action="store_true", help="two tiny layers, batch 2")
    parser.add_argument("--batch", type=int, default=None, help="default 64 (2 with --quick)")
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=list(DTYPES))
    parser.add_argument(
        "--candidates",
        nargs="+",
        type=_candidate,
        default=None,
        help="tiles as positions,channels,out,num_warps,num_stages",
    )
    parser.add_argument("--repeats", type=int, default=None, help="default 7 (1 with --quick)")
    parser.add_argument("--inner", type=int, default=None, help="default 10 (1 with --quick)")
    parser.add_argument("--budget", type=float, default=170.0, help="seconds, compiles included")
    parser.add_argument("--workers", type=int, default=16, help="threads that compile")
    args = parser.parse_args(argv)
    candidates = args.candidates or [pallas_fused.Blocks(*c) for c in CANDIDATES]
    if args.quick:
        candidates = candidates[:1]
    result = run(
        quick=args.quick,
        batch=args.batch or (2 if args.quick else 64),
        dtypes=args.dtypes,
        candidates=candidates,
        repeats=args.repeats or (1 if args.quick else 7),
        inner=args.inner or (1 if args.quick else 10),
        budget=args.budget,
        workers=args.workers,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fused_tune.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "fused_tune.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
