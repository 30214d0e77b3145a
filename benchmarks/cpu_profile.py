"""Where the time of a whole model goes on CPU: ours and timm's, by layer kind.

For MobileNetV2, EfficientNet-B0 and ConvNeXt-T (the timm models, converted with
:func:`sepconv_jax.interop.timm.convert`, so both sides run one network) at each
``--batches``, this script profiles one inference call and one training step
(forward, backward, SGD with momentum) on both sides and splits the time into layer
kinds: stem, depthwise, pointwise (1x1 convolutions and the classifier), batch norm
(layer norm in ConvNeXt), activations, squeeze-excite, layout copies, and the
optimizer (with the loss), each forward and backward.

* Ours: the XLA:CPU thunks of the compiled program, as the JAX profiler records
  them (``jax.profiler.start_trace``; one event per thunk, named after its HLO
  instruction). Each instruction is attributed through its ``op_name`` metadata,
  which carries the Flax module path (``.../block3a/depthwise/...``) and, for the
  backward pass, ``transpose(jvp(...))``. A fusion counts for the module of its root
  instruction, so a batch norm fused into a depthwise loop counts as depthwise.
* timm: ``torch.profiler`` self CPU time per ATen op, with input shapes, so that a
  convolution is depthwise, pointwise, stem or squeeze-excite by its weight's shape.

Thunks may run concurrently on the two cores, so the kinds of one program add up to
its CPU time, not its wall time; the tables give both, and the shares. Around one
untraced call per program the script also reads the process's page faults and
system CPU time (``getrusage``), which is how the batch-32
slowdown is attributed. PyTorch runs in its own ``spawn`` process (see
:mod:`sepconv_jax.apps.bench_torch` for why), after ours.

Usage::

    python benchmarks/cpu_profile.py --out benchmarks/results/cpu_profile
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import re
import resource
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from sepconv_jax.apps.bench import machine_info
from sepconv_jax.apps.bench_models import model_jobs, torch_calls

TIMM = {
    "MobileNetV2": "mobilenetv2_100",
    "EfficientNetB0": "efficientnet_b0",
    "ConvNeXtTiny": "convnext_tiny",
}
KINDS = (
    "stem",
    "depthwise",
    "pointwise",
    "norm",
    "activation",
    "squeeze-excite",
    "layout copy",
    "optimizer+loss",
    "other",
)
_LR, _MOMENTUM = 0.01, 0.9


def faults() -> tuple[int, int, float]:
    """This process's ``(minor, major)`` page faults and system CPU seconds so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt, usage.ru_majflt, usage.ru_stime


def _measure(call, args, reps: int, sync=lambda out: out) -> tuple[list[float], list[tuple]]:
    """Wall seconds, and ``faults()`` differences, of ``reps`` calls ``sync(call(*args))``."""
    walls, deltas = [], []
    for _ in range(reps):
        before = faults()
        start = time.perf_counter()
        sync(call(*args))
        walls.append(time.perf_counter() - start)
        deltas.append(tuple(a - b for a, b in zip(faults(), before, strict=True)))
    return walls, deltas


