"""Whole models, ours against timm eager, one call each in turn.

``sepconv-jax bench --models`` times all of ours first and then all of PyTorch's in
its child process, so a change in the machine's load between the two halves (on a
shared 2-core machine, 30% within minutes) lands on one side only. Here a PyTorch
child process stays up for the whole run and the two sides take turns: per round,
one call of ours, then one of timm in each of its two layouts (NCHW and
channels_last), for every model, mode and batch. The ratio is taken per round
(ours images/s over the faster timm layout of that round) and its median reported
with its range, along with each side's median time.

Both processes keep freed heap memory (:func:`sepconv_jax.runtime.retain_freed_memory`)
and the child sets ``OMP_WAIT_POLICY=PASSIVE``, as ``bench --models --retain-memory``
does. Ours is ``impl="auto"`` (:func:`sepconv_jax.apps.bench_models.model_jobs`);
the child builds the same timm model with the same seed.

Usage::

    python benchmarks/models_interleaved.py --out benchmarks/results/models_interleaved
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

MODELS = ("MobileNetV2", "EfficientNetB0", "ConvNeXtTiny")
LAYOUTS = ("NCHW", "channels_last")


def _child(conn, image_size: int) -> None:
    """The PyTorch side: builds a model on ``("setup", name, batch, mode)``, times one
    call per layout on ``("call",)``, exits on ``None``."""
    import os

    from sepconv_jax import runtime

    runtime.retain_freed_memory()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from sepconv_jax.apps.bench_models import ZOO, _timm_model, torch_calls

    calls = {}
    while (message := conn.recv()) is not None:
        if message[0] == "setup":
            _, name, batch, mode = message
            model = _timm_model(ZOO[name], 1000)
            generator = torch.Generator().manual_seed(0)
            images = torch.randn(batch, 3, image_size, image_size, generator=generator)
            labels = torch.randint(0, 1000, (batch,), generator=generator)
            calls = {}
            for layout in LAYOUTS:
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                m = model.to(memory_format=fmt)
                optimizer = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
                calls[layout] = torch_calls(
                    m, images.contiguous(memory_format=fmt), labels, optimizer
                )[mode]
                calls[layout]()  # warm-up
            conn.send(torch.get_num_threads())
        else:
            times = {}
            for layout, call in calls.items():
                start = time.perf_counter()
                call()
                times[layout] = time.perf_counter() - start
            conn.send(times)


def measure(conn, name: str, batch: int, mode: str, image_size: int, rounds: int) -> dict:
    import jax
    import numpy as np

    from sepconv_jax.apps.bench_models import ZOO, _timm_model, model_jobs
    from sepconv_jax.interop.timm import convert

    module, variables = convert(_timm_model(ZOO[name], 1000))
    fn, args = model_jobs(module, variables, batch=batch, image_size=image_size)[mode]
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))  # warm-up
    conn.send(("setup", name, batch, mode))
    threads = conn.recv()
    ours, theirs, ratios = [], {layout: [] for layout in LAYOUTS}, []
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        ours.append(time.perf_counter() - start)
        conn.send(("call",))
        times = conn.recv()
        for layout in LAYOUTS:
            theirs[layout].append(times[layout])
        ratios.append(min(times.values()) / ours[-1])
    row = {
        "model": name,
        "batch": batch,
        "mode": mode,
        "rounds": rounds,
        "torch_threads": threads,
        "ours_ms": 1e3 * float(np.median(ours)),
        **{f"timm_{layout}_ms": 1e3 * float(np.median(theirs[layout])) for layout in LAYOUTS},
        "ours_over_timm": float(np.median(ratios)),
        "ours_over_timm_range": [float(min(ratios)), float(max(ratios))],
    }
    print(json.dumps(row), flush=True)
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | mode | batch | ours ms | timm NCHW ms | timm channels_last ms "
        "| ours / timm, images/s (min-max over rounds) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lo, hi = r["ours_over_timm_range"]
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['batch']} | {r['ours_ms']:.1f} | "
            f"{r['timm_NCHW_ms']:.1f} | {r['timm_channels_last_ms']:.1f} | "
            f"{r['ours_over_timm']:.2f} ({lo:.2f}-{hi:.2f}) |"
        )
    by = {(r["model"], r["mode"], r["batch"]): r for r in rows}
    lines += [
        "",
        "| model | mode | ours per image, b32 over b8 | timm (faster layout) |",
        "|---|---|---:|---:|",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        for mode in ("inference", "training"):
            if (model, mode, 8) in by and (model, mode, 32) in by:
                a, b = by[model, mode, 8], by[model, mode, 32]
                ours = (a["ours_ms"] / 8) / (b["ours_ms"] / 32)
                fast = lambda r: min(r["timm_NCHW_ms"], r["timm_channels_last_ms"])
                timm = (fast(a) / 8) / (fast(b) / 32)
                lines.append(f"| {model} | {mode} | {ours:.2f} | {timm:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--modes", nargs="+", default=["inference", "training"])
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results/models_interleaved")
    args = parser.parse_args()
    from sepconv_jax import runtime

    runtime.retain_freed_memory()
    from sepconv_jax.apps.bench import machine_info

    here, there = multiprocessing.get_context("spawn").Pipe()
    child = multiprocessing.get_context("spawn").Process(
        target=_child, args=(there, args.image_size), daemon=True
    )
    child.start()
    started = time.perf_counter()
    rows = []
    try:
        for name in args.models:
            for mode in args.modes:
                for batch in args.batches:
                    rows.append(measure(here, name, batch, mode, args.image_size, args.rounds))
    finally:
        here.send(None)
        child.join(timeout=60)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = {**machine_info(), "minutes": (time.perf_counter() - started) / 60}
    (out / "models.json").write_text(
        json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=1) + "\n"
    )
    (out / "models.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
