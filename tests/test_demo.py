"""The demo (``sepconv-jax demo``) and the data-parallel training loop.

Expected parameter and mult-add counts are written out from the architectures'
definitions (kernel sizes, channels, output positions), independently of
``sepconv_jax.cost``; the 8-device run is checked against the 1-device run, which
is the property data parallelism must keep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sepconv_jax import cli
from sepconv_jax.apps import data, demo, networks
from sepconv_jax.apps.train import (
    data_mesh,
    evaluate,
    replicate,
    shard_batch,
    train_classifier,
    train_step,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _digits_costs(separable: bool) -> tuple[int, int]:
    """(params, mult-adds per example) of DigitsCNN on 8x8x1 images, from its definition."""
    k = 9  # 3x3 window
    stem = (k * 1 * 32 + 32, k * 1 * 32 * 64)  # 8x8 outputs
    # (in, out, output positions): block1 8x8, block2 stride 2 -> 4x4, block3 4x4
    blocks = [(32, 64, 64), (64, 128, 16), (128, 128, 16)]
    params, mult_adds = stem
    for c, n, positions in blocks:
        weights = k * c + c * n if separable else k * c * n
        params += weights + n
        mult_adds += weights * positions
    return params + 128 * 10 + 10, mult_adds + 128 * 10


def _sequence_costs(separable: bool) -> tuple[int, int]:
    """(params, mult-adds per example) of SequenceCNN on length-64 sequences."""
    k, length = 9, 64
    params, mult_adds = k * 32 + 32, k * 32 * length
    for c, n in [(32, 64), (64, 128), (128, 128)]:
        weights = k * c + c * n if separable else k * c * n
        params += weights + n
        mult_adds += weights * length
    return params + 128 * 4 + 4, mult_adds + 128 * 4


def _test_labels(task, settings):
    """The test labels of a demo run, from the same fixed split the demo used."""
    if task == "digits":
        _, (_, labels) = data.digits_data()
    else:
        _, (_, labels) = data.waveform_data(n_train=settings["n_train"], n_test=settings["n_test"])
    return labels


def _check_outputs(tmp_path, task, expected, capsys):
    out = capsys.readouterr().out
    assert "standard / separable" in out
    assert f"{task}_accuracy_vs_mult_adds.png" in out
    png = tmp_path / f"{task}_accuracy_vs_mult_adds.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    figures = json.loads((tmp_path / f"{task}_results.json").read_text())
    labels = _test_labels(task, figures["settings"])
    for name in ("standard", "separable"):
        run = figures[name]
        assert (run["params"], run["mult_adds"]) == expected(name == "separable")
        # The accuracy is the fraction of the saved predictions that equal the true
        # labels, drawn again here from the data module's fixed split.
        predictions = np.asarray(run["test_predictions"])
        assert predictions.shape == labels.shape
        assert run["test_accuracy"] == np.count_nonzero(predictions == labels) / len(labels)
        assert run["epoch_accuracy"][-1] == run["test_accuracy"]
        assert len(run["epoch_accuracy"]) == figures["settings"]["epochs"] == 1
        assert np.all(np.isfinite(run["losses"])) and run["step_ms"] > 0
    std, sep = expected(False), expected(True)
    np.testing.assert_allclose(figures["ratios"]["params"], std[0] / sep[0], rtol=1e-12)
    np.testing.assert_allclose(figures["ratios"]["mult_adds"], std[1] / sep[1], rtol=1e-12)
    return figures


def test_demo_quick_digits_end_to_end(tmp_path, capsys):
    rc = cli.main(["demo", "--quick", "--out", str(tmp_path), "--seed", "1"])
    assert rc == 0
    figures = _check_outputs(tmp_path, "digits", _digits_costs, capsys)
    assert figures["settings"]["n_train"] == demo.QUICK_TRAIN
    assert figures["settings"]["n_test"] == 360
    assert figures["settings"]["seed"] == 1
    # The seed's claim in this topology: 3x3 blocks of 64-128 channels save about 8x.
    assert figures["ratios"]["block_mult_adds"] > 8.0


def test_demo_quick_sequence_end_to_end(tmp_path, capsys):
    rc = cli.main(["demo", "--task", "sequence", "--quick", "--out", str(tmp_path)])
    assert rc == 0
    _check_outputs(tmp_path, "sequence", _sequence_costs, capsys)


def test_demo_layers_task(monkeypatch, capsys):
    monkeypatch.setattr(demo, "LAYERS", ((20, 32, 64),))
    assert cli.main(["demo", "--task", "layers", "--quick"]) == 0
    out = capsys.readouterr().out
    standard = 9 * 32 * 64 * 400  # k^2 C N mult-adds at each of 20 x 20 positions
    separable = (9 * 32 + 32 * 64) * 400
    savings = 9 * 64 / (9 + 64)
    for text in (
        "20x20x32->64",
        f"{standard / 1e6:.1f}M",
        f"{separable / 1e6:.1f}M",
        f"{standard / separable:.2f}x",
        f"{savings:.2f}x",
    ):
        assert text in out


def test_demo_reports_bad_device_count(tmp_path, capsys):
    # Once JAX has started, --devices cannot add simulated CPU devices any more.
    too_many = jax.device_count() + 1
    rc = cli.main(["demo", "--quick", "--devices", str(too_many), "--out", str(tmp_path)])
    assert rc == 2
    assert f"`num_devices`={too_many}" in capsys.readouterr().err


def test_sequence_model_is_causal():
    model = networks.SequenceCNN(separable=True, stem=4, blocks=((8, 1), (8, 2), (8, 4)))
    x = np.random.default_rng(0).normal(size=(1, 32, 1)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.key(0), x)

    @jax.jit
    def block3(inputs):
        _, state = model.apply(variables, inputs, capture_intermediates=True)
        return state["intermediates"]["block3"]["__call__"][0]

    def features(inputs):
        return np.asarray(block3(inputs))

    t = 20
    changed = x.copy()
    changed[0, t, 0] += 5.0
    before, after = features(x), features(changed)
    np.testing.assert_array_equal(before[:, :t], after[:, :t])
    assert np.abs(before[:, t:] - after[:, t:]).max() > 0


def test_waveform_data_classes():
    (x, y), (xt, yt) = data.waveform_data(n_train=40, n_test=8, length=48, noise=0.0)
    assert x.shape == (40, 48, 1) and xt.shape == (8, 48, 1)
    assert np.bincount(y).tolist() == [10] * 4 and np.bincount(yt).tolist() == [2] * 4
    steps = np.diff(x[..., 0], axis=1)
    # Without noise: a square wave takes two values; a rising sawtooth goes up except at
    # its wraps (at most 48 / 4 of them), a falling one goes down.
    for row, label in zip(x[..., 0], y, strict=True):
        if label == 1:
            assert np.unique(np.round(np.abs(row), 5)).size == 1
    assert ((steps[y == 2] > 0).mean(axis=1) > 0.7).all()
    assert ((steps[y == 3] < 0).mean(axis=1) > 0.7).all()


def test_digits_data_split():
    from sklearn.datasets import load_digits

    (x, y), (xt, yt) = data.digits_data()
    assert x.shape == (1437, 8, 8, 1) and xt.shape == (360, 8, 8, 1)
    assert x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose([x.mean(), x.std()], [0.0, 1.0], atol=1e-5)
    # Stratified: each class holds 20% of its images in the test set, to one image.
    counts = np.bincount(load_digits().target)
    assert np.all(np.abs(np.bincount(yt) - 0.2 * counts) <= 1)
    _, (xt2, _) = data.digits_data()
    np.testing.assert_array_equal(xt, xt2)


def test_train_classifier_learns_a_linear_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 2)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    stats = []
    result = train_classifier(
        nn.Dense(2),
        (x, y),
        (x, y),
        epochs=3,
        batch_size=32,
        learning_rate=0.1,
        seed=0,
        on_epoch=stats.append,
    )
    assert result.losses.shape == (24,)
    assert [s.epoch for s in stats] == [1, 2, 3]
    assert result.losses[-1] < result.losses[0]
    assert result.test_accuracy > 0.9


def test_train_step_updates_batch_statistics_and_parameters():
    """The one train step on a model with batch norm: the running mean moves by the
    batch mean (flax's momentum 0.99), the loss is the softmax cross-entropy of the
    train-mode logits, and SGD moves the parameters by the learning rate times the
    gradient, all written out here from their definitions."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.BatchNorm(use_running_average=not train)(x)
            return nn.Dense(3)(x)

    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(8, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)
    model, optimizer = Net(), optax.sgd(0.1)
    variables = model.init(jax.random.key(0), x)
    params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
    step = jax.jit(train_step(model, optimizer, train=True))
    new_params, new_state, _, loss = step(params, state, optimizer.init(params), x, y)

    np.testing.assert_allclose(
        new_state["batch_stats"]["BatchNorm_0"]["mean"], 0.01 * x.mean(axis=0), rtol=1e-5
    )
    # Train mode normalizes with the batch's own statistics (biased variance, eps 1e-5).
    normalized = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-5)
    w = np.asarray(params["Dense_0"]["kernel"], np.float64)
    logits = normalized @ w + np.asarray(params["Dense_0"]["bias"], np.float64)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(float(loss), -log_p[np.arange(8), y].mean(), rtol=1e-5)
    # d loss / d kernel = normalized^T (softmax - onehot) / batch, one SGD step of 0.1.
    grad = normalized.T @ (np.exp(log_p) - np.eye(3)[y]) / 8
    np.testing.assert_allclose(
        new_params["Dense_0"]["kernel"], w - 0.1 * grad, rtol=1e-4, atol=1e-6
    )


