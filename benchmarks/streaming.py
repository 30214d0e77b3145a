"""Streaming latency: a step with state against re-running the whole window per chunk.

Two measurements, each variant timed chunk by chunk on the same stream:

1. **One layer**: ``sepconv_jax.streaming.depthwise_conv_step`` (the state holds the
   last ``(k - 1) * d`` input frames) against the naive way, a rolling buffer of the
   last ``W`` input frames re-run through ``depthwise_conv(padding="CAUSAL")`` on
   every chunk, keeping the last ``n`` outputs.
2. **A streamed MatchboxNet-3x1x64** (causal, per-frame features of its last layer):
   ``apply(..., decode=True, mutable=["cache"])`` against the offline model re-run on
   the rolling window of the last ``W`` frames on every chunk.

``W`` is 128 frames: 1.28 s of 10 ms feature frames, the clip length of NeMo's
MatchboxNet configuration (``timesteps: 128``), and the way a non-streaming keyword
spotter runs on a live stream (Rybakov et al., 2020). Both ways start from zeros (the
causal padding), and with ``W`` at least the receptive field plus the chunk they give
the same outputs: the script checks that, and reports the largest difference.

Each chunk is one call of a compiled function, fed from host memory and waited for;
its wall time is measured around that call. Both variants are compiled and warmed up
first, then run over the stream in turns (``--rounds`` rounds of ``--chunks`` chunks
each), and the per-chunk times of all rounds give the median and the 99th percentile.
Mult-adds per chunk come from ``sepconv_jax.cost.count`` on the same functions.
Writes ``streaming.json`` and ``streaming.md`` to ``--out`` and prints the tables.

Usage::

    python benchmarks/streaming.py --out benchmarks/results/streaming
    python benchmarks/streaming.py --quick   # a few chunks, seconds
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sepconv_jax import cost, depthwise_conv, streaming
from sepconv_jax.models import MatchboxNet

WINDOW = 128  # frames: 1.28 s of 10 ms frames, NeMo's MatchboxNet clip
CHUNKS = (1, 4, 16)
#: (channels, kernel, dilation) of the single layers: MatchboxNet's B1 and Conv2
#: (64 and 128 channels) and a QuartzNet-sized 512-channel layer.
LAYERS = ((64, 13, 1), (128, 29, 2), (512, 33, 1))


def _time_streams(
    variants: dict[str, tuple[Callable, Any]], inputs: np.ndarray, chunk: int, rounds: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-chunk wall times and joined outputs of each ``(step, initial carry)`` variant.

    ``step(carry, x_chunk) -> (y_chunk, carry)``, compiled, may donate its carry; the
    variants run the whole stream in turns, ``rounds`` times, each from a fresh copy
    of its initial carry.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs: dict[str, np.ndarray] = {}
    n_chunks = inputs.shape[1] // chunk

    def fresh(carry: Any) -> Any:
        return jax.tree.map(jnp.copy, carry)

    for step, initial in variants.values():  # compile and warm up
        carry = fresh(initial)
        for _ in range(3):
            y, carry = step(carry, inputs[:, :chunk])
            y.block_until_ready()
    for _ in range(rounds):
        for name, (step, initial) in variants.items():
            carry = fresh(initial)
            jax.block_until_ready(carry)
            ys = []
            for i in range(n_chunks):
                x = inputs[:, i * chunk : (i + 1) * chunk]
                start = time.perf_counter()
                y, carry = step(carry, x)
                y.block_until_ready()
                times[name].append(time.perf_counter() - start)
                ys.append(y)
            outputs[name] = np.concatenate([np.asarray(y) for y in ys], axis=1)
    return {k: np.asarray(v) for k, v in times.items()}, outputs


def _summary(seconds: np.ndarray) -> dict[str, float]:
    return {
        "median_us": 1e6 * float(np.median(seconds)),
        "p99_us": 1e6 * float(np.percentile(seconds, 99)),
        "calls": int(seconds.size),
    }


def _measure_layer(
    channels: int, kernel_size: int, dilation: int, chunk: int, n_chunks: int, rounds: int
) -> dict:
    rng = np.random.default_rng(0)
    kernel = jnp.asarray(rng.standard_normal((kernel_size, 1, channels)) / kernel_size, jnp.float32)
    inputs = rng.standard_normal((1, chunk * n_chunks, channels)).astype(np.float32)
    history = (kernel_size - 1) * dilation
    assert WINDOW >= history + chunk, "the naive window must cover the history and the chunk"

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, x):
        return streaming.depthwise_conv_step(state, x, kernel, dilation=dilation)

    @functools.partial(jax.jit, donate_argnums=0)
    def naive(window, x):
        window = jnp.concatenate([window, x], axis=1)[:, x.shape[1] :]
        y = depthwise_conv(window, kernel, dilation=dilation, padding="CAUSAL")
        return y[:, -x.shape[1] :], window

    variants = {
        "streamed": (step, streaming.init_state(inputs, kernel, dilation=dilation)),
        "naive": (naive, jnp.zeros((1, WINDOW, channels), jnp.float32)),
    }

    x0 = inputs[:, :chunk]
    macs = {
        "streamed": cost.count(
            lambda s, x: streaming.depthwise_conv_step(s, x, kernel, dilation=dilation),
            streaming.init_state(inputs, kernel, dilation=dilation),
            x0,
        ).mult_adds,
        "naive": cost.count(
            lambda w, x: naive.__wrapped__(w, x), jnp.zeros((1, WINDOW, channels)), x0
        ).mult_adds,
    }
    times, outputs = _time_streams(variants, inputs, chunk, rounds)
    return {
        "what": f"depthwise C{channels} k{kernel_size}" + (f" d{dilation}" if dilation > 1 else ""),
        "chunk": chunk,
        "streamed": _summary(times["streamed"]),
        "naive": _summary(times["naive"]),
        "mult_adds": macs,
        "max_abs_diff": float(np.abs(outputs["streamed"] - outputs["naive"]).max()),
    }


def _measure_matchboxnet(chunk: int, n_chunks: int, rounds: int) -> dict:
    model = MatchboxNet(blocks=3, repeat=1, channels=64, causal=True, include_top=False)
    rng = np.random.default_rng(1)
    inputs = rng.standard_normal((1, chunk * n_chunks, 64)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, WINDOW, 64)))
    shapes = jax.eval_shape(
        lambda: model.apply(variables, inputs[:, :chunk], decode=True, mutable=["cache"])[1]
    )
    receptive = 1 + 10 + 12 + 14 + 16 + 28 * 2  # Conv1, B1-B3, Conv2 (k - 1) * d, plus one
    assert WINDOW >= receptive - 1 + chunk, "the naive window must cover the receptive field"

    def streamed_fn(cache, x):
        y, cache = model.apply({**variables, **cache}, x, decode=True, mutable=["cache"])
        return y, cache

    def naive_fn(window, x):
        window = jnp.concatenate([window, x], axis=1)[:, x.shape[1] :]
        return model.apply(variables, window)[:, -x.shape[1] :], window

    zero_cache = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    zero_window = jnp.zeros((1, WINDOW, 64), jnp.float32)
    x0 = inputs[:, :chunk]
    macs = {
        "streamed": cost.count(streamed_fn, zero_cache, x0).mult_adds,
        "naive": cost.count(naive_fn, zero_window, x0).mult_adds,
    }
    variants = {
        "streamed": (jax.jit(streamed_fn, donate_argnums=0), zero_cache),
        "naive": (jax.jit(naive_fn, donate_argnums=0), zero_window),
    }
    times, outputs = _time_streams(variants, inputs, chunk, rounds)
    return {
        "what": "MatchboxNet-3x1x64 (causal)",
        "chunk": chunk,
        "streamed": _summary(times["streamed"]),
        "naive": _summary(times["naive"]),
        "mult_adds": macs,
        "max_abs_diff": float(np.abs(outputs["streamed"] - outputs["naive"]).max()),
    }


def _table(rows: list[dict]) -> str:
    lines = [
        "| what | chunk (frames) | streamed median µs | streamed p99 µs | naive median µs | "
        "naive p99 µs | naive / streamed (median) | mult-adds per chunk, streamed / naive | "
        "max difference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s, n, m = r["streamed"], r["naive"], r["mult_adds"]
        lines.append(
            f"| {r['what']} | {r['chunk']} | {s['median_us']:,.0f} | {s['p99_us']:,.0f} | "
            f"{n['median_us']:,.0f} | {n['p99_us']:,.0f} | {n['median_us'] / s['median_us']:.2f}x | "
            f"{m['streamed']:,} / {m['naive']:,} | {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="streaming-results")
    parser.add_argument("--chunks", type=int, default=200, help="chunks per stream")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a few chunks, one round")
    args = parser.parse_args(argv)
    if args.quick:
        args.chunks, args.rounds = 10, 1
    started = time.perf_counter()
    load_start = os.getloadavg()
    rows = []
    for channels, kernel_size, dilation in LAYERS:
        for chunk in CHUNKS:
            rows.append(
                _measure_layer(channels, kernel_size, dilation, chunk, args.chunks, args.rounds)
            )
            print(rows[-1]["what"], chunk, rows[-1]["streamed"], rows[-1]["naive"], flush=True)
    for chunk in CHUNKS:
        rows.append(_measure_matchboxnet(chunk, args.chunks, args.rounds))
        print(rows[-1]["what"], chunk, rows[-1]["streamed"], rows[-1]["naive"], flush=True)
    device = jax.devices()[0]
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "device": f"{device.platform} ({device.device_kind})",
        "jax": jax.__version__,
        "window": WINDOW,
        "chunks_per_stream": args.chunks,
        "rounds": args.rounds,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "streaming.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    header = (
        f"Run {meta['date']}: {meta['machine']}, {meta['device']}, jax {meta['jax']}; batch 1, "
        f"float32; naive window {WINDOW} frames; {args.rounds} rounds of {args.chunks} chunks "
        f"per variant; load average {', '.join(f'{v:.2f}' for v in load_start)} at start, "
        f"{', '.join(f'{v:.2f}' for v in meta['load_average_end'])} at end; "
        f"{meta['seconds']} s.\n\n"
    )
    report = header + _table(rows)
    (out / "streaming.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
