"""The three depthwise maps of one layer, per impl, timed in turn in one process.

For one channels-last layer (``--shape N,H,W,C``, ``--stride``, ``--window``) and each
impl of ``--impls``, compiles the forward map, the input gradient (``vjp`` in ``x``)
and the kernel gradient (``vjp`` in the kernel), then runs ``--rounds`` rounds that
call each program for ``--slice`` seconds in turn, so the machine's drift falls on
all of them alike. Prints the median time per call of each map and impl (ms).

Usage::

    python benchmarks/depthwise_maps.py --shape 8,56,56,144 --impls shift native
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from sepconv_jax import ops, runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="8,56,56,144", help="N,H,W,C")
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--impls", nargs="+", default=["shift", "native"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--slice", type=float, default=0.03, help="seconds per program per round")
    args = parser.parse_args()
    runtime.retain_freed_memory()
    shape = tuple(int(v) for v in args.shape.split(","))
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    k = rng.standard_normal((args.window, args.window, 1, shape[-1])).astype(np.float32)
    programs = {}
    for impl in args.impls:

        def f(x, k, impl=impl):
            return ops.depthwise_conv(x, k, strides=args.stride, impl=impl)

        g = rng.standard_normal(jax.eval_shape(f, x, k).shape).astype(np.float32)
        programs[impl, "forward"] = (jax.jit(f), (x, k))
        programs[impl, "input grad"] = (
            jax.jit(lambda k, g, f=f: jax.vjp(lambda x: f(x, k), x)[1](g)[0]),
            (k, g),
        )
        programs[impl, "kernel grad"] = (
            jax.jit(lambda x, g, f=f: jax.vjp(lambda k: f(x, k), k)[1](g)[0]),
            (x, g),
        )
    for fn, fn_args in programs.values():
        jax.block_until_ready(fn(*fn_args))  # compile and warm up
    times: dict = {key: [] for key in programs}
    for _ in range(args.rounds):
        for key, (fn, fn_args) in programs.items():
            start, calls = time.perf_counter(), 0
            while time.perf_counter() - start < args.slice:
                jax.block_until_ready(fn(*fn_args))
                calls += 1
            times[key].append((time.perf_counter() - start) / calls)
    print(f"{args.shape} window {args.window} stride {args.stride}, ms per call:")
    for name in ("forward", "input grad", "kernel grad"):
        cells = "  ".join(f"{impl} {1e3 * np.median(times[impl, name]):.3f}" for impl in args.impls)
        print(f"  {name:12s} {cells}")


if __name__ == "__main__":
    main()
