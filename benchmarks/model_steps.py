"""Training-step speed of MobileNetV2 and EfficientNet-B0 per depthwise impl.

For every model, compute dtype, batch size and impl (``--architectures``,
``--dtypes``, ``--batches``, ``--impls``) it times one optimizer step (forward,
backward, SGD with momentum, batch-norm statistics updated) on 224x224 images, and
reports milliseconds per step, images per second and the speedup over
``impl="xla"`` measured in the same run. Parameters stay float32; ``bfloat16`` is
the models' compute dtype (mixed precision).

The configurations run in the order that matters most when time runs short:
bfloat16 at the largest batch first (the issue's target), then float32 at that
batch, then the smaller batches. Steps are compiled ahead on a thread pool
(``--compile-threads``) while earlier ones are timed, and each time is the best of
up to ``--max-reps`` calls after a warm-up (:func:`sepconv_jax.apps.timing.best_time`).
``--budget`` seconds bound the run: no step starts timing after it, and those left
are recorded as skipped. ``model_steps.json`` is rewritten after every measurement,
so a run cut short keeps what it measured; ``model_steps.md`` is written at the end.

Usage (from the repository root, ``PYTHONPATH=.``)::

    python benchmarks/model_steps.py --out benchmarks/results/gpu/models   # on a GPU
    python benchmarks/model_steps.py --dry-run --out /tmp/models           # any machine

``--dry-run`` runs the same code on a stand-in of each model (its stem, two of its
blocks and its classifier) at 16x16 images, batch 2 and one timed call (on CPU
``"pallas"`` runs in Pallas interpret mode): it proves the sequence, not the speed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

ARCHITECTURES = ("MobileNetV2", "EfficientNetB0")
DTYPES = ("bfloat16", "float32")
BATCHES = (256, 64)
IMPLS = ("auto", "xla", "pallas")


def build_model(architecture: str, impl: str, dtype: str, *, dry_run: bool) -> Any:
    """The model with ``impl`` in every depthwise layer; for a dry run, a stand-in of
    two of its blocks (:func:`_stand_in`), which compiles in seconds on a CPU."""
    from sepconv_jax.models import EfficientNetB0, MobileNetV2

    if architecture not in ARCHITECTURES:
        raise ValueError(f"`architecture` must be one of {ARCHITECTURES}, got {architecture!r}")
    compute = jnp.bfloat16 if dtype == "bfloat16" else None
    if dry_run:
        return _stand_in(architecture, impl, compute)
    if architecture == "MobileNetV2":
        return MobileNetV2(num_classes=1000, impl=impl, dtype=compute)
    return EfficientNetB0(num_classes=1000, impl=impl, dtype=compute)


def _stand_in(architecture: str, impl: str, dtype: Any) -> Any:
    """A stem and two inverted-residual blocks of ``architecture``'s kinds (3x3 with
    ReLU6 for MobileNetV2; 5x5 with swish and squeeze-excite for EfficientNet-B0),
    the second at stride 2, then the classifier: the same layers and the same step,
    small."""
    import flax.linen as nn

    from sepconv_jax.models.blocks import InvertedResidual

    mobilenet = architecture == "MobileNetV2"
    block = {
        "kernel_size": 3 if mobilenet else 5,
        "se_ratio": 0.0 if mobilenet else 0.25,
        "activation": nn.relu6 if mobilenet else nn.swish,
        "impl": impl,
        "dtype": dtype,
    }

    class StandIn(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Conv(16, (3, 3), strides=2, use_bias=False, dtype=dtype)(x)
            x = nn.BatchNorm(use_running_average=not train, dtype=dtype)(x)
            x = InvertedResidual(features=16, expand_ratio=1, **block)(x, train)
            x = InvertedResidual(features=24, expand_ratio=6, strides=2, **block)(x, train)
            return nn.Dense(1000, dtype=dtype)(x.mean(axis=(1, 2))).astype(jnp.float32)

    return StandIn()


def plan(
    architectures: Sequence[str],
    dtypes: Sequence[str],
    batches: Sequence[int],
    impls: Sequence[str],
) -> list[dict[str, Any]]:
    """The configurations in run order: largest batch first, bfloat16 before float32
    at each batch, then the models, then the impls (``xla`` beside the others)."""
    order = sorted(dtypes, key=lambda d: DTYPES.index(d) if d in DTYPES else len(DTYPES))
    return [
        {"model": m, "dtype": d, "batch": b, "impl": i}
        for b, d, m, i in itertools.product(
            sorted(batches, reverse=True), order, architectures, impls
        )
    ]


def _compile(config: dict[str, Any], image_size: int, dry_run: bool) -> tuple[Callable, list]:
    """The jitted step compiled for ``config``, and its arguments."""
    import optax

    from sepconv_jax.apps.train import train_step

    batch = config["batch"]
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    images = jax.random.normal(k1, (batch, image_size, image_size, 3))
    labels = jax.random.randint(k2, (batch,), 0, 1000)
    model = build_model(config["model"], config["impl"], config["dtype"], dry_run=dry_run)
    variables = jax.jit(lambda x: model.init(k3, x, train=False))(images)
    params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
    optimizer = optax.sgd(0.01, momentum=0.9)
    args = [params, state, optimizer.init(params), images, labels]
    # Dropout and stochastic depth draw from one fixed key: the same work as fresh keys.
    step = train_step(model, optimizer, train=True, rngs={"dropout": jax.random.key(1)})
    return jax.jit(step).lower(*args).compile(), args


def machine() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
    }


def _speedups(records: list[dict[str, Any]]) -> None:
    """``speedup_vs_xla``: the xla step's time over this one's, same model/dtype/batch."""
    xla = {
        (r["model"], r["dtype"], r["batch"]): r["seconds"]
        for r in records
        if r["impl"] == "xla" and r.get("seconds")
    }
    for r in records:
        base = xla.get((r["model"], r["dtype"], r["batch"]))
        r["speedup_vs_xla"] = base / r["seconds"] if base and r.get("seconds") else None


def markdown(result: dict[str, Any]) -> str:
    out = [
        f"## Training steps on {result['machine']['device']} ({result['machine']['backend']})",
        "",
        f"{result['image_size']}x{result['image_size']} images; best of up to "
        f"{result['max_reps']} steps after a warm-up; speedup = xla's time / this impl's.",
        "",
        "| model | dtype | batch | impl | ms/step | images/s | vs xla | compile s |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in result["records"]:
        if r.get("seconds") is None:
            why = r.get("error") or r.get("skipped") or "?"
            out.append(
                f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['impl']} | {why[:60]} | | | |"
            )
            continue
        ratio = "" if r["speedup_vs_xla"] is None else f"{r['speedup_vs_xla']:.2f}x"
        out.append(
            f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['impl']} | "
            f"{1e3 * r['seconds']:.2f} | {r['images_per_second']:.0f} | {ratio} | "
            f"{r['compile_seconds']:.1f} |"
        )
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Compiles ahead, times in plan order, rewrites the JSON after every step."""
    from sepconv_jax.apps.timing import best_time

    start = time.perf_counter()
    configs = plan(args.architectures, args.dtypes, args.batches, args.impls)
    result: dict[str, Any] = {
        "machine": machine(),
        "image_size": args.image_size,
        "max_reps": args.max_reps,
        "dry_run": args.dry_run,
        "budget_s": args.budget,
        "records": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "model_steps.json"
    # Compiles run at most `compile_threads` configurations ahead of the timing, so
    # that when the budget runs out little compilation is left in flight.
    pool = concurrent.futures.ThreadPoolExecutor(args.compile_threads)
    started: dict[int, tuple[float, concurrent.futures.Future]] = {}

    def submit(index: int) -> None:
        if index < len(configs) and time.perf_counter() - start <= args.budget:
            started[index] = (
                time.perf_counter(),
                pool.submit(_compile, configs[index], args.image_size, args.dry_run),
            )

    for index in range(args.compile_threads):
        submit(index)
    for index, config in enumerate(configs):
        record = dict(config)
        if time.perf_counter() - start > args.budget or index not in started:
            record.update(seconds=None, skipped=f"budget of {args.budget:.0f} s spent")
            result["records"].append(record)
            continue
        submitted, future = started.pop(index)
        try:
            remaining = args.budget - (time.perf_counter() - start)
            compiled, call_args = future.result(timeout=max(remaining, 0.0))
            record["compile_seconds"] = time.perf_counter() - submitted
            submit(index + args.compile_threads)
            seconds, reps = best_time(
                lambda c=compiled, a=call_args: jax.block_until_ready(c(*a)),
                max_reps=args.max_reps,
                min_time=args.min_time,
            )
            del compiled, call_args
        except concurrent.futures.TimeoutError:
            record.update(seconds=None, skipped=f"budget of {args.budget:.0f} s spent compiling")
            log(f"{config}: skipped, the budget ran out while it compiled")
        except Exception as error:  # recorded, and the run goes on
            submit(index + args.compile_threads)
            record.update(seconds=None, error=f"{type(error).__name__}: {error}"[:400])
            log(f"{config}: failed: {record['error']}")
        else:
            record.update(seconds=seconds, reps=reps, images_per_second=config["batch"] / seconds)
            log(
                f"{config['model']} {config['dtype']} batch {config['batch']} "
                f"impl={config['impl']}: {1e3 * seconds:.2f} ms/step, "
                f"{config['batch'] / seconds:.0f} images/s"
            )
        result["records"].append(record)
        _speedups(result["records"])
        result["wall_seconds"] = time.perf_counter() - start
        path.write_text(json.dumps(result, indent=1) + "\n")
    result["compiles_in_flight"] = sum(not f.done() for _, f in started.values())
    pool.shutdown(wait=False, cancel_futures=True)
    _speedups(result["records"])
    result["wall_seconds"] = time.perf_counter() - start
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for model_steps.*")
    parser.add_argument("--architectures", nargs="+", choices=ARCHITECTURES, default=ARCHITECTURES)
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=DTYPES)
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="default 256 64")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=IMPLS)
    parser.add_argument("--image-size", type=int, default=None, help="default 224 (16 dry run)")
    parser.add_argument("--max-reps", type=int, default=None, help="default 10 (1 dry run)")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds, compiles included")
    parser.add_argument("--compile-threads", type=int, default=4)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, any machine")
    args = parser.parse_args(argv)
    if args.batches is None:
        args.batches = (2,) if args.dry_run else BATCHES
    args.image_size = args.image_size or (16 if args.dry_run else 224)
    args.max_reps = args.max_reps or (1 if args.dry_run else 10)
    if args.dry_run:
        args.min_time = 0.0
    if any(b < 1 for b in args.batches):
        parser.error(f"--batches must be positive, got {args.batches}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    text = markdown(result)
    (args.out / "model_steps.md").write_text(text)
    print(text, flush=True)
    if result["compiles_in_flight"]:
        # Compiles started before the budget ran out would hold the exit until they
        # finish; their results are not wanted.
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
