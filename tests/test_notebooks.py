"""Every notebook in ``notebooks/`` runs top to bottom without an error.

Each is executed with nbclient on a copy in a temporary folder, with
``SEPCONV_QUICK=1`` so that it shrinks its sizes; any cell that raises fails the
test, with the cell's traceback in the message.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_are_present():
    names = [path.name for path in NOTEBOOKS]
    assert names == [
        "01_quickstart.ipynb",
        "02_cost.ipynb",
        "03_separable_vs_standard.ipynb",
        "04_performance.ipynb",
        "05_streaming_audio.ipynb",
        "06_fine_tuning.ipynb",
        "07_deploy.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    # jupyter_core warns about its config-path migration unless this is set.
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("SEPCONV_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # The kernel runs in tmp_path; make it import this checkout's package.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )

    copy = tmp_path / path.name
    shutil.copy(path, copy)
    # The first code cell imports the shared setup helper from the notebook's folder.
    shutil.copy(path.parent / "_setup.py", tmp_path / "_setup.py")
    notebook = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells and all(cell.execution_count for cell in code_cells)
    errors = [
        out for cell in code_cells for out in cell.get("outputs", []) if out.output_type == "error"
    ]
    assert not errors
