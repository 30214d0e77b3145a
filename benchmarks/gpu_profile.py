"""Where a training step's device time goes, per kind of operation, from a profile.

For each impl (``--impls``) it compiles the training step of ``--architecture``
(:mod:`model_steps`, the optimizer update under a ``jax.named_scope("optimizer")``),
takes a :func:`jax.profiler.trace` of ``--steps`` steps after a warm-up, and sums
the device time of every XLA operation of the step's module by kind:

======================== =================================================================
kind                     what falls in it
======================== =================================================================
transposes/copies        ``transpose``/``copy`` and fusions of only layout operations
                         (wherever they are, also around Pallas calls)
optimizer                operations under the ``optimizer`` scope
fused separable          the fused Pallas kernel (a Pallas op under ``separable_conv``)
depthwise fwd            operations under the ``depthwise_conv`` primitive's scope (any
                         impl; the lowering rules open one per primitive), else grouped
                         convolutions (``feature_group_count > 1``) outside a transpose
depthwise bwd input      under ``depthwise_conv_input_transpose``; else grouped
                         convolutions under ``transpose(...)``, cuDNN's
                         ``convBackwardInput``
depthwise bwd kernel     under ``depthwise_conv_kernel_transpose``; else
                         ``batch_group_count > 1`` convolutions, ``convBackwardFilter``
pallas (other)           any other Pallas/Triton/Mosaic call, and interpret-mode loops
pointwise/matmul         1x1 and dense convolutions, dots, GEMM custom calls
batch norm               operations under a ``BatchNorm`` or ``*_bn`` module scope
reductions               other ``reduce`` operations and fusions holding one
elementwise/other        the rest
======================== =================================================================

The first matching row wins, top to bottom. The op's kind is read from the compiled
HLO text (opcode, ``custom_call_target``, group counts, the ``op_name`` metadata
that carries the name scopes), and its time from the trace's device events (on a
GPU the ``/device:`` planes' kernels; on CPU the host's per-thunk events), nested
events counted once. Writes ``profile.json`` (per impl and kind: ms per step,
share, op count, the 10 slowest ops; the total, and the time in Pallas calls
whatever their kind) and ``profile.md``, and prints the table.

Usage (from the repository root, ``PYTHONPATH=.``)::

    python benchmarks/gpu_profile.py --out benchmarks/results/gpu/profile   # on a GPU
    python benchmarks/gpu_profile.py --dry-run --out /tmp/profile           # anywhere
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import json
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_steps

KINDS = (
    "depthwise fwd",
    "depthwise bwd input",
    "depthwise bwd kernel",
    "fused separable",
    "pallas (other)",
    "pointwise/matmul",
    "batch norm",
    "optimizer",
    "transposes/copies",
    "reductions",
    "elementwise/other",
)

_LAYOUT_OPS = {
    "parameter",
    "transpose",
    "copy",
    "bitcast",
    "reshape",
    "constant",
    "broadcast",
    "tuple",
    "get-tuple-element",
    "slice",
    "concatenate",
    "pad",
    "convert",
}

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


@dataclasses.dataclass(frozen=True)
class Instr:
    """One HLO instruction: its name, opcode and the rest of its line."""

    name: str
    opcode: str
    line: str

    def attr(self, key: str) -> str | None:
        match = re.search(rf'\b{key}=("[^"]*"|[^\s,]+)', self.line)
        return match.group(1).strip('"') if match else None

    @property
    def op_name(self) -> str:
        return self.attr("op_name") or ""


def parse_hlo(text: str) -> tuple[dict[str, Instr], dict[str, list[Instr]]]:
    """Every instruction by name, and every computation's instructions by name."""
    instrs: dict[str, Instr] = {}
    computations: dict[str, list[Instr]] = {}
    current: list[Instr] | None = None
    for line in text.splitlines():
        match = _INSTR.match(line)
        if match:
            instr = Instr(match.group(1), match.group(3), line)
            instrs.setdefault(instr.name, instr)
            if current is not None:
                current.append(instr)
            continue
        if line.strip() == "}":
            current = None
            continue
        head = _COMPUTATION.match(line)
        if head and "=" not in line.split("{")[0]:
            current = computations.setdefault(head.group(1), [])
    return instrs, computations


