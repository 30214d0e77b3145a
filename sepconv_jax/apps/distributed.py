"""Several JAX processes as one training run: joining them, and launching them locally.

On a TPU pod or a GPU cluster every host runs the same program; each calls
:func:`initialize` with the address of process 0 (the coordinator), the number of
processes and its own index, and from then on ``jax.devices()`` lists the devices of
every process. :func:`sepconv_jax.apps.train.train_classifier` then splits each global
batch over all of them, and ``jax.jit`` inserts the cross-process gradient reduction
(over ICI/NCCL on accelerators, over gloo on CPUs).

:func:`launch_local` starts ``N`` such processes on this machine, each with its own
CPU device(s), joined through a coordinator on a free localhost port: the same code
path as a multi-host launch, runnable on a laptop. It bounds the run by a timeout and
kills every process it started when one fails, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax

from sepconv_jax import _spec

__all__ = ["free_port", "initialize", "launch_local"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that no one listens on now (the OS picks it: bind port 0).

    Example:
      >>> from sepconv_jax.apps.distributed import free_port
      >>> 0 < free_port() < 65536
      True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_coordinator(coordinator: str) -> str:
    if not isinstance(coordinator, str):
        raise TypeError(
            f"`coordinator` must be a 'host:port' string, got {type(coordinator).__name__}"
        )
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"`coordinator` must be 'host:port' with a port from 1 to 65535, e.g. "
            f"'10.0.0.1:1234', got {coordinator!r}"
        )
    return coordinator


def initialize(
    coordinator: str,
    num_processes: int,
    process_id: int,
    *,
    timeout_s: int = 120,
) -> None:
    """Joins this process to a multi-process run (:func:`jax.distributed.initialize`).

    Call it before anything else touches JAX devices. On CPUs the cross-process
    collectives go through gloo (``jax_cpu_collectives_implementation``).

    Args:
      coordinator: ``"host:port"`` of process 0, reachable from every process.
      num_processes: how many processes take part.
      process_id: this process's index, from 0 to ``num_processes - 1``.
      timeout_s: how long to wait for the other processes to join.

    Raises:
      TypeError, ValueError: for a malformed address or out-of-range indices.
    """
    coordinator = _check_coordinator(coordinator)
    num_processes = _spec.check_positive_int(num_processes, "num_processes")
    if isinstance(process_id, bool) or not isinstance(process_id, int):
        raise TypeError(f"`process_id` must be an int, got {type(process_id).__name__}")
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"`process_id`={process_id} must be from 0 to {num_processes - 1} "
            f"(`num_processes`={num_processes})"
        )
    timeout_s = _spec.check_positive_int(timeout_s, "timeout_s")
    # Cross-process collectives on CPUs need an implementation: gloo is the default
    # of recent JAX versions; older ones (and a user's "none") get it set here.
    option = "jax_cpu_collectives_implementation"
    if getattr(jax.config, option, "gloo") in (None, "", "none"):
        jax.config.update(option, "gloo")
    jax.distributed.initialize(
        coordinator,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_s,
    )


def launch_local(
    num_processes: int,
    python_args: Sequence[str],
    *,
    timeout_s: float = 300.0,
    devices_per_process: int = 1,
    capture: bool = False,
) -> list[subprocess.CompletedProcess]:
    """Runs ``python <python_args>`` as ``num_processes`` processes joined into one run.

    Each process gets ``--coordinator 127.0.0.1:<free port> --num-processes N
    --process-id i`` appended to ``python_args``, ``JAX_PLATFORMS=cpu`` and
    ``devices_per_process`` CPU devices. The call returns when all have exited; when
    one fails, or ``timeout_s`` passes, the others are killed.

    Args:
      num_processes: how many processes to start.
      python_args: what follows ``python``, e.g.
        ``["-m", "sepconv_jax.cli", "demo", "--quick"]``.
      timeout_s: wall-clock bound on the whole run, in seconds.
      devices_per_process: CPU devices each process simulates.
      capture: collect each process's stdout and stderr (in temporary files, so a
        chatty process never blocks on a full pipe); else they are inherited.

    Returns:
      One :class:`subprocess.CompletedProcess` per process, in process order.

    Raises:
      RuntimeError: when a process fails or the run times out; the message names
        the process and shows the end of its stderr when captured.
    """
    num_processes = _spec.check_positive_int(num_processes, "num_processes")
    devices_per_process = _spec.check_positive_int(devices_per_process, "devices_per_process")
    coordinator = f"127.0.0.1:{free_port()}"
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    env["XLA_FLAGS"] = " ".join(flags)
    procs: list[subprocess.Popen] = []
    with contextlib.ExitStack() as stack:
        stack.callback(_end, procs)  # no process outlives this call
        logs = []
        for i in range(num_processes):
            command = [sys.executable, *python_args, "--coordinator", coordinator]
            command += ["--num-processes", str(num_processes), "--process-id", str(i)]
            files: tuple[Any, Any] = (None, None)
            if capture:
                files = (
                    stack.enter_context(tempfile.TemporaryFile("w+")),
                    stack.enter_context(tempfile.TemporaryFile("w+")),
                )
            logs.append(files)
            procs.append(
                subprocess.Popen(command, env=env, stdout=files[0], stderr=files[1], text=True)
            )
        failed = _wait(procs, time.monotonic() + timeout_s)
        if failed is None:
            raise RuntimeError(f"the {num_processes}-process run did not finish in {timeout_s:g} s")
        results = [
            subprocess.CompletedProcess(p.args, p.returncode, *map(_read, logs[i]))
            for i, p in enumerate(procs)
        ]
    for i, r in enumerate(results):
        if r.returncode != 0 and (failed < 0 or i == failed):
            tail = f":\n{r.stderr[-3000:]}" if r.stderr else ""
            raise RuntimeError(f"process {i} of {len(results)} exited with {r.returncode}{tail}")
    return results


def _wait(procs: list[subprocess.Popen], deadline: float) -> int | None:
    """Waits until all exit (-1), one fails (its index) or the deadline passes (None)."""
    while time.monotonic() < deadline:
        codes = [p.poll() for p in procs]
        failed = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
        if failed is not None:
            return failed
        if all(c == 0 for c in codes):
            return -1
        time.sleep(0.05)
    return None


def _end(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _read(file: Any) -> str | None:
    if file is None:
        return None
    file.seek(0)
    return file.read()