def test_evaluate_pads_the_last_batch():
    mesh = data_mesh(1)
    params = replicate({"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}, mesh)
    x = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 3.0], [5.0, 1.0], [0.0, 2.0]])
    y = np.array([0, 1, 0, 0, 1])

    def apply_fn(variables, inputs):
        return inputs @ variables["params"]["w"]

    assert evaluate(apply_fn, params, x, y, mesh, batch_size=2) == pytest.approx(4 / 5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "`batch_size`=0"),
        ({"batch_size": 1000}, "`batch_size`=1000"),
        ({"epochs": 0}, "`epochs` must be >= 1"),
    ],
)
def test_train_classifier_rejects_bad_options(kwargs, match):
    x = np.zeros((16, 3), np.float32)
    y = np.zeros(16, np.int32)
    with pytest.raises(ValueError, match=match):
        train_classifier(nn.Dense(2), (x, y), (x, y), **kwargs)


def test_train_classifier_rejects_float_labels():
    x = np.zeros((16, 3), np.float32)
    with pytest.raises(TypeError, match="labels must be integers"):
        train_classifier(nn.Dense(2), (x, np.zeros(16)), (x, np.zeros(16)))


def test_mesh_and_shard_errors():
    with pytest.raises(ValueError, match="`num_devices`=0"):
        data_mesh(0)
    with pytest.raises(TypeError, match="`num_devices` must be an int"):
        data_mesh(1.0)
    with pytest.raises(ValueError, match="leading batch dim"):
        shard_batch(np.float32(1.0), data_mesh(1))


