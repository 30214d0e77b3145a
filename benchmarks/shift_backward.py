"""The shift kernel's two backward maps for wide windows: each variant against the other.

For unstrided windows of more than 9 taps, ``sepconv_jax.kernels.shift`` computes the
input transpose as a forward tap loop over ``g`` with the flipped kernel
(``_FLIP_INPUT_TRANSPOSE``, on). For windows of more than 25 taps it can also reduce
the kernel transpose two window rows at a time (``_KERNEL_GRAD_GROUP_TAPS``, off:
faster on the layer, slower in the training step). This script times both maps with
each switch on and off, the variants taking turns call by call in one process, on
the depthwise shapes of ConvNeXt-T (7x7) and on 5x5 and 3x3 controls, and writes
``shift_backward.json`` and ``shift_backward.md``. With ``--model`` it times a whole
training step instead, with the library's settings against both switches off.

Usage::

    python benchmarks/shift_backward.py --out benchmarks/results/shift_backward
    python benchmarks/shift_backward.py --model ConvNeXtTiny --batch 8 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import jax
import numpy as np

from sepconv_jax import ops
from sepconv_jax.apps.bench import machine_info
from sepconv_jax.kernels import shift

# (batch, size, channels, window): ConvNeXt-T's four stages at 224x224, and controls.
SHAPES = [
    (8, 56, 96, 7),
    (8, 28, 192, 7),
    (8, 14, 384, 7),
    (8, 7, 768, 7),
    (32, 56, 96, 7),
    (8, 28, 192, 5),
    (8, 56, 144, 3),
]


@contextlib.contextmanager
def _switched(**values):
    """The shift kernel's module switches set to ``values`` for the block, then restored."""
    saved = {name: getattr(shift, name) for name in values}
    for name, value in values.items():
        setattr(shift, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(shift, name, value)


def _compile(fn, args):
    # A function object of its own per variant: jit would otherwise reuse the first
    # variant's trace.
    return jax.jit(lambda *a: fn(*a)).lower(*args).compile()


def _programs(batch, size, channels, window):
    """The input and kernel gradient of one layer, compiled with each switch off and on."""
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (batch, size, size, channels))
    kernel = jax.random.normal(keys[1], (window, window, 1, channels))
    g = jax.random.normal(keys[2], x.shape)

    def conv(x, kernel):
        return ops.depthwise_conv(x, kernel, padding=window // 2, impl="shift")

    def input_grad(x, kernel, g):
        return jax.vjp(lambda x: conv(x, kernel), x)[1](g)[0]

    def kernel_grad(x, kernel, g):
        return jax.vjp(lambda k: conv(x, k), kernel)[1](g)[0]

    programs = {}
    for name, fn, switch, on in (
        ("input grad", input_grad, "_FLIP_INPUT_TRANSPOSE", True),
        ("input grad", input_grad, "_FLIP_INPUT_TRANSPOSE", False),
        ("kernel grad", kernel_grad, "_KERNEL_GRAD_GROUP_TAPS", 14),
        ("kernel grad", kernel_grad, "_KERNEL_GRAD_GROUP_TAPS", 0),
    ):
        with _switched(**{switch: on}):
            programs[(name, bool(on))] = _compile(fn, (x, kernel, g))
    return programs, (x, kernel, g)


def measure(shape, rounds: int) -> list[dict]:
    programs, args = _programs(*shape)
    times: dict = {key: [] for key in programs}
    outputs = {key: np.asarray(fn(*args)) for key, fn in programs.items()}  # warm-up
    for _ in range(rounds):
        for key, fn in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[key].append(time.perf_counter() - start)
    rows = []
    for name in ("input grad", "kernel grad"):
        new, old = outputs[(name, True)], outputs[(name, False)]
        on, off = (1e3 * float(np.median(times[(name, v)])) for v in (True, False))
        rows.append(
            {
                "shape": list(shape),
                "map": name,
                "new_ms": on,
                "old_ms": off,
                "speedup": off / on,
                "max_rel_diff": float(np.max(np.abs(new - old)) / np.max(np.abs(old))),
            }
        )
        print(rows[-1], flush=True)
    return rows


def model_step(name: str, batch: int, image_size: int, rounds: int) -> dict:
    """One training step of a converted timm model with the library's settings of the
    two switches (``new``) and with both off (``old``)."""
    import timm

    from sepconv_jax.apps.bench_models import ZOO, model_jobs
    from sepconv_jax.interop.timm import convert

    module, variables = convert(timm.create_model(ZOO[name], pretrained=False))
    step, args = model_jobs(module, variables, batch=batch, image_size=image_size)["training"]
    # True: the library's settings of the two switches; False: both off.
    programs = {True: _compile(step, args)}
    with _switched(_FLIP_INPUT_TRANSPOSE=False, _KERNEL_GRAD_GROUP_TAPS=0):
        programs[False] = _compile(step, args)
    times: dict = {on: [] for on in programs}
    losses = {on: float(fn(*args)[-1]) for on, fn in programs.items()}  # warm-up
    for _ in range(rounds):
        for on, fn in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[on].append(time.perf_counter() - start)
    new, old = (1e3 * float(np.median(times[on])) for on in (True, False))
    row = {
        "model": name,
        "batch": batch,
        "image_size": image_size,
        "new_ms": new,
        "old_ms": old,
        "speedup": old / new,
        "losses": [losses[True], losses[False]],
    }
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results/shift_backward")
    parser.add_argument(
        "--model",
        help="instead: a whole training step of this bench --models model, both ways",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    if args.model:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        row = model_step(args.model, args.batch, args.image_size, args.rounds)
        row["machine"] = machine_info()
        path = out / f"step_{args.model}_b{args.batch}.json"
        path.write_text(json.dumps(row, indent=2) + "\n")
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    rows = [row for shape in SHAPES for row in measure(shape, args.rounds)]
    lines = [
        "# The shift kernel's backward maps for wide windows",
        "",
        f"{machine['cpu']}, {machine['cores']} cores, jax {machine['jax']}; channels-last "
        f"float32, stride 1, symmetric padding; median ms of {args.rounds} calls, the "
        "variants taking turns. New: input grad as a flipped forward loop (windows of "
        "more than 9 taps), kernel grad in groups of two window rows (more than 25 taps). "
        "Rows whose window is below a switch's threshold compile to one program both "
        "ways, and so measure the noise.",
        "",
        "| batch | size | channels | window | map | new ms | old ms | old / new | max rel. diff |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        b, s, c, k = r["shape"]
        lines.append(
            f"| {b} | {s} | {c} | {k}x{k} | {r['map']} | {r['new_ms']:.2f} | "
            f"{r['old_ms']:.2f} | {r['speedup']:.2f} | {r['max_rel_diff']:.1e} |"
        )
    text = "\n".join(lines) + "\n"
    (out / "shift_backward.md").write_text(text)
    (out / "shift_backward.json").write_text(
        json.dumps({"machine": machine, "rounds": args.rounds, "rows": rows}, indent=2) + "\n"
    )
    print(text)


if __name__ == "__main__":
    main()
