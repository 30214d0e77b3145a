"""What the ``sepconv-jax`` command line runs: applications of the library, not its API.

The library (``sepconv_jax`` and its documented submodules) never imports this
package; everything here imports the library, as an example or a script would.

* :mod:`~sepconv_jax.apps.data`: the demo's datasets (bundled digits, generated waveforms).
* :mod:`~sepconv_jax.apps.networks`: the demo's two CNN families, standard or separable.
* :mod:`~sepconv_jax.apps.train`: the data-parallel training loop and its train step;
  :mod:`~sepconv_jax.apps.checkpoints` its crash-safe checkpoints and
  :mod:`~sepconv_jax.apps.distributed` joining (or launching) several processes.
* :mod:`~sepconv_jax.apps.timing`: the one wall-clock timer of the demo and the benchmarks.
* :mod:`~sepconv_jax.apps.demo`: ``sepconv-jax demo``, standard vs separable trained side
  by side; :mod:`~sepconv_jax.apps.demo_report` prints, plots and saves its outcome.
* :mod:`~sepconv_jax.apps.cost_report`: ``sepconv-jax cost``, a layer's or a model's cost.
* :mod:`~sepconv_jax.apps.bench`: ``sepconv-jax bench``, the benchmark suite;
  :mod:`~sepconv_jax.apps.bench_torch` times its PyTorch column in a child process and
  :mod:`~sepconv_jax.apps.bench_report` turns its records into tables, a summary and a plot.
"""

from typing import Any

from sepconv_jax import _lazy


def __getattr__(name: str) -> Any:
    """Submodules not yet imported load on first access (PEP 562)."""
    return _lazy.submodule(__name__, __path__, globals(), name)


def __dir__() -> list[str]:
    return _lazy.listing(__path__, globals())
