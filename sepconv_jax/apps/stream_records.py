"""The records of ``sepconv-jax demo --task stream``, as :func:`run_stream` returns them.

:func:`~sepconv_jax.apps.stream_demo.run_stream` returns a :class:`StreamRun` (settings, training, detection figures, the audio and the
streamed probabilities) with one :class:`ChunkRun` per chunk size. Both
:mod:`sepconv_jax.apps.stream_demo`, which makes them, and
:mod:`sepconv_jax.apps.stream_report`, which renders them, import them from here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sepconv_jax.apps.data import EventAudio

__all__ = ["ChunkRun", "StreamRun"]


@dataclasses.dataclass(frozen=True)
class ChunkRun:
    """One chunk size of a :class:`StreamRun`.

    Attributes:
      chunk: samples per chunk.
      frames: samples streamed (a whole number of chunks).
      max_abs_diff: largest ``|streamed - offline|`` over the streamed logits.
      median_us: median wall time of one chunk, microseconds.
      p99_us: 99th percentile of the wall time of one chunk, microseconds.
      real_time_factor: ``median_us`` over the chunk's duration (below 1 keeps up).
      total_s: wall time of the whole stream, seconds.
    """

    chunk: int
    frames: int
    max_abs_diff: float
    median_us: float
    p99_us: float
    real_time_factor: float
    total_s: float


@dataclasses.dataclass(frozen=True)
class StreamRun:
    """The outcome of :func:`run_stream`.

    Attributes:
      settings: sizes, seed, backend and model.
      training: steps, seconds and the loss of every step.
      detection: per-sample accuracy, event recall, false alarms and onset delay of
        the streamed detections (:func:`detection_metrics`).
      chunks: one :class:`ChunkRun` per chunk size.
      audio: the test waveform, its labels and its events.
      probabilities: the streamed event probability of every test sample.
      wall_s: wall time of the whole run, seconds.
    """

    settings: dict[str, Any]
    training: dict[str, Any]
    detection: dict[str, Any]
    chunks: tuple[ChunkRun, ...]
    audio: EventAudio
    probabilities: np.ndarray
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (without the waveform and the probabilities)."""
        return {
            "settings": self.settings,
            "training": self.training,
            "detection": self.detection,
            "chunks": [dataclasses.asdict(c) for c in self.chunks],
            "events": [dataclasses.asdict(e) for e in self.audio.events],
            "wall_s": self.wall_s,
        }
