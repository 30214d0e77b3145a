"""``make device-check``: the GPU measurements in one run of at most 8 minutes.

The steps run in this order, each in its own process under a hard time limit, and
each writes its results (and its log) under ``--out`` before the next starts:

1. ``fused``: the fused separable kernel against the unfused pair
   (``benchmarks/fused_tune.py``);
2. ``models``: MobileNetV2 and EfficientNet-B0 training steps in bfloat16 and
   float32 at batch 256 and 64, with ``impl="auto"``, ``"xla"`` and ``"pallas"``
   (``benchmarks/model_steps.py``);
3. ``profile``: where the MobileNetV2 bfloat16 training step's device time goes,
   per kind of operation, for ``"xla"`` and ``"pallas"`` (``benchmarks/gpu_profile.py``);
4. ``layers``: the depthwise layers table, every impl against PyTorch's CUDA kernel
   (``benchmarks/pallas_tune.py --no-sweep``);
5. ``tests``: the tests marked ``accelerator`` (every impl against float64 on the
   device).

Each step has a planned device-time budget (:data:`STEPS`); the steps' own
``--budget`` options are set below it so that they end on their own, and the hard
limit stops a step that does not. The budgets sum to at most 480 s.
``device_check.json`` (per step: command, budget, wall time, exit status) is
rewritten after every step.

``--dry-run`` runs every step here, on any machine, at the steps' tiny sizes
(Pallas in interpret mode on CPU), without the hard limits (a CPU is slower than
the device at everything), and prints each step's planned device budget beside
the wall time it took: it proves the sequence, not the speed.

Usage (from the repository root)::

    python benchmarks/device_check.py --out benchmarks/results/gpu            # on a GPU
    python benchmarks/device_check.py --dry-run --out /tmp/device-check       # anywhere
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

#: The most device time one ``make device-check`` may take, in seconds.
TOTAL_BUDGET_S = 480.0


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: its name, its command (``{out}`` is its output directory), the
    planned device seconds (the hard limit on a device), and the command's extra
    arguments for a dry run."""

    name: str
    argv: tuple[str, ...]
    budget_s: float
    dry_run: tuple[str, ...]


STEPS: tuple[Step, ...] = (
    Step(
        "fused",
        ("benchmarks/fused_tune.py", "--out", "{out}", "--budget", "55"),
        80.0,
        ("--quick", "--dtypes", "float32"),
    ),
    Step(
        "models",
        (
            "benchmarks/model_steps.py",
            "--out",
            "{out}",
            "--budget",
            "185",
            "--compile-threads",
            "6",
        ),
        225.0,
        # Every configuration of one dtype, however slow this machine compiles.
        ("--dry-run", "--dtypes", "float32", "--compile-threads", "2", "--budget", "1e9"),
    ),
    Step(
        "profile",
        ("benchmarks/gpu_profile.py", "--out", "{out}", "--impls", "xla", "pallas"),
        45.0,
        ("--dry-run",),
    ),
    Step(
        "layers",
        (
            "benchmarks/pallas_tune.py",
            "--out",
            "{out}",
            "--dtypes",
            "bfloat16",
            "float32",
            "--no-sweep",
            "--budget",
            "55",
        ),
        90.0,
        ("--quick",),
    ),
    Step(
        "tests",
        (
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "accelerator",
            "-W",
            "default::DeprecationWarning",
            "tests/test_accelerator.py",
            "tests/test_separable_op.py",
        ),
        40.0,
        (),
    ),
)


def planned_total(steps: Sequence[Step] | None = None) -> float:
    """The sum of the budgets of ``steps`` (default :data:`STEPS`: at most
    :data:`TOTAL_BUDGET_S`)."""
    return sum(step.budget_s for step in (STEPS if steps is None else steps))


def command(step: Step, out: Path, *, dry_run: bool, python: str = sys.executable) -> list[str]:
    """The step's command line; its output directory is ``out / step.name``."""
    argv = [arg.replace("{out}", str(out / step.name)) for arg in step.argv]
    if dry_run:
        argv += list(step.dry_run)
    return [python, *argv]


def run(out: Path, *, dry_run: bool, only: Sequence[str] | None = None, log=print) -> list[dict]:
    """Runs the steps in order (``only``: those named), writing ``device_check.json``
    after each. Returns one record per step."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    records = []
    total = planned_total()
    log(f"device-check{' (dry run)' if dry_run else ''}: {len(STEPS)} steps, "
        f"{total:.0f} s planned of {TOTAL_BUDGET_S:.0f} s")  # fmt: skip
    for step in STEPS:
        if only and step.name not in only:
            continue
        argv = command(step, out, dry_run=dry_run)
        log_path = out / f"{step.name}.log"
        record = {"step": step.name, "argv": argv[1:], "planned_device_s": step.budget_s}
        log(f"[{step.name}] planned device budget {step.budget_s:.0f} s: {' '.join(argv[1:])}")
        start = time.perf_counter()
        with log_path.open("w") as stream:
            try:
                proc = subprocess.run(
                    argv,
                    cwd=root,
                    env=env,
                    stdout=stream,
                    stderr=subprocess.STDOUT,
                    timeout=None if dry_run else step.budget_s,
                )
                record["returncode"] = proc.returncode
            except subprocess.TimeoutExpired:
                record["returncode"] = None
                record["timed_out"] = True
        record["wall_s"] = round(time.perf_counter() - start, 1)
        record["log"] = log_path.name
        records.append(record)
        status = "timed out" if record.get("timed_out") else f"exit {record['returncode']}"
        log(f"[{step.name}] {status} after {record['wall_s']:.1f} s "
            f"(planned {step.budget_s:.0f} s on the device)")  # fmt: skip
        summary = {"dry_run": dry_run, "planned_total_s": total, "steps": records}
        (out / "device_check.json").write_text(json.dumps(summary, indent=1) + "\n")
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results directory")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, any machine")
    parser.add_argument(
        "--only", nargs="+", choices=[s.name for s in STEPS], help="run only these steps"
    )
    args = parser.parse_args(argv)
    records = run(args.out, dry_run=args.dry_run, only=args.only)
    return 0 if all(r["returncode"] == 0 for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