_EIGHT_DEVICES = textwrap.dedent(
    """
    import json
    import jax
    jax.config.update("jax_numpy_rank_promotion", "raise")
    import numpy as np
    from sepconv_jax.apps.data import digits_data
    from sepconv_jax.apps.networks import DigitsCNN
    from sepconv_jax.apps.train import data_mesh, shard_batch, train_classifier

    (x, y), (xt, yt) = digits_data()
    mesh8 = data_mesh(8)
    batch = shard_batch(x[:32], mesh8)
    out = {
        "device_count": jax.device_count(),
        "shard_rows": sorted(s.data.shape[0] for s in batch.addressable_shards),
        "shard_devices": len({s.device for s in batch.addressable_shards}),
    }
    for n in (1, 8):
        result = train_classifier(
            DigitsCNN(separable=True), (x[:128], y[:128]), (xt[:40], yt[:40]),
            epochs=2, batch_size=32, seed=0, mesh=data_mesh(n),
        )
        out[str(n)] = {
            "losses": result.losses.tolist(),
            "accuracy": result.test_accuracy,
            "devices": result.num_devices,
        }
    print(json.dumps(out))
    """
)


def test_eight_simulated_devices_match_one_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", _EIGHT_DEVICES],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["device_count"] == 8
    # The batch of 32 is split in 8 shards of 4 rows, one per device.
    assert out["shard_rows"] == [4] * 8 and out["shard_devices"] == 8
    one, eight = out["1"], out["8"]
    assert (one["devices"], eight["devices"]) == (1, 8)
    assert len(one["losses"]) == 8
    # Same batches, same initialization: only the float32 summation order differs.
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    assert eight["accuracy"] == pytest.approx(one["accuracy"], abs=1 / 40)


