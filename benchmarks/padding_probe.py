"""Why timm-converted models run slower than Keras-padded ones on CPU: a probe.

timm's (non-``tf_``) models pad a stride-2 ``k x k`` convolution ``(k // 2, k // 2)``
(``stride2_padding="symmetric"``); Keras pads ``"SAME"``, ``(k // 2 - 1, k // 2)`` on
even sizes. Same mult-adds, same shapes. This script times, side by side in one
process on the default backend (best of ``--repeats`` calls after a warm-up):

1. EfficientNet-B0 inference (``impl="auto"``, batch ``--batch``, 224x224) with
   ``stride2_padding="same"`` and ``"symmetric"``;
2. the strided depthwise layer alone and inside a block (an elementwise producer,
   the depthwise step, an elementwise consumer, as batch norm and an activation
   sit around it in the model), with SiLU and with ReLU, for each padding, at
   EfficientNet-B0's first strided depthwise shape (112x112, C96, 3x3, stride 2).

Writes ``padding.json`` and ``padding.md`` to ``--out``.

Usage::

    python benchmarks/padding_probe.py --out benchmarks/results/zoo/padding
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax

from sepconv_jax import models, ops
from sepconv_jax.apps.bench import machine_info
from sepconv_jax.apps.timing import time_jitted


def _best_ms(fn, *args, repeats: int) -> float:
    return 1e3 * time_jitted(fn, args, max_reps=repeats)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results/zoo/padding")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    rows = []
    images = jax.random.normal(jax.random.key(0), (args.batch, 224, 224, 3))
    for padding in ("same", "symmetric"):
        model = models.EfficientNetB0(num_classes=1000, stride2_padding=padding)
        variables = jax.jit(model.init)(jax.random.key(1), images[:1])
        ms = _best_ms(
            lambda v, x, model=model: model.apply(v, x, train=False),
            variables,
            images,
            repeats=args.repeats,
        )
        rows.append({"what": "EfficientNet-B0 inference", "padding": padding, "ms": ms})
        print(rows[-1], flush=True)
    x = jax.random.normal(jax.random.key(2), (args.batch, 112, 112, 96))
    kernel = jax.random.normal(jax.random.key(3), (3, 3, 1, 96)) / 3
    for padding_name, padding in (("same", "SAME"), ("symmetric", ((1, 1), (1, 1)))):

        def alone(x, k, padding=padding):
            return ops.depthwise_conv(x, k, strides=2, padding=padding)

        for activation_name, activation in (("silu", jax.nn.silu), ("relu", jax.nn.relu)):

            def block(x, k, padding=padding, activation=activation):
                h = activation(1.1 * x + 0.2)
                y = ops.depthwise_conv(h, k, strides=2, padding=padding)
                return activation(0.9 * y + 0.1)

            ms = _best_ms(block, x, kernel, repeats=args.repeats)
            rows.append(
                {
                    "what": f"{activation_name} -> depthwise 112x112 C96 k3 s2 -> {activation_name}",
                    "padding": padding_name,
                    "ms": ms,
                }
            )
            print(rows[-1], flush=True)
        ms = _best_ms(alone, x, kernel, repeats=args.repeats)
        rows.append(
            {"what": "depthwise 112x112 C96 k3 s2 alone", "padding": padding_name, "ms": ms}
        )
        print(rows[-1], flush=True)
    producer = _best_ms(lambda x: jax.nn.silu(1.1 * x + 0.2), x, repeats=args.repeats)
    rows.append({"what": "silu alone on the 112x112 C96 input", "padding": "-", "ms": producer})
    table = ["| what | padding | ms |", "|---|---|---:|"]
    table += [f"| {r['what']} | {r['padding']} | {r['ms']:.2f} |" for r in rows]
    report = [
        "# Stride-2 padding: same vs symmetric, impl='auto'",
        "",
        f"{machine['cpu']}, {machine['cores']} cores, jax {machine['jax']} "
        f"({machine['backend']}); batch {args.batch}, float32, best of {args.repeats} calls.",
        "",
        *table,
        "",
    ]
    (out / "padding.json").write_text(
        json.dumps({"machine": machine, "batch": args.batch, "rows": rows}, indent=2) + "\n"
    )
    (out / "padding.md").write_text("\n".join(report))
    print("\n".join(table))


if __name__ == "__main__":
    main()
