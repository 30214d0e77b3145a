"""``bench --models`` at several batches in one sitting: ours against timm eager and
``torch.compile``, with the per-image scaling from batch 8 to batch 32.

Runs :func:`sepconv_jax.apps.bench_models.measure_zoo` (the code behind
``sepconv-jax bench --models``) once per batch of ``--batches`` in one process,
inference at every batch and training at ``--train-batches``, and
``torch.compile`` in the modes of ``--compiled`` at ``--compiled-batches``. Writes ``models.json`` (machine,
configuration, every record with its batch), ``models.md`` and ``models.png``
(ours / timm eager, by model and batch).

Usage::

    python benchmarks/cpu_models.py --out benchmarks/results/cpu_models
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sepconv_jax.apps import bench_models
from sepconv_jax.apps.bench import machine_info

TARGETS = ("MobileNetV2", "EfficientNetB0", "ConvNeXtTiny")


def _rate(records, model, batch, mode, runner):
    for r in records:
        if (r["model"], r["batch"], r["mode"], r["runner"]) == (model, batch, mode, runner):
            return r.get("images_per_second")
    return None


def _eager(records, model, batch, mode):
    rates = [
        r["images_per_second"]
        for r in records
        if (r["model"], r["batch"], r["mode"]) == (model, batch, mode)
        and r["runner"] in ("timm NCHW", "timm channels_last")
        and r.get("images_per_second")
    ]
    return max(rates, default=None)


def summary(records, names, batches, train_batches) -> list[str]:
    fmt = lambda v, spec=".2f": "" if v is None else format(v, spec)
    lines = [
        "| model | mode | batch | ours images/s | timm eager (best layout) | timm compiled "
        "| ours / eager | ours / compiled |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        for mode in bench_models.MODES:
            for batch in batches if mode == "inference" else train_batches:
                ours = _rate(records, name, batch, mode, "ours impl=auto")
                eager = _eager(records, name, batch, mode)
                compiled = _rate(records, name, batch, mode, "timm compiled")
                lines.append(
                    f"| {name} | {mode} | {batch} | {fmt(ours, '.1f')} | {fmt(eager, '.1f')} | "
                    f"{fmt(compiled, '.1f') or 'n/a'} | "
                    f"{fmt(ours / eager if ours and eager else None)} | "
                    f"{fmt(ours / compiled if ours and compiled else None)} |"
                )
    lines += [
        "",
        "Per-image throughput at batch 32 over batch 8 (images/s ratio; >= 0.9 is the target):",
        "",
        "| model | mode | ours | timm eager |",
        "|---|---|---:|---:|",
    ]
    for name in names:
        for mode in bench_models.MODES:
            o8, o32 = (_rate(records, name, b, mode, "ours impl=auto") for b in (8, 32))
            t8, t32 = (_eager(records, name, b, mode) for b in (8, 32))
            lines.append(
                f"| {name} | {mode} | {fmt(o32 / o8 if o8 and o32 else None)} | "
                f"{fmt(t32 / t8 if t8 and t32 else None)} |"
            )
    return lines


def plot(records, names, batches, train_batches, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, mode in zip(axes, bench_models.MODES, strict=True):
        sizes = batches if mode == "inference" else train_batches
        width = 0.8 / len(sizes)
        for i, batch in enumerate(sizes):
            ratios = []
            for name in names:
                ours = _rate(records, name, batch, mode, "ours impl=auto")
                eager = _eager(records, name, batch, mode)
                ratios.append(ours / eager if ours and eager else 0.0)
            ax.bar(np.arange(len(names)) + i * width, ratios, width, label=f"batch {batch}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(names)) + width * (len(sizes) - 1) / 2)
        ax.set_xticklabels(names)
        ax.set_ylabel("ours / timm eager (images/s)")
        ax.set_title(mode)
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(TARGETS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--train-batches", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--compiled", nargs="*", default=["inference"])
    parser.add_argument("--compiled-batches", nargs="*", type=int, default=[8])
    parser.add_argument("--min-time", type=float, default=0.5)
    parser.add_argument("--max-reps", type=int, default=5)
    parser.add_argument(
        "--retain-memory",
        action="store_true",
        help="both processes keep freed heap memory (sepconv_jax.runtime.retain_freed_memory)",
    )
    parser.add_argument("--out", default="benchmarks/results/cpu_models")
    args = parser.parse_args()
    if args.retain_memory:
        from sepconv_jax import runtime

        runtime.retain_freed_memory()  # before the first JAX computation
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    records, facts = [], []
    start = time.perf_counter()
    for batch in sorted(set(args.batches) | set(args.train_batches)):
        modes = [
            m
            for m, sizes in (("inference", args.batches), ("training", args.train_batches))
            if batch in sizes
        ]
        found, fact = bench_models.measure_zoo(
            args.models,
            ("auto",),
            batch=batch,
            image_size=args.image_size,
            min_time=args.min_time,
            max_reps=args.max_reps,
            modes=modes,
            torch_compiled=args.compiled if batch in args.compiled_batches else (),
            retain_memory=args.retain_memory,
            log=lambda line, batch=batch: print(f"[batch {batch}] {line}", flush=True),
        )
        for record in found:
            record["batch"] = batch
        records += found
        facts.append({"batch": batch, **fact})
    lines = [
        "# Whole models on CPU: ours (impl=auto) against timm, eager and compiled",
        "",
        f"{machine['cpu']}, {machine['cores']} cores (shared with other work during the run), "
        f"jax {machine['jax']}; {args.image_size}x{args.image_size} float32; best of up to "
        f"{args.max_reps} calls within {args.min_time} s after a warm-up; one sitting of "
        f"{(time.perf_counter() - start) / 60:.0f} min.",
        "",
        *summary(records, args.models, args.batches, args.train_batches),
        "",
    ]
    (out / "models.json").write_text(
        json.dumps(
            {"machine": machine, "args": vars(args), "facts": facts, "records": records}, indent=2
        )
        + "\n"
    )
    (out / "models.md").write_text("\n".join(lines))
    plot(records, args.models, args.batches, args.train_batches, out / "models.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
