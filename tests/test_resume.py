"""Crash-safe training: checkpoints survive SIGKILL, corruption is caught, faults stop a run.

* A training process killed with SIGKILL mid-run and restarted ends with parameters
  bitwise equal to those of an uninterrupted run.
* A truncated or altered checkpoint file is named in the error, and training falls
  back to the newest good checkpoint.
* A NaN or Inf loss stops training at its step, naming the first layer whose output
  went non-finite, and leaves the last good checkpoint as the newest one.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sepconv_jax import cli
from sepconv_jax.apps import checkpoints
from sepconv_jax.apps.data import digits_data
from sepconv_jax.apps.networks import DigitsCNN
from sepconv_jax.apps.train import NonFiniteLossError, data_mesh, train_classifier

N_TRAIN, BATCH, EPOCHS, SEED = 96, 16, 2, 5  # 6 steps per epoch, 12 in all
KILL_AT = 7  # a step between checkpoints 4 and 8


def _model():
    return DigitsCNN(separable=True, stem=8, blocks=((16, 1), (16, 2)))


def _data():
    (x, y), (xt, yt) = digits_data()
    return (x[:N_TRAIN], y[:N_TRAIN]), (xt[:32], yt[:32])


def _train(**kwargs):
    train, test = _data()
    options = {"epochs": EPOCHS, "batch_size": BATCH, "seed": SEED, "mesh": data_mesh(1)}
    return train_classifier(_model(), train, test, **{**options, **kwargs})


def _assert_bitwise_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(leaves_a, leaves_b, strict=True):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape
        assert u.tobytes() == v.tobytes()


@pytest.fixture(scope="module")
def uninterrupted():
    """The reference run, without checkpoints."""
    return _train()


_CHILD = f"""
import sys, time
from tests.test_resume import _train

def on_step(step, loss):
    print("step", step, flush=True)
    if step == {KILL_AT}:
        time.sleep(120)  # the parent kills this process here

