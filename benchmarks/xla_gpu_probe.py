"""Where a model's time goes with ``impl="xla"`` on a GPU: the depthwise layer alone,
inside a separable block, and inside MobileNetV2, against ``impl="pallas"``.

On one H100 a MobileNetV2 training step with ``impl="xla"`` ran hundreds of times
slower than with ``impl="pallas"``, while each depthwise layer timed alone was within
2x either way. This script times the same depthwise layer (forward+backward, batch
64, float32) in growing contexts, all compiled one at a time, and writes the
optimized HLO of each XLA program so that the kernels XLA chose can be read:

1. the depthwise convolution alone;
2. depthwise -> ReLU6 -> 1x1 convolution (the separable step of a block);
3. an inverted-residual block (1x1 expand, batch norm, depthwise, 1x1 project);
4. MobileNetV2's forward pass (inference) and its training step.

Writes ``probe.json`` and one ``*.hlo.txt`` per XLA program to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from sepconv_jax import depthwise_conv
from sepconv_jax.apps.bench import machine_info
from sepconv_jax.apps.train import train_step
from sepconv_jax.models import MobileNetV2
from sepconv_jax.models.blocks import InvertedResidual


def _time(compiled, args, reps: int = 5) -> float:
    jax.block_until_ready(compiled(*args))
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    return best


def _grad_sum(f):
    def loss(*args):
        return jnp.sum(f(*args) ** 2)

    return jax.grad(loss, argnums=tuple(range(2)))


def cases(impl: str, batch: int):
    key = jax.random.key(0)
    x = jax.random.normal(key, (batch, 56, 56, 144))
    dk = jax.random.normal(key, (3, 3, 1, 144)) * 0.1
    pk = jax.random.normal(key, (1, 1, 144, 24)) * 0.1

    def depthwise(x, dk):
        return depthwise_conv(x, dk, padding="SAME", impl=impl)

    def separable(x, dk):
        y = jnp.clip(depthwise(x, dk), 0, 6)
        return jax.lax.conv_general_dilated(
            y, pk, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    yield "depthwise fwd+bwd", _grad_sum(depthwise), (x, dk)
    yield "depthwise->relu6->1x1 fwd+bwd", _grad_sum(separable), (x, dk)

    block = InvertedResidual(features=24, expand_ratio=6, strides=1, impl=impl)
    xb = jax.random.normal(key, (batch, 56, 56, 24))
    variables = block.init(key, xb, train=False)

    def block_loss(params, x):
        y, _ = block.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(y**2)

    yield "inverted residual fwd+bwd", jax.grad(block_loss), (variables["params"], xb)

    model = MobileNetV2(num_classes=1000, impl=impl)
    images = jax.random.normal(key, (batch, 224, 224, 3))
    mv = model.init(key, images, train=False)
    yield "MobileNetV2 inference", lambda v, x: model.apply(v, x, train=False), (mv, images)
    optimizer = optax.sgd(0.01, momentum=0.9)
    labels = jnp.zeros((batch,), jnp.int32)
    step = train_step(model, optimizer, train=True)
    state = {"batch_stats": mv["batch_stats"]}
    args = (mv["params"], state, optimizer.init(mv["params"]), images, labels)
    yield "MobileNetV2 train step", step, args


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--impls", nargs="+", default=["xla", "pallas"])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for impl in args.impls:
        for name, fn, fn_args in cases(impl, args.batch):
            start = time.perf_counter()
            compiled = jax.jit(fn).lower(*fn_args).compile()
            compile_s = time.perf_counter() - start
            ms = 1e3 * _time(compiled, fn_args)
            rows.append(dict(case=name, impl=impl, ms=ms, compile_s=compile_s))
            print(f"{name:34s} {impl:7s} {ms:10.3f} ms (compiled in {compile_s:.1f} s)", flush=True)
            if impl == "xla":
                slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
                (args.out / f"{slug}.hlo.txt").write_text(compiled.as_text())
    result = dict(machine=machine_info(), batch=args.batch, rows=rows)
    (args.out / "probe.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
