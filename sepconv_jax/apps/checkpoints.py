"""Crash-safe training checkpoints: Orbax for the arrays, a manifest for integrity.

A checkpoint is the folder ``<root>/step_<step>`` holding

* ``state/``: the array tree (parameters, optimizer state), written by Orbax;
* ``meta.json``: the step, the data-order state and the loss history (plain JSON);
* ``manifest.json``: the size and SHA-256 of every other file of the checkpoint.

It is built under a hidden temporary name and renamed into place only when all three
are written and flushed, so a process killed at any moment (SIGKILL included) leaves
either a whole checkpoint or a temporary folder that is ignored and cleared on the next
save. When resuming, :func:`restore_latest` checks each checkpoint against its manifest,
newest first: one with a missing, truncated or altered file gets a
:class:`CheckpointWarning` naming the file, and the next older one is tried.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "checkpoint_steps",
    "restore",
    "restore_latest",
    "save",
    "step_dir",
    "verify",
]

_STEP_DIR = re.compile(r"^step_(\d+)$")
_MANIFEST = "manifest.json"
_META = "meta.json"
_STATE = "state"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file at fault."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (corrupt or unreadable) in favour of an older one."""


def step_dir(root: str | os.PathLike, step: int) -> Path:
    """The folder of checkpoint ``step`` under ``root``."""
    return Path(root) / f"step_{step:08d}"


def checkpoint_steps(root: str | os.PathLike) -> list[int]:
    """The steps of the finished checkpoints under ``root``, oldest first.

    Example:
      >>> from sepconv_jax.apps.checkpoints import checkpoint_steps
      >>> checkpoint_steps("no/such/folder")
      []
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = (_STEP_DIR.match(p.name) for p in root.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != _MANIFEST)


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _write_synced(path: Path, text: str) -> None:
    with path.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def save(
    root: str | os.PathLike, step: int, state: Any, meta: dict[str, Any], *, keep: int = 2
) -> Path:
    """Writes checkpoint ``step`` atomically and keeps the newest ``keep`` of them.

    Every process of a multi-process run must call it (Orbax writes each process's
    shards); process 0 writes the metadata and renames the folder into place.

    Args:
      root: the checkpoint folder (created if missing).
      step: the training step the state belongs to.
      state: a pytree of arrays.
      meta: JSON-serializable data saved with it.
      keep: how many checkpoints to keep; older ones are deleted after the save.

    Returns:
      The checkpoint's folder.
    """
    import orbax.checkpoint as ocp

    root = Path(root)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}"
    primary = jax.process_index() == 0
    if primary:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step_*"):  # left by a process that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    _barrier(f"sepconv_ckpt_begin_{step}")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / _STATE, state)
    checkpointer.wait_until_finished()
    checkpointer.close()
    _barrier(f"sepconv_ckpt_state_{step}")
    if primary:
        _write_synced(tmp / _META, json.dumps(meta))
        manifest = {str(p.relative_to(tmp)): [p.stat().st_size, _digest(p)] for p in _files(tmp)}
        _write_synced(tmp / _MANIFEST, json.dumps(manifest, indent=1))
        _fsync_dir(tmp)
        if final.exists():  # a checkpoint of this step that was found corrupt earlier
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in checkpoint_steps(root)[:-keep]:
            shutil.rmtree(step_dir(root, old), ignore_errors=True)
    _barrier(f"sepconv_ckpt_done_{step}")
    return final


def verify(path: str | os.PathLike) -> None:
    """Checks a checkpoint folder against its manifest.

    Raises:
      CheckpointError: naming the first file that is missing, truncated or altered,
        or the manifest itself when it is missing or unreadable.
    """
    path = Path(path)
    manifest_path = path / _MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path}: manifest {manifest_path} is missing or unreadable ({e})"
        ) from None
    for name, (size, digest) in manifest.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path}: file {file} is missing")
        found = file.stat().st_size
        if found != size:
            raise CheckpointError(
                f"checkpoint {path}: file {file} is truncated or altered: "
                f"{found} bytes, {size} written"
            )
        if _digest(file) != digest:
            raise CheckpointError(
                f"checkpoint {path}: file {file} is corrupted: its SHA-256 differs from "
                f"the one written"
            )


def restore(path: str | os.PathLike, target: Any) -> tuple[Any, dict[str, Any]]:
    """Verifies and reads one checkpoint folder.

    Args:
      path: a ``step_<step>`` folder written by :func:`save`.
      target: a pytree like the saved state (arrays or
        :class:`jax.ShapeDtypeStruct` with shardings); the restored arrays take
        its structure, dtypes and shardings.

    Returns:
      ``(state, meta)``.

    Raises:
      CheckpointError: when the checkpoint fails :func:`verify` or Orbax cannot
        read it.
    """
    import orbax.checkpoint as ocp

    path = Path(path)
    verify(path)
    try:
        meta = json.loads((path / _META).read_text())
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        with ocp.StandardCheckpointer() as checkpointer:
            state = checkpointer.restore(path / _STATE, abstract)
    except Exception as e:  # Orbax and tensorstore raise many kinds
        raise CheckpointError(f"checkpoint {path}: cannot be read: {e}") from e
    return state, meta


def restore_latest(root: str | os.PathLike, target: Any) -> tuple[Any, dict[str, Any]] | None:
    """The newest checkpoint under ``root`` that verifies, or ``None`` when there is none.

    A checkpoint that fails gets a :class:`CheckpointWarning` naming the file at
    fault, and the next older one is tried.

    Args:
      root: the checkpoint folder.
      target: as in :func:`restore`.

    Returns:
      ``(state, meta)`` of the newest good checkpoint, or ``None``.
    """
    root = Path(root)
    for step in reversed(checkpoint_steps(root)):
        try:
            return restore(step_dir(root, step), target)
        except CheckpointError as e:
            warnings.warn(
                CheckpointWarning(f"{e}; falling back to an earlier checkpoint"), stacklevel=2
            )
    return None