def _called(
    instr: Instr, computations: dict[str, list[Instr]], seen: set[str] | None = None
) -> list[Instr]:
    """The instructions of the computations ``instr`` calls (fusions), recursively."""
    seen = set() if seen is None else seen
    names = re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", instr.line)
    found: list[Instr] = []
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        for inner in computations.get(name, []):
            found.append(inner)
            if inner.opcode in ("fusion", "call", "while"):
                found.extend(_called(inner, computations, seen))
    return found


def _conv_kind(instr: Instr) -> str | None:
    """The kind of a convolution (or cuDNN convolution call) outside the depthwise
    primitives' scopes; ``None`` for other ops."""
    target = (instr.attr("custom_call_target") or "").lower()
    if instr.opcode != "convolution" and "conv" not in target:
        return None
    groups = int(instr.attr("feature_group_count") or 1)
    batch_groups = int(instr.attr("batch_group_count") or 1)
    if batch_groups > 1 or (groups > 1 and "backwardfilter" in target):
        return "depthwise bwd kernel"
    if groups > 1:
        backward = "backwardinput" in target or "transpose(" in instr.op_name
        return "depthwise bwd input" if backward else "depthwise fwd"
    return "pointwise/matmul"


#: Name scopes of our primitives (their lowering rules open one each), and the kind.
_PRIMITIVE_SCOPES = (
    ("depthwise_conv_kernel_transpose", "depthwise bwd kernel"),
    ("depthwise_conv_input_transpose", "depthwise bwd input"),
    ("depthwise_conv", "depthwise fwd"),
)
_PALLAS_NAMES = (
    "pallas_call",
    "depthwise_forward",
    "depthwise_input_transpose",
    "depthwise_kernel_transpose",
    "sepconv_fused_separable",
)


def is_pallas(instr: Instr) -> bool:
    """A Pallas kernel: a Triton/Mosaic custom call, or (interpret mode) an operation
    inside a ``pallas_call`` or a named Pallas kernel's scope."""
    target = (instr.attr("custom_call_target") or "").lower()
    if any(key in target for key in ("triton", "mosaic", "pallas")):
        return True
    scopes = set(re.split(r"[()/]", instr.op_name))
    return bool(scopes & set(_PALLAS_NAMES)) or "sepconv_fused_separable" in instr.line


def classify(instr: Instr, computations: dict[str, list[Instr]]) -> str:
    """The kind of ``instr`` (see the module docstring's table)."""
    target = (instr.attr("custom_call_target") or "").lower()
    inner = _called(instr, computations)
    # A fusion is what it fuses; a loop is itself and its body.
    if instr.opcode == "fusion" and inner:
        ops = {i.opcode for i in inner}
    else:
        ops = {instr.opcode} | {i.opcode for i in inner}
    scopes = re.split(r"[()/]", instr.op_name)
    if ops <= _LAYOUT_OPS and ops & {"transpose", "copy"}:
        return "transposes/copies"
    if "optimizer" in scopes:
        return "optimizer"
    pallas = is_pallas(instr)
    if "separable_conv" in scopes and pallas:
        return "fused separable"
    for scope, kind in _PRIMITIVE_SCOPES:
        if scope in scopes:
            return kind
    for candidate in (instr, *inner):
        kind = _conv_kind(candidate)
        if kind is not None:
            return kind
    if pallas:
        return "pallas (other)"
    if "dot" in ops or "gemm" in target or "cublas" in target:
        return "pointwise/matmul"
    if any(s.startswith("BatchNorm") or s.endswith("_bn") for s in scopes):
        return "batch norm"
    if ops & {"reduce", "reduce-window"}:
        return "reductions"
    return "elementwise/other"


