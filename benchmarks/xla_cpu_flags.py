"""XLA:CPU compiler options against the default, on whole models: same outputs, faster?

For MobileNetV2, EfficientNet-B0 and ConvNeXt-T (the timm models converted with
:func:`sepconv_jax.interop.timm.convert`, ``impl="auto"``, built and stepped as
``sepconv-jax bench --models`` does: :func:`sepconv_jax.apps.bench_models.measure_zoo`)
this script compiles inference (``apply(..., train=False)``) and one training step
(:func:`sepconv_jax.apps.train.train_step`: forward, backward, SGD with momentum) once
per option set of :data:`OPTION_SETS`, passing the set per compile
(``jax.jit(f).lower(...).compile(compiler_options)``), so that one process holds every
program and times them side by side: ``--rounds`` rounds, each calling every program
``--calls`` times in an order rotated from round to round, a program's time in a round
being its best call. The tables give the median over rounds and each set's ratio to
the default (median and range of the per-round ratios, so that a gain that is noise
shows as a range across 1).

Every set's outputs are compared with the default program's on the same inputs:
relative L2 error of the logits (inference), and of the loss, the parameter update
``new_params - params`` and the new batch statistics (training). Each compiled
program is also summarized (library fusions by kind, layout copies and transposes at
the top level), so that a set whose program did not change is seen as such.

Usage (the runs of ``results/cpu_flags``: every set on inference, then the sets of
:data:`DEFAULT_SETS` on training)::

    python benchmarks/xla_cpu_flags.py --image-size 128 --modes inference --calls 2 \
        --sets default "ynn off" "ynn dots only" "ynn +convs" "xnn fusions" "xnn graph" \
        "no xnnpack" "fast math" "vector 512" "no concurrency scheduler" \
        "no fusion emitters" --out benchmarks/results/cpu_flags/inference
    python benchmarks/xla_cpu_flags.py --image-size 128 --modes training --rounds 4 \
        --calls 1 --out benchmarks/results/cpu_flags/training
    python benchmarks/xla_cpu_flags.py --quick --out /tmp/cpu_flags  # smoke run, minutes

Compiling a training step takes 25-75 s per set on two busy cores, so a full run of
every set on every model and mode is most of an hour; hence the screening.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sepconv_jax.apps import bench_models
from sepconv_jax.apps.bench import machine_info

TARGETS = ("MobileNetV2", "EfficientNetB0", "ConvNeXtTiny")

_YNN = "xla_cpu_experimental_ynn_fusion_type"
_XNN = "xla_cpu_experimental_xnn_fusion_type"
_ONEDNN = "xla_cpu_experimental_onednn_fusion_type"
_ALL_FUSIONS = "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"

#: Name -> compiler options, as ``compile(compiler_options)`` takes them. Repeated enum
#: options take the proto's enum names, comma-separated (``""`` empties the list).
#: jaxlib 0.10.2 fuses some dots, element-wise ops and reductions into YNNPACK
#: (XNNPACK's successor) subgraphs by default; the XNNPACK fusions are tried with
#: YNNPACK's turned off, since both would claim the same instructions. Left out:
#: oneDNN. ``xla_cpu_use_onednn`` alone compiles the same program as "ynn off", and
#: with ``xla_cpu_experimental_onednn_fusion_type`` set to dots, MobileNetV2's first
#: call aborts the process ("partition compile failed", SIGILL), which no ``try`` catches.
OPTION_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "ynn off": {_YNN: ""},
    "ynn dots only": {_YNN: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
    "ynn no reduce": {_YNN: "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE"},
    "ynn no eltwise": {_YNN: "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"},
    "ynn +convs": {
        _YNN: _ALL_FUSIONS
        + ",LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
    },
    "xnn fusions": {_YNN: "", _XNN: _ALL_FUSIONS},
    "xnn graph": {
        _YNN: "",
        "xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY",
    },
    "no xnnpack": {"xla_cpu_use_xnnpack": False},
    "fast math": {"xla_cpu_enable_fast_math": True},
    "vector 512": {"xla_cpu_prefer_vector_width": 512},
    "no concurrency scheduler": {"xla_cpu_enable_concurrency_optimized_scheduler": False},
    "no fusion emitters": {"xla_cpu_use_fusion_emitters": False},
}

#: The sets run unless ``--sets`` says otherwise. Screened out on inference at 128x128
#: (``results/cpu_flags/inference``): "ynn +convs" and "no fusion emitters" (2-4x
#: slower), "xnn fusions" and "xnn graph" (the same program as "ynn off": no XNNPACK
#: fusion is formed), "no concurrency scheduler" (no change). "no xnnpack" stays as the
#: noise yardstick: it compiles the default program (same HLO, bit-identical outputs),
#: so its ratio to default shows how far timing noise alone moves a ratio.
DEFAULT_SETS = ("default", "ynn off", "ynn dots only", "fast math", "vector 512", "no xnnpack")

QUICK_SETS = ("default", "ynn off", "fast math")


def build_jobs(name: str, *, batch: int, image_size: int) -> dict[str, tuple[Any, list]]:
    """Mode -> ``(function, arguments)`` for one model, as ``bench --models`` builds them."""
    from sepconv_jax.interop.timm import convert

    module, variables = convert(bench_models._timm_model(bench_models.ZOO[name], 1000))
    return bench_models.model_jobs(module, variables, batch=batch, image_size=image_size)


#: Where the images are among a mode's arguments.
_IMAGES = {"inference": 1, "training": 3}

_FUSION_KIND = re.compile(r'"kind":"(__\w+)"')
_TOP = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = \S+ ([a-z][a-z\-]*)\(")


def program_summary(text: str) -> dict[str, int]:
    """Counts over a compiled module's entry computation: library fusions by kind
    (``__ynn_fusion``, ``__xnn_fusion``, ``__onednn_fusion``...), other fusions, and
    layout copies (instructions or fusions named ``copy``/``transpose``)."""
    counts: Counter[str] = Counter()
    entry = text[text.index("\nENTRY ") :] if "\nENTRY " in text else text
    for line in entry.splitlines():
        match = _TOP.match(line)
        if not match:
            continue
        name, opcode = match.groups()
        kind = _FUSION_KIND.search(line)
        if kind:
            counts[kind.group(1).strip("_")] += 1
        elif opcode == "fusion":
            counts["xla fusion"] += 1
        if opcode in ("copy", "transpose") or re.match(r"(copy|transpose)", name):
            counts["copy/transpose"] += 1
        if opcode == "custom-call":
            counts["custom call"] += 1
    return dict(counts)


def _relative(a: Any, b: Any) -> float:
    """``||a - b|| / ||b||`` over all leaves of two pytrees, in float64."""
    fa = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(a)])
    fb = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(b)])
    return float(np.linalg.norm(fa - fb) / max(np.linalg.norm(fb), 1e-30))


def errors(mode: str, args: list, out: Any, ref: Any) -> dict[str, float]:
    """Relative errors of one program's outputs against the default program's."""
    if mode == "inference":
        return {"logits": _relative(out, ref)}
    update = lambda new: jax.tree.map(lambda n, p: n - p, new, args[0])
    found = {"loss": _relative(out[3], ref[3]), "update": _relative(update(out[0]), update(ref[0]))}
    if jax.tree.leaves(ref[1]):
        found["batch stats"] = _relative(out[1], ref[1])
    return found


def measure(
    name: str, mode: str, fn: Any, args: list, sets: list[str], rounds: int, calls: int, log
) -> list[dict]:
    """Compile ``fn`` once per option set, check outputs, and time the programs
    round-robin; one record per set."""
    records, programs = [], {}
    for label in sets:
        record: dict[str, Any] = {"model": name, "mode": mode, "set": label}
        record["options"] = OPTION_SETS[label]
        start = time.perf_counter()
        try:
            compiled = jax.jit(fn).lower(*args).compile(OPTION_SETS[label] or None)
        except Exception as error:  # recorded, and the others go on
            record["error"] = repr(error)[:300]
            log(f"{name} {mode} [{label}]: failed to compile: {record['error']}")
            records.append(record)
            continue
        record["compile_s"] = time.perf_counter() - start
        text = compiled.as_text()
        record["program"] = program_summary(text)
        record["hlo_chars"] = len(text)
        programs[label] = (compiled, text)
        records.append(record)
    by_label = {r["set"]: r for r in records}
    reference = None
    if "default" in programs:
        reference = jax.device_get(programs["default"][0](*args))
        # The float32 yardstick: the default program on the images moved by one ulp.
        moved = list(args)
        at = _IMAGES[mode]
        moved[at] = jnp.nextafter(args[at], jnp.inf)
        by_label["default"]["one_ulp_errors"] = errors(
            mode, args, jax.device_get(programs["default"][0](*moved)), reference
        )
    for label, (compiled, text) in programs.items():
        record = by_label[label]
        out = jax.device_get(compiled(*args))  # also the warm-up
        if reference is not None:
            record["errors"] = errors(mode, args, out, reference)
        # The first set (in the order given) whose optimized HLO is this one's.
        record["same_hlo_as"] = next(k for k, (_, t) in programs.items() if t == text)
        log(
            f"{name} {mode} [{label}]: compiled in {record['compile_s']:.1f} s, "
            f"{record['program']}, errors {record.get('errors')}"
        )
    labels = list(programs)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(rounds):
        shift = r % len(labels)
        for label in labels[shift:] + labels[:shift]:
            compiled = programs[label][0]
            best = float("inf")
            for _ in range(calls):
                start = time.perf_counter()
                jax.block_until_ready(compiled(*args))
                best = min(best, time.perf_counter() - start)
            times[label].append(best)
    for label in labels:
        record = by_label[label]
        record["round_ms"] = [1e3 * t for t in times[label]]
        record["ms"] = statistics.median(record["round_ms"])
        record["best_ms"] = min(record["round_ms"])
        if "default" in times:
            ratios = [t / d for t, d in zip(times[label], times["default"], strict=True)]
            record["ratio"] = statistics.median(ratios)
            record["ratio_range"] = [min(ratios), max(ratios)]
        log(
            f"{name} {mode} [{label}]: {record['ms']:.1f} ms (best {record['best_ms']:.1f}), "
            f"ratio {record.get('ratio', float('nan')):.3f} "
            f"{[round(x, 3) for x in record.get('ratio_range', [])]}"
        )
    return records


def _fmt_errors(errs: dict[str, float] | None) -> str:
    if not errs:
        return ""
    return ", ".join(f"{k} {v:.1e}" for k, v in errs.items())


def _fmt_program(program: dict[str, int] | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted((program or {}).items()))


def tables(records: list[dict], sets: list[str]) -> list[str]:
    """Markdown: ms by model, mode and set with the ratio to default; then each set's
    errors and program summary."""
    keys = list(dict.fromkeys((r["model"], r["mode"]) for r in records))
    find = {(r["model"], r["mode"], r["set"]): r for r in records}
    lines = [
        "Median ms over rounds; in brackets the ratio to default (median of the per-round "
        "ratios, and their range).",
        "",
        "| option set | " + " | ".join(f"{m} {mode}" for m, mode in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for label in sets:
        cells = []
        for model, mode in keys:
            r = find.get((model, mode, label), {})
            if "ms" not in r:
                cells.append("failed" if "error" in r else "")
                continue
            cell = f"{r['ms']:.1f}"
            if label != "default" and "ratio" in r:
                lo, hi = r["ratio_range"]
                cell += f" ({r['ratio']:.2f}, {lo:.2f}-{hi:.2f})"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Relative L2 error against the default program (logits; loss, parameter update, "
        "batch statistics; the default program on images moved by one ulp is the float32 "
        "yardstick), the earlier set with the same optimized HLO (codegen options such as "
        "fast math change the machine code, not the HLO), and what the compiled program "
        "holds at the top level:",
        "",
        "| model | mode | option set | errors | same HLO as | program | compile s |",
        "|---|---|---|---|---|---|---:|",
    ]
    for model, mode in keys:
        for label in sets:
            r = find.get((model, mode, label))
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {model} | {mode} | {label} | {r['error'][:120]} | | | |")
                continue
            same = "" if r.get("same_hlo_as", label) == label else r["same_hlo_as"]
            if "one_ulp_errors" in r:
                lines.append(
                    f"| {model} | {mode} | default, images moved by 1 ulp | "
                    f"{_fmt_errors(r['one_ulp_errors'])} | | | |"
                )
            lines.append(
                f"| {model} | {mode} | {label} | {_fmt_errors(r.get('errors'))} | {same} | "
                f"{_fmt_program(r.get('program'))} | {r['compile_s']:.1f} |"
            )
    lines += ["", "Options of each set:", ""]
    lines += [f"- {label}: `{json.dumps(OPTION_SETS[label])}`" for label in sets]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--modes", nargs="+", default=list(bench_models.MODES))
    parser.add_argument(
        "--sets", nargs="+", choices=list(OPTION_SETS), help=f"default: {', '.join(DEFAULT_SETS)}"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2, help="calls per program per round")
    parser.add_argument("--quick", action="store_true", help="MobileNetV2, 64x64, 3 sets, 2 rounds")
    parser.add_argument("--out", default="benchmarks/results/cpu_flags")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.image_size, args.rounds, args.calls = ["MobileNetV2"], 64, 2, 1
        args.sets = args.sets or list(QUICK_SETS)
    args.sets = args.sets or list(DEFAULT_SETS)
    if "default" not in args.sets:
        args.sets.insert(0, "default")
    started = time.perf_counter()
    load_start = os.getloadavg()
    records = []
    for name in args.models:
        jobs = build_jobs(name, batch=args.batch, image_size=args.image_size)
        for mode in args.modes:
            fn, fn_args = jobs[mode]
            records += measure(
                name, mode, fn, fn_args, args.sets, args.rounds, args.calls, log=print
            )
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    header = (
        f"# XLA:CPU compiler options on whole models (impl=auto)\n\n"
        f"Run {meta['date']}: {meta['machine']['cpu']}, {meta['machine']['cores']} cores "
        f"(shared with other work), jax {meta['machine']['jax']}; batch {args.batch}, "
        f"{args.image_size}x{args.image_size} float32; {args.rounds} interleaved rounds of "
        f"{args.calls} call(s) per program after a warm-up; load average "
        f"{', '.join(f'{v:.2f}' for v in load_start)} at start, "
        f"{', '.join(f'{v:.2f}' for v in meta['load_average_end'])} at end; "
        f"{meta['seconds'] / 60:.0f} min.\n"
    )
    text = "\n".join([header, *tables(records, args.sets), ""])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flags.json").write_text(
        json.dumps({"meta": meta, "args": vars(args), "records": records}, indent=1) + "\n"
    )
    (out / "flags.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
