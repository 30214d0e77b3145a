"""``sepconv-jax demo --task stream``: a causal separable network on a live waveform.

1. Generates 16 kHz audio of tones and chirps at random times in noise
   (:func:`sepconv_jax.apps.data.event_audio`), labelled per sample.
2. Trains a small causal separable detector (:class:`~sepconv_jax.apps.networks.
   StreamingDetector`) for a few seconds to tell, per sample, whether an event is on.
3. Streams a long test waveform through it chunk by chunk with ``decode=True``, for
   chunks of 1, 16 and 160 samples (1/16, 1 and 10 ms), timing every chunk, and
   compares the joined outputs with one offline call on the whole waveform.

The outcome (:class:`StreamRun`) holds the table's figures: the largest difference
between streamed and offline outputs, the median and 99th-percentile latency per
chunk, and the real-time factor (processing time over audio time: below 1 keeps up
with the stream); :mod:`sepconv_jax.apps.stream_report` prints it, plots the waveform
with its detections and writes the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sepconv_jax.apps import stream_report
from sepconv_jax.apps.data import SAMPLE_RATE, EventAudio, event_audio
from sepconv_jax.apps.networks import StreamingDetector
from sepconv_jax.apps.stream_records import ChunkRun as ChunkRun
from sepconv_jax.apps.stream_records import StreamRun as StreamRun
from sepconv_jax.apps.train import train_step

__all__ = ["CHUNKS", "ChunkRun", "StreamRun", "detection_metrics", "run", "run_stream", "stream"]

#: Samples per chunk of the streamed runs: 1/16 ms, 1 ms and 10 ms of audio.
CHUNKS = (1, 16, 160)


@dataclasses.dataclass(frozen=True)
class _Sizes:
    """Sizes of a run: audio seconds, training steps, batch and window, chunk-1 coverage."""

    train_seconds: float
    test_seconds: float
    steps: int
    batch: int
    window: int
    one_sample_frames: int


_FULL = _Sizes(30.0, 10.0, 150, 16, 2048, SAMPLE_RATE)
_QUICK = _Sizes(4.0, 1.0, 10, 8, 1024, 800)


def _train(
    model: StreamingDetector, audio: EventAudio, *, steps: int, batch: int, length: int, seed: int
) -> tuple[Any, np.ndarray, float]:
    """Adam on random windows of ``audio``: per-sample softmax cross-entropy."""
    rng = np.random.default_rng(seed)
    params = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, length, 1)))["params"]
    schedule = optax.cosine_decay_schedule(1e-2, steps)
    optimizer = optax.adam(schedule)
    opt_state = optimizer.init(params)
    step = jax.jit(train_step(model, optimizer))
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        starts = rng.integers(0, len(audio.waveform) - length, batch)
        x = np.stack([audio.waveform[s : s + length] for s in starts])[..., None]
        y = np.stack([audio.labels[s : s + length] for s in starts])
        params, _, opt_state, loss = step(params, {}, opt_state, x, y)
        losses.append(float(loss))
    return params, np.asarray(losses), time.perf_counter() - start


def stream(
    model: StreamingDetector, params: Any, waveform: np.ndarray, chunk: int, frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """Streams the first ``frames`` samples through ``model``, ``chunk`` samples at a time.

    Every chunk is one call of the jitted ``apply(..., decode=True,
    mutable=["cache"])``, fed from host memory and waited for, as an audio callback
    would run it; its wall time is measured around that call alone. The step is
    compiled, and run a few times on a scratch stream, before the clock starts.

    Args:
      model: the detector.
      params: its parameters.
      waveform: ``(samples,)``.
      chunk: samples per chunk.
      frames: samples to stream, a multiple of ``chunk``.

    Returns:
      ``(logits, seconds)``: ``(frames, classes)`` streamed logits, and the wall
      time of each chunk.
    """

    @functools.partial(jax.jit, donate_argnums=1)
    def step(params, cache, x):
        y, cache = model.apply({"params": params, **cache}, x, decode=True, mutable=["cache"])
        return y, cache

    def zero_cache():
        shapes = jax.eval_shape(
            lambda: model.init(jax.random.key(0), jnp.zeros((1, chunk, 1)), decode=True)
        )
        return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), {"cache": shapes["cache"]})

    cache = zero_cache()
    for _ in range(5):  # compile and warm up on a scratch stream
        _, cache = step(params, cache, np.zeros((1, chunk, 1), np.float32))
    cache = zero_cache()
    outputs, seconds = [], np.empty(frames // chunk)
    for i in range(frames // chunk):
        x = waveform[None, i * chunk : (i + 1) * chunk, None]
        start = time.perf_counter()
        y, cache = step(params, cache, x)
        y.block_until_ready()
        seconds[i] = time.perf_counter() - start
        outputs.append(y)
    return np.concatenate([np.asarray(y[0]) for y in outputs]), seconds


def detection_metrics(
    probabilities: np.ndarray, audio: EventAudio, threshold: float = 0.5
) -> dict[str, Any]:
    """How well per-sample event probabilities find the events of ``audio``.

    Returns:
      ``sample_accuracy`` (thresholded samples that match the labels),
      ``event_recall`` (events with most of their samples detected),
      ``false_alarm_rate`` (noise-only samples detected), ``median_onset_delay_ms``
      (from an event's onset to its first detected sample, over recalled events),
      ``events`` and ``threshold``.

    Example:
      >>> import numpy as np
      >>> from sepconv_jax.apps.data import event_audio
      >>> from sepconv_jax.apps.stream_demo import detection_metrics
      >>> audio = event_audio(1.0, seed=0)
      >>> m = detection_metrics(audio.labels.astype(float), audio)  # a perfect detector
      >>> m["sample_accuracy"], m["event_recall"], m["false_alarm_rate"], m["median_onset_delay_ms"]
      (1.0, 1.0, 0.0, 0.0)
    """
    detected = np.asarray(probabilities) >= threshold
    labels = audio.labels[: len(detected)].astype(bool)
    recalled, delays = 0, []
    events = [e for e in audio.events if e.offset <= len(detected)]
    for event in events:
        span = detected[event.onset : event.offset]
        if span.mean() > 0.5:
            recalled += 1
            delays.append(int(np.argmax(span)) / SAMPLE_RATE * 1e3)
    noise = ~labels
    return {
        "sample_accuracy": float(np.mean(detected == labels)),
        "event_recall": recalled / len(events) if events else float("nan"),
        "false_alarm_rate": float(detected[noise].mean()) if noise.any() else float("nan"),
        "median_onset_delay_ms": float(np.median(delays)) if delays else float("nan"),
        "events": len(events),
        "threshold": threshold,
    }


def run_stream(*, quick: bool = False, seed: int = 0) -> StreamRun:
    """Generates audio, trains the detector, streams the test waveform in 1, 16 and 160.

    Args:
      quick: small sizes for CI: 10 training steps, 1 s of test audio, chunks of 1
        sample over its first 50 ms.
      seed: seed of the training audio (the test audio uses ``seed + 1``) and of
        the training.

    Returns:
      A :class:`StreamRun`.
    """
    begin = time.perf_counter()
    sizes = _QUICK if quick else _FULL
    model = StreamingDetector()
    train_audio = event_audio(sizes.train_seconds, seed=seed)
    test_audio = event_audio(sizes.test_seconds, seed=seed + 1)
    params, losses, train_s = _train(
        model, train_audio, steps=sizes.steps, batch=sizes.batch, length=sizes.window, seed=seed
    )
    waveform = test_audio.waveform
    offline = np.asarray(jax.jit(model.apply)({"params": params}, waveform[None, :, None])[0])
    runs, probabilities = [], None
    for chunk in CHUNKS:
        limit = sizes.one_sample_frames if chunk == 1 else len(waveform)
        frames = limit // chunk * chunk
        logits, seconds = stream(model, params, waveform, chunk, frames)
        median = float(np.median(seconds))
        runs.append(
            ChunkRun(
                chunk=chunk,
                frames=frames,
                max_abs_diff=float(np.max(np.abs(logits - offline[:frames]))),
                median_us=1e6 * median,
                p99_us=1e6 * float(np.percentile(seconds, 99)),
                real_time_factor=median / (chunk / SAMPLE_RATE),
                total_s=float(seconds.sum()),
            )
        )
        if chunk == CHUNKS[-1]:
            probabilities = np.asarray(jax.nn.softmax(logits, axis=-1)[:, 1])
    assert probabilities is not None
    n_params = sum(int(p.size) for p in jax.tree.leaves(params))
    settings = {
        **dataclasses.asdict(sizes),
        "seed": seed,
        "sample_rate": SAMPLE_RATE,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "max_abs_logit": float(np.max(np.abs(offline))),
        "model": {
            "channels": model.channels,
            "kernel": model.kernel,
            "dilations": list(model.dilations),
            "receptive_field": model.receptive_field(),
            "params": n_params,
        },
    }
    training = {"steps": sizes.steps, "seconds": train_s, "losses": losses.tolist()}
    return StreamRun(
        settings=settings,
        training=training,
        detection=detection_metrics(probabilities, test_audio),
        chunks=tuple(runs),
        audio=test_audio,
        probabilities=probabilities,
        wall_s=time.perf_counter() - begin,
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``sepconv-jax demo --task stream``; returns the exit code."""
    from rich.console import Console

    try:
        result = run_stream(quick=args.quick, seed=args.seed)
    except (ValueError, TypeError) as e:
        print(f"sepconv-jax demo: error: {e}", file=sys.stderr)
        return 2
    paths = stream_report.write_outputs(result, args.out)
    stream_report.print_run(result, paths, Console())
    return 0