def device_events(xplane_path: str, module: str) -> list[tuple[str, float]]:
    """``(hlo_op, seconds)`` of the trace's events of HLO module ``module``: the
    ``/device:`` planes' when there are any, else the host's; an event inside an
    earlier one on its line (a thunk inside a loop) is not counted again."""
    from jax.profiler import ProfileData

    profile = ProfileData.from_file(xplane_path)
    by_plane: dict[str, list[tuple[str, float]]] = {}
    for plane in profile.planes:
        found = []
        for line in plane.lines:
            end = -1.0
            for event in sorted(line.events, key=lambda e: e.start_ns):
                stats = dict(event.stats)
                if stats.get("hlo_module") != module or "hlo_op" not in stats:
                    continue
                if event.start_ns < end:  # nested in the previous counted event
                    continue
                end = event.start_ns + event.duration_ns
                found.append((str(stats["hlo_op"]), event.duration_ns * 1e-9))
        if found:
            by_plane[plane.name] = found
    device = [e for name, events in by_plane.items() if name.startswith("/device:") for e in events]
    return device or [e for events in by_plane.values() for e in events]


def summarize(
    events: Iterable[tuple[str, float]], hlo_text: str, steps: int
) -> dict[str, dict[str, Any]]:
    """Per kind: ms per step, share of the step's device time, op count, slowest ops."""
    instrs, computations = parse_hlo(hlo_text)
    per_op: dict[str, float] = collections.defaultdict(float)
    for name, seconds in events:
        per_op[name] += seconds
    total = sum(per_op.values()) or 1.0
    table: dict[str, dict[str, Any]] = {}
    pallas_ms = 0.0
    for name, seconds in per_op.items():
        instr = instrs.get(name)
        kind = classify(instr, computations) if instr else "elementwise/other"
        row = table.setdefault(kind, {"ms_per_step": 0.0, "ops": 0, "slowest": []})
        row["ms_per_step"] += 1e3 * seconds / steps
        row["ops"] += 1
        row["slowest"].append((1e3 * seconds / steps, name))
        if instr is not None and is_pallas(instr):
            pallas_ms += 1e3 * seconds / steps
    for row in table.values():
        row["share"] = row["ms_per_step"] / (1e3 * total / steps)
        row["slowest"] = [
            {"op": n, "ms_per_step": ms} for ms, n in sorted(row["slowest"], reverse=True)[:10]
        ]
    summary = {kind: table[kind] for kind in KINDS if kind in table}
    return {
        "kinds": summary,
        "pallas_ms_per_step": pallas_ms,
        "total_ms_per_step": 1e3 * total / steps,
    }


