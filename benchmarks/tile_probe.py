"""Batch tiles in the shift kernel: whole models and one block, tile sizes side by side.

Inputs whose padded copy would reach ``shift.MATERIALIZE_BYTES`` run in tiles of
whole images (``shift.TILE_BYTES``; ``0``: no tiles, read in place with zero fill
per tap). For each tile size this script times, in one process with the variants
interleaved round by round (best of ``--rounds``), the inference call of the timm
MobileNetV2 and EfficientNet-B0 (converted) at each ``--batches``, and their
training steps with ``--training``. Writes ``tiles.json`` and ``tiles.md``.

Usage::

    python benchmarks/tile_probe.py --out benchmarks/results/cpu_profile/tiles
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax

from sepconv_jax.apps.bench import machine_info
from sepconv_jax.kernels import shift

TIMM = {
    "MobileNetV2": "mobilenetv2_100",
    "EfficientNetB0": "efficientnet_b0",
    "ConvNeXtTiny": "convnext_tiny",
}
MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["MobileNetV2", "EfficientNetB0"])
    parser.add_argument("--batches", nargs="+", type=int, default=[32])
    parser.add_argument("--tiles-mib", nargs="+", type=float, default=[0, 4, 8, 16])
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--training", action="store_true")
    parser.add_argument(
        "--tile-padded",
        action="store_true",
        help="also tile inputs padded up front (above the tile size); a nonzero tile "
        "size then names the variant '<size> MiB all'",
    )
    parser.add_argument("--out", default="benchmarks/results/cpu_profile/tiles")
    args = parser.parse_args()
    import optax
    import timm

    from sepconv_jax.apps.train import train_step
    from sepconv_jax.interop.timm import convert

    default = shift.TILE_BYTES
    rows = []
    for name in args.models:
        module, variables = convert(timm.create_model(TIMM[name], pretrained=False))
        optimizer = optax.sgd(0.01, momentum=0.9)
        state = {k: v for k, v in variables.items() if k != "params"}
        for batch in args.batches:
            size = args.image_size
            images = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
            labels = jax.numpy.zeros((batch,), int)
            modes = ["inference", "training"] if args.training else ["inference"]
            for mode in modes:
                compiled = {}
                for mib in args.tiles_mib:
                    shift.TILE_BYTES = int(mib * MIB)
                    shift._TILE_PADDED = args.tile_padded
                    if mode == "inference":
                        fargs = (variables, images)

                        def fn(v, x, module=module):
                            return module.apply(v, x, train=False)
                    else:
                        fargs = (
                            variables["params"],
                            state,
                            optimizer.init(variables["params"]),
                            images,
                            labels,
                        )
                        fn = train_step(
                            module, optimizer, train=True, rngs={"dropout": jax.random.key(1)}
                        )
                    compiled[mib] = jax.jit(fn).lower(*fargs).compile()
                    jax.block_until_ready(compiled[mib](*fargs))
                shift.TILE_BYTES = default
                shift._TILE_PADDED = False
                best = {mib: float("inf") for mib in args.tiles_mib}
                for _ in range(args.rounds):
                    for mib, call in compiled.items():
                        start = time.perf_counter()
                        jax.block_until_ready(call(*fargs))
                        best[mib] = min(best[mib], time.perf_counter() - start)
                row = {"model": name, "batch": batch, "mode": mode}
                row.update({f"{mib:g} MiB": 1e3 * t for mib, t in best.items()})
                rows.append(row)
                print(row, flush=True)
    machine = machine_info()
    cols = [f"{mib:g} MiB" for mib in args.tiles_mib]
    lines = [
        "# Shift-kernel batch tiles: ms per call by tile size (0: no tiles, in place)",
        "",
        f"{machine['cpu']}, {machine['cores']} cores (shared with other work), jax "
        f"{machine['jax']}; {args.image_size}x{args.image_size} float32, best of "
        f"{args.rounds} interleaved calls.",
        "",
        "| model | batch | mode | " + " | ".join(cols) + " |",
        "|---|---:|---|" + "---:|" * len(cols),
    ]
    lines += [
        f"| {r['model']} | {r['batch']} | {r['mode']} | "
        + " | ".join(f"{r[c]:.0f}" for c in cols)
        + " |"
        for r in rows
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiles.json").write_text(
        json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2) + "\n"
    )
    (out / "tiles.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