def test_best_time_never_reports_the_first_call(monkeypatch):
    # A fake clock: the first call takes 5 s (one-time costs), every later one 10 ms.
    from sepconv_jax.apps import timing

    now = [0.0]
    calls = []

    def call():
        now[0] += 5.0 if not calls else 0.01
        calls.append(None)

    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    seconds, timed = timing.best_time(call, max_reps=3, min_time=0.15)
    assert (seconds, timed, len(calls)) == (pytest.approx(0.01), 3, 4)
    # A call slower than min_time is timed once, after its warm-up.
    calls.clear()
    seconds, timed = timing.best_time(call, max_reps=3, min_time=0.001)
    assert (seconds, timed, len(calls)) == (pytest.approx(0.01), 1, 2)
    # No time to spend at all still times one call.
    calls.clear()
    seconds, timed = timing.best_time(call, max_reps=3, min_time=0.0)
    assert (seconds, timed, len(calls)) == (pytest.approx(0.01), 1, 2)


def test_demo_quick_stream_end_to_end(tmp_path, capsys):
    rc = cli.main(["demo", "--task", "stream", "--quick", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "real-time factor" in out and "stream_detections.png" in out
    assert (tmp_path / "stream_detections.png").read_bytes()[:8] == PNG_MAGIC
    figures = json.loads((tmp_path / "stream_results.json").read_text())
    settings = figures["settings"]
    chunks = figures["chunks"]
    assert [c["chunk"] for c in chunks] == [1, 16, 160]
    test_samples = int(settings["test_seconds"] * data.SAMPLE_RATE)
    assert [c["frames"] for c in chunks] == [
        settings["one_sample_frames"],
        test_samples,
        test_samples,
    ]
    for c in chunks:
        # Streamed equals offline to float32 rounding of the logits.
        assert c["max_abs_diff"] <= 1e-6 * max(1.0, settings["max_abs_logit"])
        assert 0 < c["median_us"] <= c["p99_us"]
        chunk_seconds = c["chunk"] / data.SAMPLE_RATE
        assert c["real_time_factor"] == pytest.approx(1e-6 * c["median_us"] / chunk_seconds)
    # The events listed are those of the test audio, generated again here from its seed.
    audio = data.event_audio(settings["test_seconds"], seed=settings["seed"] + 1)
    assert [(e["onset"], e["kind"]) for e in figures["events"]] == [
        (e.onset, e.kind) for e in audio.events
    ]
    assert len(figures["training"]["losses"]) == figures["training"]["steps"] == 10


def test_detection_metrics_by_hand():
    from sepconv_jax.apps.stream_demo import detection_metrics

    labels = np.zeros(100, np.int32)
    labels[10:30] = 1
    labels[60:80] = 1
    events = (
        data.AudioEvent(10, 30, "tone", 500.0, 500.0, 1.0),
        data.AudioEvent(60, 80, "chirp", 500.0, 3500.0, 1.0),
    )
    audio = data.EventAudio(np.zeros(100, np.float32), labels, events)
    p = np.zeros(100)
    p[14:30] = 0.9  # the first event, found 4 samples late (0.25 ms at 16 kHz)
    p[60:65] = 0.8  # the second, a quarter of its samples only: missed
    p[90:95] = 0.7  # 5 false alarms among 60 noise samples
    m = detection_metrics(p, audio)
    assert m["event_recall"] == 0.5 and m["events"] == 2
    assert m["false_alarm_rate"] == pytest.approx(5 / 60)
    assert m["median_onset_delay_ms"] == pytest.approx(4 / 16)
    # Wrong: 4 late samples + 15 missed of the second event + 5 false alarms.
    assert m["sample_accuracy"] == pytest.approx(1 - 24 / 100)