# ----------------------------------------------------------------------------- ours

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*? ([a-z][a-z\-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_instructions(text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> ``(opcode, op_name)`` over every computation of a module."""
    found = {}
    for line in text.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            name_match = _OP_NAME.search(line)
            found[match.group(1)] = (match.group(2), name_match.group(1) if name_match else "")
    return found


def kind_of_op_name(op_name: str, opcode: str, thunk: str) -> str:
    """The layer kind of an instruction, from its module path (see the module docstring)."""
    if opcode in ("copy", "transpose") or re.match(
        r"(bitcast_)?(copy|transpose)[\w.]*fusion", thunk
    ):
        return "layout copy"
    path = re.sub(r"^jit\([^)]*\)/", "", op_name)
    if not re.match(r"(transpose\()?jvp\(\w+\)\)?/|[A-Z]\w+/", path):
        return "optimizer+loss" if path else "other"
    segments = path.split("/")[1:-1]  # drop the model and the primitive
    modules = "/".join(segments)
    if re.search(r"(^|/)(stem\w*|conv1|conv1_bn|conv_stem|bn1)(/|$)", modules):
        return "stem"
    if re.search(r"(^|/)se(/|$)|_se(/|$)", modules):
        return "squeeze-excite"
    # Our depthwise primitives carry their own name (``depthwise_conv``, and its
    # ``_input_transpose`` / ``_kernel_transpose`` in the backward pass), with the
    # shift kernel's own operations (``while``, ``pad``, ...) nested below it.
    if any(re.match(r"depthwise_conv", seg) for seg in segments) or (
        segments and re.search(r"depthwise$", segments[-1])
    ):
        return "depthwise"
    if segments and re.search(r"(bn|norm)$", segments[-1]):
        return "norm"
    if re.search(r"silu|relu|gelu|erf|swish|sigmoid|tanh", path.rsplit("/", 1)[-1] + modules):
        return "activation"
    # A clamp's backward pass (ReLU6's) is a ``select_n`` in the block itself.
    if "transpose(" in op_name and path.rsplit("/", 1)[-1] == "select_n":
        return "activation"
    if segments and re.search(r"expand|project|pointwise|conv_last|head|predictions|top", modules):
        return "pointwise"
    return "other"


def _direction(op_name: str) -> str:
    return "bwd" if "transpose(" in op_name else "fwd"


def _trace_thunks(fn, args, reps: int) -> dict[str, float]:
    """Total ns per HLO instruction over ``reps`` traced calls of the jitted ``fn``."""
    from jax._src.lib import _profile_data

    with tempfile.TemporaryDirectory() as logdir:
        jax.profiler.start_trace(logdir)
        for _ in range(reps):
            jax.block_until_ready(fn(*args))
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
        data = _profile_data.ProfileData.from_file(path)
    totals: dict[str, float] = collections.defaultdict(float)
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats:
                    totals[stats["hlo_op"]] += event.duration_ns
    return totals


def _row(side, model, batch, mode, walls, by_kind, fault_counts) -> dict:
    """One profile row: median wall time and page faults per call, CPU ms by kind."""
    return {
        "side": side,
        "model": model,
        "batch": batch,
        "mode": mode,
        "wall_ms": 1e3 * float(np.median(walls)),
        "cpu_ms": sum(by_kind.values()),
        "kinds_ms": dict(by_kind),
        "minor_faults": int(np.median([f[0] for f in fault_counts])),
        "major_faults": int(np.median([f[1] for f in fault_counts])),
        "system_ms": 1e3 * float(np.median([f[2] for f in fault_counts])),
    }


def profile_ours(
    name: str, batch: int, image_size: int, reps: int, log, impl: str = "auto"
) -> list[dict]:
    import timm

    from sepconv_jax.interop.timm import convert

    module, variables = convert(timm.create_model(TIMM[name], pretrained=False))
    jobs = model_jobs(module, variables, batch=batch, image_size=image_size, impl=impl)
    rows = []
    for mode, (fn, args) in jobs.items():
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        compile_s = time.perf_counter() - start
        instructions = hlo_instructions(compiled.as_text())
        jax.block_until_ready(compiled(*args))  # warm-up
        walls, fault_counts = _measure(compiled, args, reps, jax.block_until_ready)
        thunks = _trace_thunks(compiled, args, reps)
        by_kind: dict[str, float] = collections.defaultdict(float)
        # The same, split further by the thunk's type (its name without the number:
        # "ynn_fusion", "ffi_call", "dot", "transpose_copy_fusion"...).
        by_type: dict[str, float] = collections.defaultdict(float)
        for thunk, ns in thunks.items():
            opcode, op_name = instructions.get(thunk, ("", ""))
            kind = kind_of_op_name(op_name, opcode, thunk)
            if mode == "training" and kind not in ("optimizer+loss", "other", "layout copy"):
                kind = f"{kind} {_direction(op_name)}"
            by_kind[kind] += ns / reps / 1e6
            thunk_type = re.sub(r"[.]\d+$", "", thunk)
            by_type[f"{kind}: {thunk_type}"] += ns / reps / 1e6
        top = sorted(thunks.items(), key=lambda kv: -kv[1])
        named = [
            (t, ns / reps / 1e6, kind_of_op_name(*instructions.get(t, ("", ""))[::-1], t))
            for t, ns in top
        ]
        rows.append(
            {
                **_row("ours", name, batch, mode, walls, by_kind, fault_counts),
                "compile_s": compile_s,
                "by_thunk_type_ms": dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
                "top_thunks": named[:10],
                "top_other": [row for row in named if row[2] in ("other", "layout copy")][:6],
                "other_op_names": [
                    instructions.get(t, ("", ""))[1]
                    for t, _, k in named
                    if k in ("other", "layout copy")
                ][:6],
            }
        )
        log(rows[-1])
    return rows


# ----------------------------------------------------------------------------- timm


def _torch_conv_kind(name: str, shapes: list) -> str | None:
    four = [s for s in shapes if isinstance(s, list) and len(s) == 4]
    if not four:
        return None
    backward = "backward" in name
    if len(four) < (3 if backward else 2):
        return None
    x, weight = (four[1], four[2]) if backward else (four[0], four[1])
    if x[2] * x[3] == 1:
        return "squeeze-excite"
    if weight[1] == 3 and x[1] == 3:
        return "stem"
    if weight[1] == 1 and weight[2] * weight[3] > 1:
        return "depthwise"
    if weight[2] * weight[3] == 1:
        return "pointwise"
    return "other"


def torch_kind(name: str, shapes: list) -> str:
    """The layer kind of an ATen op (self time), by name and input shapes."""
    base = name.removeprefix("aten::")
    if "conv" in base:
        kind = _torch_conv_kind(base, shapes)
        if kind:
            return kind
    if re.search(r"batch_norm|layer_norm", base):
        return "norm"
    if re.search(r"silu|relu|hardtanh|gelu|sigmoid|hardswish|threshold", base):
        return "activation"
    if base in ("mean", "sum") or "mean" in base:
        return "squeeze-excite"  # the SE pooling (and the head's, which is small)
    if base.startswith("_foreach") or base in ("add_", "mul_", "zero_"):
        return "optimizer+loss"
    if re.search(r"softmax|nll_loss|cross_entropy", base):
        return "optimizer+loss"
    if re.search(r"addmm|mm$|linear", base):
        return "pointwise"
    if re.search(r"copy|contiguous|clone|permute|transpose", base):
        return "layout copy"
    return "other"


def _torch_worker(names, batches, image_size, reps, retain_memory=False):
    import os

    if retain_memory:
        from sepconv_jax import runtime

        runtime.retain_freed_memory()

    # On a loaded machine OpenMP's spinning barrier makes PyTorch tens of times
    # slower (measured: 2.9 s against 0.07 s a MobileNetV2 call at 64x64); passive
    # waiting keeps it at its unloaded speed. Set before torch starts OpenMP.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import timm
    import torch
    from torch.profiler import ProfilerActivity, profile

    rows = []
    for name in names:
        model = timm.create_model(TIMM[name], pretrained=False).to(
            memory_format=torch.channels_last
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=_LR, momentum=_MOMENTUM)
        for batch in batches:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(batch, 3, image_size, image_size, generator=gen).contiguous(
                memory_format=torch.channels_last
            )
            labels = torch.randint(0, 1000, (batch,), generator=gen)

            for mode, call in torch_calls(model, x, labels, optimizer).items():
                call()
                walls, fault_counts = _measure(call, (), reps)
                with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                    for _ in range(reps):
                        call()
                by_kind: dict[str, float] = collections.defaultdict(float)
                for event in prof.key_averages(group_by_input_shape=True):
                    if event.self_cpu_time_total <= 0:
                        continue
                    kind = torch_kind(event.key, list(event.input_shapes or []))
                    if mode == "training" and kind not in ("optimizer+loss", "other"):
                        kind += " bwd" if "backward" in event.key else " fwd"
                    by_kind[kind] += event.self_cpu_time_total / reps / 1e3
                rows.append(_row("timm", name, batch, mode, walls, by_kind, fault_counts))
                print(rows[-1], flush=True)
    return rows, torch.get_num_threads()


# ----------------------------------------------------------------------------- report


def _kind_columns(rows: list[dict]) -> list[str]:
    present = {k for r in rows for k in r["kinds_ms"]}
    order = []
    for base in KINDS:
        for suffix in ("", " fwd", " bwd"):
            if base + suffix in present:
                order.append(base + suffix)
    return order


def report(rows: list[dict], machine: dict, args, torch_threads) -> str:
    lines = [
        "# Where the time goes: whole models on CPU, by layer kind",
        "",
        f"{machine['cpu']}, {machine['cores']} cores (shared with other work during the run), "
        f"jax {machine['jax']}; PyTorch {torch_threads} threads, channels_last. "
        f"{args.image_size}x{args.image_size} float32, median of {args.reps} untraced calls "
        f"(wall) and the mean of {args.reps} traced calls (per kind). Per-kind figures are "
        "CPU ms per call (thunks or ATen ops), and their share of the sum.",
        "",
    ]
    for mode in ("inference", "training"):
        sub = [r for r in rows if r["mode"] == mode]
        if not sub:
            continue
        kinds = _kind_columns(sub)
        lines += [
            f"## {mode}",
            "",
            "| model | batch | side | wall ms | ms/image | minor faults/call | system ms/call | "
            + " | ".join(kinds)
            + " |",
            "|---|---:|---|---:|---:|---:|---:|" + "---:|" * len(kinds),
        ]
        for r in sub:
            total = r["cpu_ms"] or 1.0
            cells = [
                f"{r['kinds_ms'].get(k, 0.0):.0f} ({100 * r['kinds_ms'].get(k, 0.0) / total:.0f}%)"
                for k in kinds
            ]
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['side']} | {r['wall_ms']:.0f} | "
                f"{r['wall_ms'] / r['batch']:.1f} | {r['minor_faults']} | "
                f"{r.get('system_ms', float('nan')):.0f} | " + " | ".join(cells) + " |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(TIMM), choices=list(TIMM))
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--impl", default="auto", help="our depthwise impl (default auto)")
    parser.add_argument(
        "--retain-memory",
        action="store_true",
        help="both processes keep freed heap memory (sepconv_jax.runtime.retain_freed_memory)",
    )
    parser.add_argument("--out", default="benchmarks/results/cpu_profile")
    args = parser.parse_args()
    if args.retain_memory:
        from sepconv_jax import runtime

        runtime.retain_freed_memory()  # before the first JAX computation
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    rows = []
    for name in args.models:
        for batch in args.batches:
            rows += profile_ours(name, batch, args.image_size, args.reps, print, args.impl)
    threads = None
    if not args.no_torch:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(1) as pool:
            theirs, threads = pool.apply(
                _torch_worker,
                (args.models, args.batches, args.image_size, args.reps, args.retain_memory),
            )
        rows += theirs
    rows.sort(key=lambda r: (r["mode"], r["model"], r["batch"], r["side"]))
    text = report(rows, machine, args, threads)
    (out / "profile.json").write_text(
        json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2) + "\n"
    )
    (out / "profile.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
