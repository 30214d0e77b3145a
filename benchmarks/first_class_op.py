"""The depthwise primitives against the code path they replaced, and forward mode.

Three measurements on the MobileNetV2 / EfficientNet-B0 depthwise shapes (224x224
input, batch 8 by default), each taken side by side in one run:

1. **Forward+backward, before vs after.** "before" is the code path the primitives
   replaced, rebuilt here: for ``shift``, a ``jax.custom_vjp`` around the shift
   kernel's forward map whose backward runs its two transposes (what
   ``kernels/shift.py`` was); for ``xla``, ``lax.conv_general_dilated`` with JAX's own
   gradient. "after" is ``depthwise_conv(impl=...)`` through the primitives.
2. **Forward mode**: ``jax.jvp`` of ``depthwise_conv`` per impl (tangents in both the
   input and the kernel). Before the primitives, ``shift`` had none.
3. **vmap over kernels** (per-example weights, 8 examples each with its own kernel):
   the primitives fold the examples into the channels (one depthwise conv over
   ``8 * C`` channels) for every impl; timed per impl.

Every variant of a shape is compiled first, then the variants are timed in turns
(``--rounds`` rounds, one call each per round) and each keeps its best time, so load
from other processes hits all of them alike. Writes ``first_class_op.json`` and
``first_class_op.md`` to ``--out`` and prints the tables.

Usage::

    python benchmarks/first_class_op.py --out benchmarks/results/first_class_op
    python benchmarks/first_class_op.py --quick   # tiny shapes, seconds
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sepconv_jax import _spec, depthwise_conv
from sepconv_jax.apps.bench import QUICK_LAYERS, Layer, layer_shapes
from sepconv_jax.kernels import shift
from sepconv_jax.kernels import xla as xla_kernel

# ----------------------------------------------------------------------------- "before"


def _legacy_shift(x, kernel, spec):
    """The shift kernel as it was: a custom_vjp around the same three maps."""
    maps = dict(platform="cpu", precision=None, preferred_element_type=None)

    @jax.custom_vjp
    def forward(x, kernel):
        return shift.forward(x, kernel, spec, out_dtype=x.dtype, **maps)

    def fwd(x, kernel):
        return forward(x, kernel), (x, kernel)

    def bwd(residuals, g):
        x, kernel = residuals
        return (
            shift.input_transpose(g, kernel, spec, out_dtype=x.dtype, **maps),
            shift.kernel_transpose(x, g, spec, out_dtype=kernel.dtype, **maps),
        )

    forward.defvjp(fwd, bwd)
    return forward(x, kernel)


def _legacy_xla(x, kernel, spec):
    return xla_kernel.conv(x, kernel, spec)


def _spec_of(layer: Layer, batch: int, dtype) -> _spec.ConvSpec:
    return _spec.make_spec(
        jax.ShapeDtypeStruct((batch, layer.size, layer.size, layer.channels), dtype),
        jax.ShapeDtypeStruct((layer.kernel, layer.kernel, 1, layer.channels), dtype),
        groups=None,
        strides=layer.stride,
        padding="SAME",
        dilation=1,
        padding_mode="zeros",
        data_format="channels_last",
    )


# ----------------------------------------------------------------------------- timing


def _fwd_bwd(fn: Callable) -> Callable:
    def run(x, k, g):
        y, vjp = jax.vjp(fn, x, k)
        return y, vjp(g)

    return run


def _jvp(fn: Callable) -> Callable:
    def run(x, k, dx, dk):
        return jax.jvp(fn, (x, k), (dx, dk))

    return run


def _time_side_by_side(variants: dict[str, tuple[Callable, tuple]], rounds: int) -> dict:
    """Best time of each variant over ``rounds`` interleaved calls (after a warm-up)."""
    compiled = {}
    for name, (fn, args) in variants.items():
        exe = jax.jit(fn).lower(*args).compile()
        jax.block_until_ready(exe(*args))  # warm-up
        compiled[name] = (exe, args)
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for name, (exe, args) in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(exe(*args))
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _measure_layer(layer: Layer, batch: int, rounds: int, per_example: int) -> dict:
    dtype = jnp.float32
    keys = jax.random.split(jax.random.key(0), 6)
    s, k, c = layer.size, layer.kernel, layer.channels
    x = jax.random.normal(keys[0], (batch, s, s, c), dtype)
    w = jax.random.normal(keys[1], (k, k, 1, c), dtype) / k
    out = -(-s // layer.stride)
    g = jax.random.normal(keys[2], (batch, out, out, c), dtype)
    dx = jax.random.normal(keys[3], x.shape, dtype)
    dw = jax.random.normal(keys[4], w.shape, dtype)
    spec = _spec_of(layer, batch, dtype)
    flat = dict(strides=layer.stride, padding="SAME")

    def ours(impl):
        return functools.partial(depthwise_conv, impl=impl, **flat)

    legacy = {
        "shift": functools.partial(_legacy_shift, spec=spec),
        "xla": functools.partial(_legacy_xla, spec=spec),
    }
    fwd_bwd = {}
    for impl in ("shift", "xla"):
        fwd_bwd[f"{impl} before"] = (_fwd_bwd(legacy[impl]), (x, w, g))
        fwd_bwd[f"{impl} after"] = (_fwd_bwd(ours(impl)), (x, w, g))
    times = {"fwd+bwd": _time_side_by_side(fwd_bwd, rounds)}
    times["jvp"] = _time_side_by_side(
        {impl: (_jvp(ours(impl)), (x, w, dx, dw)) for impl in ("shift", "xla")}, rounds
    )
    # Per-example kernels: `per_example` examples (of batch 1), each with its own kernel.
    xs = x[:per_example, None] if batch >= per_example else jnp.repeat(x[:1, None], per_example, 0)
    ws = jnp.stack([w * (1 + 0.1 * i) for i in range(per_example)])
    times["vmap kernels"] = _time_side_by_side(
        {impl: (jax.vmap(ours(impl)), (xs, ws)) for impl in ("shift", "xla")}, rounds
    )
    return times


# ----------------------------------------------------------------------------- report


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.2f}"


def _tables(rows: list[dict]) -> str:
    lines = [
        "### Forward+backward: before vs after (ms, best of the rounds)",
        "",
        "| layer | shift before | shift after | after/before | xla before | xla after | after/before |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        t = row["fwd+bwd"]
        lines.append(
            f"| {row['layer']} | {_ms(t['shift before'])} | {_ms(t['shift after'])} | "
            f"{t['shift after'] / t['shift before']:.3f} | {_ms(t['xla before'])} | "
            f"{_ms(t['xla after'])} | {t['xla after'] / t['xla before']:.3f} |"
        )
    for impl in ("shift", "xla"):
        ratios = [r["fwd+bwd"][f"{impl} after"] / r["fwd+bwd"][f"{impl} before"] for r in rows]
        lines.append(
            f"| **{impl}: after/before** | median {statistics.median(ratios):.3f} | "
            f"min {min(ratios):.3f} | max {max(ratios):.3f} | | | |"
        )
    lines += [
        "",
        "### Forward mode (`jax.jvp`, tangents in input and kernel) and vmap over kernels (ms)",
        "",
        "| layer | jvp shift | jvp xla | xla/shift | vmap-kernels shift | vmap-kernels xla | xla/shift |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        j, v = row["jvp"], row["vmap kernels"]
        lines.append(
            f"| {row['layer']} | {_ms(j['shift'])} | {_ms(j['xla'])} | {j['xla'] / j['shift']:.1f} | "
            f"{_ms(v['shift'])} | {_ms(v['xla'])} | {v['xla'] / v['shift']:.1f} |"
        )
    for key in ("jvp", "vmap kernels"):
        ratios = [r[key]["xla"] / r[key]["shift"] for r in rows]
        lines.append(
            f"| **{key}: xla/shift** | median {statistics.median(ratios):.1f} | "
            f"min {min(ratios):.1f} | max {max(ratios):.1f} | | | |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="first-class-op-results")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-example", type=int, default=8, help="kernels in the vmap")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        layers = [Layer(*shape) for shape in QUICK_LAYERS]
        args.rounds, args.batch = 2, 2
    else:
        layers = layer_shapes()
    started = time.perf_counter()
    load_start = os.getloadavg()
    rows = []
    for layer in layers:
        times = _measure_layer(layer, args.batch, args.rounds, args.per_example)
        rows.append({"layer": layer.name, **times})
        t = times["fwd+bwd"]
        print(
            f"{layer.name:>24}  shift after/before {t['shift after'] / t['shift before']:.3f}  "
            f"xla after/before {t['xla after'] / t['xla before']:.3f}",
            flush=True,
        )
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "jax": f"{jax.__version__} ({jax.default_backend()})",
        "batch": args.batch,
        "rounds": args.rounds,
        "per_example": args.per_example,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "first_class_op.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    report = _tables(rows)
    header = (
        f"Run {meta['date']}: {meta['machine']}, jax {meta['jax']}, batch {args.batch}, "
        f"float32, best of {args.rounds} interleaved rounds; load average "
        f"{', '.join(f'{v:.2f}' for v in load_start)} at start, "
        f"{', '.join(f'{v:.2f}' for v in meta['load_average_end'])} at end; "
        f"{meta['seconds']} s.\n\n"
    )
    (out / "first_class_op.md").write_text(header + report)
    print(header + report)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
