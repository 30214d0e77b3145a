"""Depthwise and separable layer benchmarks: ``sepconv_jax.apps.bench`` as a script.

Usage (from the repository root)::

    python benchmarks/depthwise.py                 # full suite, writes benchmarks/results/
    python benchmarks/depthwise.py --quick         # tiny shapes, as CI runs it
    python benchmarks/depthwise.py --batch 8 --dtype float32 --no-model

The same suite runs as ``sepconv-jax bench``. It prints a table and writes
``bench.json``, ``bench.png`` and ``bench.md`` to ``--out``; ``RESULTS.md`` in this
directory holds the latest full CPU run with notes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sepconv_jax.apps import bench

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv = ["--out", str(Path(__file__).parent / "results"), *argv]
    sys.exit(bench.main(argv))