def markdown(result: dict[str, Any]) -> str:
    impls = list(result["impls"])
    out = [
        f"## Device time per kind: {result['architecture']} training step, "
        f"{result['dtype']}, batch {result['batch']} ({result['machine']['device']})",
        "",
        "ms per step (share of the step's device time) from a jax.profiler trace of "
        f"{result['steps']} steps.",
        "",
        "| kind | " + " | ".join(impls) + " |",
        "|---|" + "---:|" * len(impls),
    ]
    for kind in (*KINDS, "total", "of which Pallas calls"):
        cells = []
        for impl in impls:
            rows = result["impls"][impl]["kinds"]
            if kind == "total":
                cells.append(f"{result['impls'][impl]['total_ms_per_step']:.2f}")
            elif kind == "of which Pallas calls":
                ms = result["impls"][impl]["pallas_ms_per_step"]
                cells.append(f"{ms:.2f}" if ms else "")
            elif kind in rows:
                cells.append(f"{rows[kind]['ms_per_step']:.2f} ({100 * rows[kind]['share']:.0f}%)")
            else:
                cells.append("")
        if any(cells):
            out.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def profile_step(args: argparse.Namespace, impl: str, trace_dir: Path) -> dict[str, Any]:
    """Compiles, warms up, traces ``args.steps`` steps of ``impl``, summarizes."""
    import optax

    config = {"model": args.architecture, "dtype": args.dtype, "batch": args.batch, "impl": impl}
    model = model_steps.build_model(args.architecture, impl, args.dtype, dry_run=args.dry_run)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    images = jax.random.normal(k1, (args.batch, args.image_size, args.image_size, 3))
    labels = jax.random.randint(k2, (args.batch,), 0, 1000)
    variables = jax.jit(lambda x: model.init(k3, x, train=False))(images)
    params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
    optimizer = optax.sgd(0.01, momentum=0.9)

    def step(params, state, opt_state, x, y):
        def loss_fn(p):
            logits, new_state = model.apply(
                {"params": p, **state}, x, train=True, mutable=list(state),
                rngs={"dropout": jax.random.key(1)},
            )  # fmt: skip
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, dict(new_state)

        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        with jax.named_scope("optimizer"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params, state, opt_state, loss

    call_args = [params, state, optimizer.init(params), images, labels]
    compiled = jax.jit(step).lower(*call_args).compile()
    jax.block_until_ready(compiled(*call_args))
    with jax.profiler.trace(str(trace_dir)):
        for _ in range(args.steps):
            jax.block_until_ready(compiled(*call_args))
    paths = sorted(glob.glob(str(trace_dir / "**" / "*.xplane.pb"), recursive=True))
    if not paths:
        raise RuntimeError(f"jax.profiler.trace wrote no .xplane.pb under {trace_dir}")
    hlo = compiled.as_text()
    module = re.search(r"^HloModule\s+([\w.\-]+)", hlo, re.M)
    events = device_events(paths[-1], module.group(1) if module else "jit_step")
    return {**config, **summarize(events, hlo, args.steps), "trace": paths[-1]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for profile.*")
    parser.add_argument("--architecture", choices=model_steps.ARCHITECTURES, default="MobileNetV2")
    parser.add_argument("--dtype", choices=model_steps.DTYPES, default="bfloat16")
    parser.add_argument("--batch", type=int, default=None, help="default 256 (2 dry run)")
    parser.add_argument("--impls", nargs="+", choices=model_steps.IMPLS, default=["xla", "pallas"])
    parser.add_argument("--steps", type=int, default=None, help="traced steps (5, 1 dry run)")
    parser.add_argument("--image-size", type=int, default=None, help="default 224 (16 dry run)")
    parser.add_argument("--keep-traces", action="store_true", help="keep the .xplane.pb files")
    parser.add_argument("--dry-run", action="store_true", help="a stand-in model, tiny sizes")
    args = parser.parse_args(argv)
    args.batch = args.batch or (2 if args.dry_run else 256)
    args.steps = args.steps or (1 if args.dry_run else 5)
    args.image_size = args.image_size or (16 if args.dry_run else 224)
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "machine": model_steps.machine(),
        "architecture": args.architecture,
        "dtype": args.dtype,
        "batch": args.batch,
        "steps": args.steps,
        "dry_run": args.dry_run,
        "impls": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        for impl in args.impls:
            trace_dir = (args.out if args.keep_traces else Path(scratch)) / f"trace-{impl}"
            try:
                result["impls"][impl] = profile_step(args, impl, trace_dir)
            except Exception as error:  # recorded, and the next impl runs
                result.setdefault("errors", {})[impl] = f"{type(error).__name__}: {error}"[:400]
                print(f"impl={impl}: failed: {result['errors'][impl]}", file=sys.stderr)
            (args.out / "profile.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (args.out / "profile.md").write_text(text)
    print(text)
    return 0 if not result.get("errors") else 1


if __name__ == "__main__":
    sys.exit(main())
