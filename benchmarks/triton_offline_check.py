"""Compiles the Pallas Triton kernels for a GPU target on a machine without a GPU.

Usage (from the repository root)::

    python benchmarks/triton_offline_check.py --out /tmp/ttir
    python benchmarks/triton_offline_check.py --out /tmp/ttir --triton-python /path/to/python

Step 1 (this interpreter, JAX): lowers forward plus both gradients of
``depthwise_conv(impl="pallas")`` for ``cuda`` on a few MobileNetV2/EfficientNet-B0
layers at batch 64 and a 1-D case with a depth multiplier, in float32 and bfloat16,
and writes each Pallas kernel's Triton IR (``.ttir``, text) to ``--out``.

Step 2 (``--triton-python``: an interpreter with the ``triton`` package, e.g. a
separate virtual environment with ``pip install triton``; Triton's MLIR and JAX's
must not share a process): compiles every ``.ttir`` for ``--arch`` (default
``sm_90a``, an H100) to PTX, runs the ``ptxas`` that ships with Triton, and prints per
kernel: global loads (how many are 16-, 8-byte vectors), stores, registers per
thread, spilled bytes and shared memory. No GPU is used; this checks that the
kernels compile, that their loads are vectorized and what they cost in registers,
not their speed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

# (name, x shape, kernel shape, keyword arguments)
CASES = (
    ("112x112-C32-k3-s1", (64, 112, 112, 32), (3, 3, 1, 32), dict(strides=1)),
    ("56x56-C144-k3-s2", (64, 56, 56, 144), (3, 3, 1, 144), dict(strides=2)),
    ("14x14-C672-k5-s2", (64, 14, 14, 672), (5, 5, 1, 672), dict(strides=2)),
    ("1d-L3000-C64-m2", (4, 3000, 64), (5, 1, 128), dict(padding="CAUSAL", dilation=2)),
)


def dump(out: Path) -> list[str]:
    """Step 1: every Pallas kernel's Triton IR, one ``.ttir`` per kernel."""
    import jax
    from jax._src.pallas.triton import lowering  # the one hook into JAX internals

    from sepconv_jax import ops

    written: list[str] = []
    original = lowering.lower_jaxpr_to_triton_module
    tag = [""]

    def capture(*args, **kwargs):
        result = original(*args, **kwargs)
        text = result.module.operation.get_asm(enable_debug_info=False)
        kernel = re.search(r"tt\.func public @(\w+)", text).group(1)
        path = out / f"{tag[0]}-{kernel}.ttir"
        path.write_text(text)
        written.append(str(path))
        return result

    lowering.lower_jaxpr_to_triton_module = capture
    try:
        for name, xshape, kshape, kw in CASES:
            for dtype in ("float32", "bfloat16"):
                tag[0] = f"{name}-{dtype}"

                def f(x, kernel, g, kw=kw):
                    conv = lambda x, k: ops.depthwise_conv(x, k, impl="pallas", **kw)
                    y, vjp = jax.vjp(conv, x, kernel)
                    return y, *vjp(g)

                x = jax.ShapeDtypeStruct(xshape, dtype)
                kernel = jax.ShapeDtypeStruct(kshape, dtype)
                y = jax.eval_shape(
                    lambda x, k, kw=kw: ops.depthwise_conv(x, k, impl="xla", **kw), x, kernel
                )
                jax.jit(f).trace(x, kernel, y).lower(lowering_platforms=("cuda",))
    finally:
        lowering.lower_jaxpr_to_triton_module = original
    return written


def compile_all(pattern: str, arch: str, num_warps: int) -> list[dict]:
    """Step 2 (run under an interpreter that has ``triton``)."""
    import triton
    from triton.backends.compiler import GPUTarget

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    capability = int(re.sub(r"\D", "", arch))
    rows = []
    for path in sorted(glob.glob(pattern)):
        # Every kernel's module names its num_warps only in the custom call, not in
        # the IR: the defaults use 4.
        row = {"kernel": os.path.basename(path)}
        try:
            compiled = triton.compile(
                path,
                target=GPUTarget("cuda", capability, 32),
                options={"num_warps": num_warps, "num_stages": 1},
            )
            ptx = compiled.asm["ptx"]
            ptx_path = path.replace(".ttir", ".ptx")
            Path(ptx_path).write_text(ptx)
            loads = re.findall(r"ld\.global[^\n]*", ptx)
            report = subprocess.run(
                [str(ptxas), "-v", "--gpu-name", arch, ptx_path, "-o", os.devnull],
                capture_output=True,
                text=True,
                check=True,
            ).stderr
            row.update(
                loads=len(loads),
                loads_16B=sum(".v4.b32" in line or ".v2.b64" in line for line in loads),
                loads_8B=sum(".v2.b32" in line or ".v4.b16" in line for line in loads),
                stores=len(re.findall(r"st\.global", ptx)),
                registers=int(re.search(r"Used (\d+) registers", report).group(1)),
                spill_bytes=int(re.search(r"(\d+) bytes spill stores", report).group(1)),
                shared_bytes=compiled.metadata.shared,
            )
        except Exception as e:  # report every kernel, then the failures
            row["error"] = f"{type(e).__name__}: {str(e)[:500]}"
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--triton-python", help="an interpreter with triton (step 2)")
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--num-warps", type=int, default=4)
    parser.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    pattern = str(args.out / "*.ttir")
    if args.compile_only:
        print(json.dumps(compile_all(pattern, args.arch, args.num_warps)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in glob.glob(pattern):
        os.remove(stale)
    written = dump(args.out)
    print(f"wrote {len(written)} Triton modules to {args.out}")
    if not args.triton_python:
        return 0
    result = subprocess.run(
        [args.triton_python, __file__, "--compile-only", "--out", str(args.out),
         "--arch", args.arch, "--num-warps", str(args.num_warps)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
        return result.returncode
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    columns = ("loads", "loads_16B", "loads_8B", "stores", "registers", "spill_bytes")
    print("| kernel | " + " | ".join(columns) + " | shared_bytes |")
    print("| --- |" + " --- |" * (len(columns) + 1))
    for row in rows:
        if "error" in row:
            print(f"| {row['kernel']} | error: {row['error']} |")
        else:
            values = [row[c] for c in (*columns, "shared_bytes")]
            print(f"| {row['kernel']} | " + " | ".join(str(v) for v in values) + " |")
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
