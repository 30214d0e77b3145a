"""The ``sepconv-jax`` command line: ``demo``, ``cost``, ``bench`` and ``export``.

The subcommands live in :mod:`sepconv_jax.apps` (``export`` in
:mod:`sepconv_jax.export`); this module only wires them up.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sepconv-jax",
        description="Depthwise separable convolutions for JAX and Flax.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from sepconv_jax.apps import bench, cost_report, demo

    demo.register_cli(sub)
    cost_report.register_cli(sub)
    bench.register_cli(sub)
    from sepconv_jax.export import _cli as export_cli  # the exporters load when it runs

    export_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sepconv-jax`` console script."""
    args = _parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
