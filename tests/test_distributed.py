"""Multi-process data parallelism for real: N JAX processes on this machine, one run.

Each process has one CPU device; they join through :func:`jax.distributed.initialize`
on a localhost coordinator (a free port) and reduce gradients over gloo. The loss
curve must equal the single-process run's up to float32 summation order, since
both draw the same batches from the same seed.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest

from sepconv_jax.apps import distributed
from sepconv_jax.apps.data import digits_data
from sepconv_jax.apps.networks import DigitsCNN
from sepconv_jax.apps.train import data_mesh, train_classifier

# The demo network, narrowed so that N processes compile it quickly on 2 cores.
_NETWORK = "DigitsCNN(separable=True, stem=16, blocks=((32, 1), (32, 2)))"
_TRAIN = {"epochs": 1, "batch_size": 32, "seed": 3}
_N_TRAIN, _N_TEST = 128, 40

_WORKER = f"""
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--coordinator")
parser.add_argument("--num-processes", type=int)
parser.add_argument("--process-id", type=int)
args = parser.parse_args()

from sepconv_jax.apps.distributed import initialize
initialize(args.coordinator, args.num_processes, args.process_id, timeout_s=60)

import jax
from sepconv_jax.apps.data import digits_data
from sepconv_jax.apps.networks import DigitsCNN
from sepconv_jax.apps.train import train_classifier

(x, y), (xt, yt) = digits_data()
result = train_classifier(
    {_NETWORK}, (x[:{_N_TRAIN}], y[:{_N_TRAIN}]), (xt[:{_N_TEST}], yt[:{_N_TEST}]), **{_TRAIN!r}
)
out = {{
    "process": jax.process_index(),
    "processes": jax.process_count(),
    "local_devices": jax.local_device_count(),
    "devices": result.num_devices,
    "losses": result.losses.tolist(),
    "predictions": result.test_predictions.tolist(),
}}
with open(f"{{args.out}}.{{jax.process_index()}}", "w") as f:
    json.dump(out, f)
"""


@pytest.fixture(scope="module")
def single_process():
    """The same training in this process, on one device."""
    (x, y), (xt, yt) = digits_data()
    network = eval(_NETWORK, {"DigitsCNN": DigitsCNN})
    return train_classifier(
        network, (x[:_N_TRAIN], y[:_N_TRAIN]), (xt[:_N_TEST], yt[:_N_TEST]),
        mesh=data_mesh(1), **_TRAIN,
    )  # fmt: skip


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_match_one_process(processes, single_process, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(_WORKER)
    out = tmp_path / "result.json"
    start = time.perf_counter()
    distributed.launch_local(processes, [str(worker), str(out)], timeout_s=150, capture=True)
    elapsed = time.perf_counter() - start
    results = [json.loads(out.with_suffix(f".json.{i}").read_text()) for i in range(processes)]
    for i, r in enumerate(results):
        assert (r["process"], r["processes"], r["local_devices"]) == (i, processes, 1)
        assert r["devices"] == processes
        # Every process sees the same replicated losses and predictions.
        assert r["losses"] == results[0]["losses"]
        assert r["predictions"] == results[0]["predictions"]
    losses = np.asarray(results[0]["losses"], np.float32)
    reference = single_process.losses
    assert losses.shape == reference.shape == (_N_TRAIN // 32,)
    # Same batches, same initialization, same optimizer: only the order in which the
    # per-example losses and gradients are summed differs (within each process, then
    # across processes). A few float32 ulps per reduction, carried through 4 Adam
    # steps, stay far below 1e-5 of O(1) losses; a wrong shard or a missing gradient
    # reduction changes the loss at the first or second step by 1e-3 or more.
    np.testing.assert_allclose(losses, reference, rtol=1e-5, atol=1e-6)
    difference = float(np.max(np.abs(losses - reference)))
    print(f"{processes} processes: max |loss - single process| = {difference:.3g}, {elapsed:.1f} s")


_SLEEPER = """
import argparse, os, sys, time
parser = argparse.ArgumentParser()
parser.add_argument("pids")
parser.add_argument("fail", type=int)
parser.add_argument("--coordinator")
parser.add_argument("--num-processes", type=int)
parser.add_argument("--process-id", type=int)
args = parser.parse_args()
with open(f"{args.pids}.{args.process_id}", "w") as f:
    f.write(str(os.getpid()))
if args.process_id == args.fail:
    time.sleep(0.5)
    print("process failing on purpose", file=sys.stderr)
    sys.exit(3)
time.sleep(120)
"""


def _assert_gone(pid_files):
    for file in pid_files:
        pid = int(file.read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _pid_files(tmp_path, n):
    files = [tmp_path / f"pids.{i}" for i in range(n)]
    deadline = time.monotonic() + 10
    while not all(f.exists() and f.read_text() for f in files) and time.monotonic() < deadline:
        time.sleep(0.05)
    return files


def test_a_failing_process_ends_the_run(tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text(_SLEEPER)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"process 1 of 3 exited with 3:\n.*failing on purpose"):
        distributed.launch_local(
            3, [str(script), str(tmp_path / "pids"), "1"], timeout_s=60, capture=True
        )
    assert time.perf_counter() - start < 30
    _assert_gone(_pid_files(tmp_path, 3))


def test_a_run_past_its_timeout_is_killed(tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text(_SLEEPER)
    with pytest.raises(RuntimeError, match="2-process run did not finish in 3 s"):
        distributed.launch_local(
            2, [str(script), str(tmp_path / "pids"), "-1"], timeout_s=3, capture=True
        )
    _assert_gone(_pid_files(tmp_path, 2))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"coordinator": "localhost"}, ValueError, "`coordinator` must be 'host:port'"),
        ({"coordinator": 1234}, TypeError, "`coordinator` must be a 'host:port' string"),
        ({"num_processes": 0}, ValueError, "num_processes"),
        ({"process_id": 2}, ValueError, r"`process_id`=2 must be from 0 to 1"),
        ({"process_id": 1.0}, TypeError, "`process_id` must be an int"),
    ],
)
def test_initialize_rejects_bad_arguments(kwargs, error, match):
    args = {"coordinator": "127.0.0.1:1234", "num_processes": 2, "process_id": 0, **kwargs}
    with pytest.raises(error, match=match):
        distributed.initialize(**args)


def test_free_port_can_be_bound():
    import socket

    port = distributed.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_demo_processes_flag_runs_the_demo_as_a_multi_process_run(tmp_path, monkeypatch):
    from sepconv_jax import cli

    calls = []

    def fake_launch(n, args, **kwargs):
        calls.append((n, args, kwargs))
        return []

    monkeypatch.setattr(distributed, "launch_local", fake_launch)
    argv = ["demo", "--processes", "3", "--quick", "--epochs", "2", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    ((n, args, kwargs),) = calls
    assert n == 3 and args[:3] == ["-m", "sepconv_jax.cli", "demo"] and sys.executable
    assert "--quick" in args and args[args.index("--epochs") + 1] == "2"
    assert kwargs["devices_per_process"] == 1
