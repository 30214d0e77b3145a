"""Makes ``sepconv_jax`` importable for the notebooks in this folder.

Every notebook's first code cell calls :func:`ensure_sepconv_jax`. When the package
is already importable (installed, or on ``PYTHONPATH``) it does nothing. Otherwise
it installs the package with pip from the checkout this folder belongs to: nothing
is downloaded from a package index for ``sepconv-jax`` itself, since the project
is not published there (its dependencies come from the index as usual). On Colab:
clone or upload the repository, open the notebook from its ``notebooks/`` folder
(or ``%cd`` into it) and run the cells.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path


def _checkout_root() -> Path | None:
    """The nearest folder with a ``pyproject.toml`` above this file or the working dir."""
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            if (folder / "pyproject.toml").is_file():
                return folder
    return None


def ensure_sepconv_jax() -> None:
    """Installs ``sepconv_jax`` from this checkout unless it is importable already.

    Raises:
      RuntimeError: when the package is not importable and no checkout is found.
    """
    if importlib.util.find_spec("sepconv_jax") is not None:
        return
    root = _checkout_root()
    if root is None:
        raise RuntimeError(
            "sepconv_jax is not installed and this notebook is not inside a checkout of the "
            "repository: clone it and open the notebook from its notebooks/ folder"
        )
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", str(root)], check=True)
    importlib.invalidate_caches()