_train(checkpoint_dir=sys.argv[1], checkpoint_every=4, on_step=on_step)
print("finished", flush=True)
"""


def _read_line(proc, deadline):
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            return proc.stdout.readline()
        if proc.poll() is not None:
            return proc.stdout.readline()
    return ""


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, uninterrupted):
    ckpt = tmp_path / "ckpt"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(ckpt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    seen = []
    try:
        deadline = time.monotonic() + 90
        while f"step {KILL_AT}" not in seen and time.monotonic() < deadline:
            line = _read_line(proc, deadline).strip()
            if not line and proc.poll() is not None:
                break
            seen.append(line)
        assert f"step {KILL_AT}" in seen, seen
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert "finished" not in seen
    # Only the checkpoint of step 4 was written before the kill.
    assert checkpoints.checkpoint_steps(ckpt) == [4]

    steps = []
    resumed = _train(checkpoint_dir=ckpt, checkpoint_every=4, on_step=lambda s, _: steps.append(s))
    assert steps == list(range(5, EPOCHS * N_TRAIN // BATCH + 1))  # steps 5.. were redone
    _assert_bitwise_equal(resumed.params, uninterrupted.params)
    assert resumed.losses.tobytes() == uninterrupted.losses.tobytes()
    assert resumed.epochs == uninterrupted.epochs
    np.testing.assert_array_equal(resumed.test_predictions, uninterrupted.test_predictions)
    assert checkpoints.checkpoint_steps(ckpt) == [8, 12]  # keep_checkpoints=2


def _largest_state_file(step_dir):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def test_corrupt_checkpoint_is_named_and_training_falls_back(tmp_path, uninterrupted):
    ckpt = tmp_path / "ckpt"
    full = _train(checkpoint_dir=ckpt, checkpoint_every=3, keep_checkpoints=3)
    _assert_bitwise_equal(full.params, uninterrupted.params)  # checkpoints change nothing
    assert checkpoints.checkpoint_steps(ckpt) == [6, 9, 12]

    # Truncate the largest array file of the newest checkpoint, alter one byte of the
    # next, remove the manifest of the one before it (each is another kind of damage).
    newest = checkpoints.step_dir(ckpt, 12)
    truncated = _largest_state_file(newest)
    size = truncated.stat().st_size
    with truncated.open("r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(
        checkpoints.CheckpointError, match=re.escape(f"file {truncated} is truncated")
    ):
        checkpoints.verify(newest)

    altered = _largest_state_file(checkpoints.step_dir(ckpt, 9))
    data = bytearray(altered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    altered.write_bytes(bytes(data))
    with pytest.raises(
        checkpoints.CheckpointError, match=re.escape(f"file {altered} is corrupted")
    ):
        checkpoints.verify(checkpoints.step_dir(ckpt, 9))

    # Restarting falls back to step 6, warning about both, and trains to the same end.
    steps = []
    with pytest.warns(checkpoints.CheckpointWarning) as record:
        resumed = _train(
            checkpoint_dir=ckpt,
            checkpoint_every=3,
            keep_checkpoints=3,
            on_step=lambda s, _: steps.append(s),
        )
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert str(truncated) in messages[0] and "falling back" in messages[0]
    assert str(altered) in messages[1]
    assert steps[0] == 7
    _assert_bitwise_equal(resumed.params, uninterrupted.params)
    assert checkpoints.checkpoint_steps(ckpt) == [6, 9, 12]
    for step in (9, 12):  # rewritten whole
        checkpoints.verify(checkpoints.step_dir(ckpt, step))

    (checkpoints.step_dir(ckpt, 12) / "manifest.json").unlink()
    with pytest.raises(checkpoints.CheckpointError, match=r"manifest .*manifest\.json is missing"):
        checkpoints.verify(checkpoints.step_dir(ckpt, 12))


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)

    def train(**kwargs):
        options = {"checkpoint_dir": tmp_path, "checkpoint_every": 1, **kwargs}
        return train_classifier(
            nn.Dense(2), (x, y), (x, y), epochs=1, batch_size=16, mesh=data_mesh(1), **options
        )

    first = train()
    # A finished run resumes at its end: nothing left to train, the same result.
    steps = []
    again = train(on_step=lambda s, _: steps.append(s))
    assert steps == []
    _assert_bitwise_equal(again.params, first.params)
    assert again.losses.tobytes() == first.losses.tobytes() and again.epochs == first.epochs
    with pytest.raises(ValueError, match=r"`checkpoint_dir` .* holds a run with settings"):
        train(seed=1)
    with pytest.raises(ValueError, match="`checkpoint_every` must be >= 1"):
        train(checkpoint_every=0)


def test_an_interrupted_save_leaves_no_checkpoint(tmp_path):
    # What a kill during a save leaves behind: a temporary folder, ignored and cleared.
    stale = tmp_path / ".tmp-step_00000003"
    (stale / "state").mkdir(parents=True)
    (stale / "state" / "partial").write_bytes(b"\0" * 10)
    assert checkpoints.checkpoint_steps(tmp_path) == []
    assert checkpoints.restore_latest(tmp_path, {"w": jnp.zeros(2)}) is None
    checkpoints.save(tmp_path, 3, {"w": jnp.arange(2.0)}, {"step": 3})
    assert not stale.exists()
    state, meta = checkpoints.restore(checkpoints.step_dir(tmp_path, 3), {"w": jnp.zeros(2)})
    np.testing.assert_array_equal(state["w"], [0.0, 1.0])
    assert meta == {"step": 3}


def test_poisoned_batch_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
    (x, y), test = _data()
    x = x.copy()
    poisoned = 40
    x[poisoned, 2, 3, 0] = np.nan
    # The data order of epoch 1 is the first permutation drawn from the seed.
    position = int(np.nonzero(np.random.default_rng(SEED).permutation(N_TRAIN) == poisoned)[0][0])
    bad_step = position // BATCH + 1
    ckpt = tmp_path / "ckpt"
    with pytest.raises(NonFiniteLossError, match=f"stopped at step {bad_step}: ") as info:
        train_classifier(
            _model(), (x, y), test, epochs=EPOCHS, batch_size=BATCH, seed=SEED,
            mesh=data_mesh(1), checkpoint_dir=ckpt, checkpoint_every=1, keep_checkpoints=1,
        )  # fmt: skip
    error = info.value
    assert error.step == bad_step and error.layer == "input"
    assert "non-finite values (1 of 16 examples)" in str(error)
    assert len(error.losses) == bad_step - 1 and np.isfinite(error.losses).all()
    if bad_step > 1:
        assert checkpoints.checkpoint_steps(ckpt) == [bad_step - 1]
        assert error.checkpoint == str(checkpoints.step_dir(ckpt, bad_step - 1))
        assert f"last good checkpoint is {error.checkpoint}" in str(error)
    else:
        assert checkpoints.checkpoint_steps(ckpt) == [] and error.checkpoint is None


class _Log(nn.Module):
    @nn.compact
    def __call__(self, x):
        return jnp.log(x)


class _LogNet(nn.Module):
    """embed (all-ones kernel: the sum of the inputs) -> log -> head."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(4, kernel_init=nn.initializers.ones, name="embed")(x)
        x = _Log(name="log")(x)
        return nn.Dense(3, name="head")(x)


def test_fault_names_the_first_non_finite_layer():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.0, size=(64, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=64).astype(np.int32)
    # A finite input whose sum is negative: "embed" stays finite, "log" gives NaN.
    x[9] = -1.0
    order = np.random.default_rng(0).permutation(64)
    bad_step = int(np.nonzero(order == 9)[0][0]) // 8 + 1
    with pytest.raises(NonFiniteLossError) as info:
        train_classifier(
            _LogNet(), (x, y), (x, y), epochs=1, batch_size=8, learning_rate=1e-4, seed=0,
            mesh=data_mesh(1),
        )  # fmt: skip
    error = info.value
    assert (error.step, error.layer) == (bad_step, "log")
    assert f"step {bad_step}: the loss is nan; the first layer whose output is non-finite" in str(
        error
    )


def test_demo_records_a_fault_in_its_json(tmp_path, capsys):
    rc = cli.main(["demo", "--quick", "--learning-rate", "1e30", "--out", str(tmp_path)])
    assert rc == 3
    figures = json.loads((tmp_path / "digits_results.json").read_text())
    fault = figures["fault"]
    assert fault["network"] == "standard"
    assert fault["step"] >= 1 and len(fault["losses"]) == fault["step"] - 1
    assert f"training stopped at step {fault['step']}" in fault["message"]
    assert fault["message"] in capsys.readouterr().err
    assert figures["settings"]["learning_rate"] == 1e30
