"""``sepconv-jax demo``: standard vs separable convolution, side by side.

For a few MobileNet-sized 3x3 layers it prints the analytic mult-adds and
parameters of a standard convolution and of a depthwise separable one, the seed's
savings factor ``k^2 N / (k^2 + N)``, and the measured time of both under
``jax.jit`` on the current backend.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from sepconv_jax import ops

# (spatial size, in channels C, out channels N) of MobileNetV1 3x3 layers at 224x224.
LAYERS = ((112, 32, 64), (56, 128, 128), (28, 256, 256), (14, 512, 512), (7, 1024, 1024))
KERNEL = 3


def _time(fn, *args, repeats: int) -> float:
    """Median wall time of ``fn(*args)`` in seconds, after one compile-and-warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def layer_rows(batch: int = 1, repeats: int = 5, layers=LAYERS) -> list[dict]:
    """Measures each layer and returns one row of figures per layer."""
    rows = []
    key = jax.random.key(0)
    standard = jax.jit(lambda x, k: ops.grouped_conv(x, k, groups=1))
    separable = jax.jit(lambda x, dk, pk: ops.separable_conv(x, dk, pk))
    for hw, c, n in layers:
        kx, kd, kp, ks = jax.random.split(jax.random.fold_in(key, hw * c), 4)
        x = jax.random.normal(kx, (batch, hw, hw, c))
        dk = jax.random.normal(kd, (KERNEL, KERNEL, 1, c))
        pk = jax.random.normal(kp, (c, n))
        sk = jax.random.normal(ks, (KERNEL, KERNEL, c, n))
        positions = hw * hw
        std_ma = KERNEL**2 * c * n * positions
        sep_ma = (KERNEL**2 * c + c * n) * positions
        rows.append(
            {
                "layer": f"{hw}x{hw}x{c}->{n}",
                "standard_mult_adds": std_ma,
                "separable_mult_adds": sep_ma,
                "standard_params": KERNEL**2 * c * n,
                "separable_params": KERNEL**2 * c + c * n,
                "savings_factor": KERNEL**2 * n / (KERNEL**2 + n),
                "standard_ms": 1e3 * _time(standard, x, sk, repeats=repeats),
                "separable_ms": 1e3 * _time(separable, x, dk, pk, repeats=repeats),
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"3x3 standard vs depthwise separable conv on {jax.default_backend()}")
    for col in (
        "layer",
        "std MACs",
        "sep MACs",
        "MAC ratio",
        "k²N/(k²+N)",
        "std params",
        "sep params",
        "std ms",
        "sep ms",
        "time ratio",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["layer"],
            f"{r['standard_mult_adds'] / 1e6:.1f}M",
            f"{r['separable_mult_adds'] / 1e6:.1f}M",
            f"{r['standard_mult_adds'] / r['separable_mult_adds']:.2f}x",
            f"{r['savings_factor']:.2f}x",
            f"{r['standard_params']:,}",
            f"{r['separable_params']:,}",
            f"{r['standard_ms']:.2f}",
            f"{r['separable_ms']:.2f}",
            f"{r['standard_ms'] / r['separable_ms']:.2f}x",
        )
    console = Console()
    Console(width=max(console.width, 150)).print(table)


def run(args: argparse.Namespace) -> int:
    rows = layer_rows(batch=args.batch_size, repeats=3 if args.quick else 10)
    print_table(rows)
    return 0


def register_cli(subparsers) -> None:
    """Adds the ``demo`` subcommand."""
    parser = subparsers.add_parser("demo", help="standard vs separable convolution, side by side")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer timing repeats")
    parser.set_defaults(func=run)
