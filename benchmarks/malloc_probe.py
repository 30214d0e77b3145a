"""Page faults and whole-model time with glibc's default allocator settings and with
large allocations kept on the heap, side by side in one process.

XLA:CPU allocates each call's temporaries (one arena per program) and outputs with
``malloc``. glibc serves a request of ``M_MMAP_THRESHOLD`` or more (dynamically up to
32 MiB on 64-bit) by ``mmap`` and unmaps it on ``free``, so every call gets fresh
pages from the kernel: one minor page fault and a zero-fill per 4 KiB touched. The
probe times one inference call and one training step of a timm model (converted),
alternating, call by call, between

* ``default``: glibc's steady-state settings (:func:`restore_defaults`:
  a 32 MiB mmap threshold, 64 MiB trim threshold;
  the first model's first mode is also timed before any ``mallopt`` call, as
  ``untouched``), and
* ``heap``: ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``
  (:func:`keep_heap`): no ``mmap`` for large blocks
  and freed memory stays with the process,

and reports the median time and the minor page faults per call for each.

Usage::

    python benchmarks/malloc_probe.py --out benchmarks/results/cpu_profile/malloc
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import json
import time
from pathlib import Path

import jax
import numpy as np

from sepconv_jax.apps.bench import machine_info

# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

_DEFAULT_MMAP_MAX = 65536
_DYNAMIC_MMAP_THRESHOLD_MAX = 32 * 2**20
_KEPT_TRIM_THRESHOLD = 2**30


@functools.cache
def _mallopt():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


def _apply(settings: tuple[tuple[int, int], ...]) -> bool:
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return all(mallopt(option, value) == 1 for option, value in settings)


def keep_heap() -> bool:
    """Large blocks from the heap, and freed memory kept by the process (see above)."""
    return _apply(((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _KEPT_TRIM_THRESHOLD)))


def restore_defaults() -> bool:
    """glibc's steady-state settings for a program that frees large blocks."""
    return _apply(
        (
            (_M_MMAP_MAX, _DEFAULT_MMAP_MAX),
            (_M_MMAP_THRESHOLD, _DYNAMIC_MMAP_THRESHOLD_MAX),
            (_M_TRIM_THRESHOLD, 2 * _DYNAMIC_MMAP_THRESHOLD_MAX),
        )
    )


class cpu_memory:  # the two settings under one name
    keep_heap = staticmethod(keep_heap)
    restore_defaults = staticmethod(restore_defaults)


TIMM = {
    "MobileNetV2": "mobilenetv2_100",
    "EfficientNetB0": "efficientnet_b0",
    "ConvNeXtTiny": "convnext_tiny",
}


def _faults() -> int:
    return int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[7])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["MobileNetV2", "EfficientNetB0"])
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/cpu_profile/malloc")
    args = parser.parse_args()
    import optax
    import timm

    from sepconv_jax.apps.train import train_step
    from sepconv_jax.interop.timm import convert

    rows = []
    untouched = True  # glibc's own dynamic settings hold until the first mallopt
    for name in args.models:
        module, variables = convert(timm.create_model(TIMM[name], pretrained=False))
        optimizer = optax.sgd(0.01, momentum=0.9)
        state = {k: v for k, v in variables.items() if k != "params"}
        step = train_step(module, optimizer, train=True, rngs={"dropout": jax.random.key(1)})
        for batch in args.batches:
            images = jax.random.normal(
                jax.random.key(0), (batch, args.image_size, args.image_size, 3)
            )
            labels = jax.numpy.zeros((batch,), int)
            jobs = {
                "inference": (
                    lambda v, x, module=module: module.apply(v, x, train=False),
                    (variables, images),
                ),
                "training": (
                    step,
                    (
                        variables["params"],
                        state,
                        optimizer.init(variables["params"]),
                        images,
                        labels,
                    ),
                ),
            }
            for mode, (fn, fargs) in jobs.items():
                compiled = jax.jit(fn).lower(*fargs).compile()
                times: dict[str, list] = {"default": [], "heap": []}
                counts: dict[str, list] = {"default": [], "heap": []}
                if untouched:
                    jax.block_until_ready(compiled(*fargs))
                    times["untouched"], counts["untouched"] = [], []
                    for _ in range(args.rounds):
                        before, start = _faults(), time.perf_counter()
                        jax.block_until_ready(compiled(*fargs))
                        times["untouched"].append(time.perf_counter() - start)
                        counts["untouched"].append(_faults() - before)
                    untouched = False
                for setting in ("default", "heap"):  # warm up both
                    (cpu_memory.keep_heap if setting == "heap" else cpu_memory.restore_defaults)()
                    jax.block_until_ready(compiled(*fargs))
                for _ in range(args.rounds):
                    for setting in ("default", "heap"):
                        (
                            cpu_memory.keep_heap
                            if setting == "heap"
                            else cpu_memory.restore_defaults
                        )()
                        jax.block_until_ready(compiled(*fargs))  # one call to settle the heap
                        before, start = _faults(), time.perf_counter()
                        jax.block_until_ready(compiled(*fargs))
                        times[setting].append(time.perf_counter() - start)
                        counts[setting].append(_faults() - before)
                cpu_memory.restore_defaults()
                row = {"model": name, "batch": batch, "mode": mode}
                for setting in times:
                    row[f"{setting}_ms"] = 1e3 * float(np.median(times[setting]))
                    row[f"{setting}_faults"] = int(np.median(counts[setting]))
                row["speedup"] = row["default_ms"] / row["heap_ms"]
                rows.append(row)
                print(row, flush=True)
    machine = machine_info()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# glibc defaults against large blocks kept on the heap, one process, interleaved",
        "",
        f"{machine['cpu']}, {machine['cores']} cores (shared with other work), jax "
        f"{machine['jax']}; {args.image_size}x{args.image_size} float32, median of "
        f"{args.rounds} alternating calls each.",
        "",
        "| model | batch | mode | default ms | heap ms | speedup | default faults/call "
        "| heap faults/call |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['model']} | {r['batch']} | {r['mode']} | {r['default_ms']:.0f} | "
        f"{r['heap_ms']:.0f} | {r['speedup']:.2f} | {r['default_faults']} | {r['heap_faults']} |"
        for r in rows
    ]
    (out / "malloc.json").write_text(
        json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2) + "\n"
    )
    (out / "malloc.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
