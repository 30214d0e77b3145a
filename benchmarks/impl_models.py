"""Whole models with two depthwise impls, timed side by side in one process.

For each model (the timm model converted with :func:`sepconv_jax.interop.timm.convert`,
as in ``sepconv-jax bench --models``), batch and mode (inference, training step),
the programs of every ``--impls`` are compiled, checked to agree, and then called in
turn, one call of each per round, so that the machine's drift between sittings
falls on all of them alike. Reported: the median time per call of each impl and
each impl's speedup over the first, with the spread of the per-round ratios.
``dispatch.auto_impl`` cites this script for the kernel ``"auto"`` picks on CPU.

Usage::

    python benchmarks/impl_models.py --impls shift native --out benchmarks/results/impl_models
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

MODELS = ("MobileNetV2", "EfficientNetB0", "ConvNeXtTiny")


def measure(name: str, batch: int, image_size: int, impls, modes, rounds: int) -> list[dict]:
    import jax
    import numpy as np
    import timm

    from sepconv_jax.apps.bench_models import ZOO, model_jobs
    from sepconv_jax.interop.timm import convert

    module, variables = convert(timm.create_model(ZOO[name], pretrained=False))
    rows = []
    for mode in modes:
        programs, outputs = {}, {}
        for impl in impls:
            fn, args = model_jobs(module, variables, batch=batch, image_size=image_size, impl=impl)[
                mode
            ]
            programs[impl] = (jax.jit(fn).lower(*args).compile(), args)
            outputs[impl] = jax.block_until_ready(programs[impl][0](*args))  # warm-up
        first = impls[0]
        for impl in impls[1:]:  # the same function: outputs agree within 2%
            for got, want in zip(
                jax.tree.leaves(outputs[impl]), jax.tree.leaves(outputs[first]), strict=True
            ):
                np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-2, atol=2e-2)
        times: dict[str, list[float]] = {impl: [] for impl in impls}
        for _ in range(rounds):
            for impl in impls:
                compiled, args = programs[impl]
                start = time.perf_counter()
                jax.block_until_ready(compiled(*args))
                times[impl].append(time.perf_counter() - start)
        row = {
            "model": name,
            "batch": batch,
            "mode": mode,
            "ms": {impl: 1e3 * float(np.median(t)) for impl, t in times.items()},
        }
        for impl in impls[1:]:
            ratios = np.asarray(times[first]) / np.asarray(times[impl])
            row[f"{first}/{impl}"] = float(np.median(ratios))
            row[f"{first}/{impl} range"] = [float(ratios.min()), float(ratios.max())]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def markdown(rows: list[dict], impls) -> str:
    first = impls[0]
    head = ["model", "batch", "mode", *(f"{i} ms" for i in impls)]
    head += [f"{first}/{i} (min-max)" for i in impls[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], str(r["batch"]), r["mode"], *(f"{r['ms'][i]:.1f}" for i in impls)]
        for i in impls[1:]:
            lo, hi = r[f"{first}/{i} range"]
            cells.append(f"{r[f'{first}/{i}']:.2f} ({lo:.2f}-{hi:.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--impls", nargs="+", default=["shift", "native"])
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--modes", nargs="+", default=["inference", "training"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--retain-memory", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/impl_models")
    args = parser.parse_args()
    if args.retain_memory:
        from sepconv_jax import runtime

        runtime.retain_freed_memory()
    from sepconv_jax.apps.bench import machine_info

    rows = []
    for name in args.models:
        for batch in args.batches:
            rows += measure(name, batch, args.image_size, args.impls, args.modes, args.rounds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine_info(), "args": vars(args), "rows": rows}
    (out / "impl_models.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "impl_models.md").write_text(markdown(rows, args.impls))
    print(markdown(rows, args.impls))


if __name__ == "__main__":
    main()
