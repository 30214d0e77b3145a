"""The demo's datasets: small, bundled or generated, never downloaded.

* :func:`digits_data`: scikit-learn's 8x8 handwritten digits with a fixed split.
* :func:`waveform_data`: noisy periodic waveforms to classify, a 1-D task for
  audio-like signals, generated from a fixed seed.
* :func:`event_audio`: a long 16 kHz waveform of tones and chirps at random times in
  noise, labelled per sample, for the streaming demo.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

__all__ = [
    "EVENT_KINDS",
    "SAMPLE_RATE",
    "WAVEFORMS",
    "AudioEvent",
    "EventAudio",
    "digits_data",
    "event_audio",
    "waveform_data",
]


def digits_data(
    image_size: int = 8, test_fraction: float = 0.2
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's handwritten digits, standardized, with a fixed split.

    The split is stratified by class with ``random_state=0``, whatever the
    training seed, so every run tests on the same images. Pixels (0 to 16) are
    standardized with the mean and standard deviation of the training images.

    Args:
      image_size: side of the square images; the native 8x8 images are resized
        bilinearly when it differs.
      test_fraction: share of the 1,797 images held out for testing.

    Returns:
      ``((x_train, y_train), (x_test, y_test))`` with images
      ``(n, image_size, image_size, 1)`` float32 and labels ``(n,)`` int32 in 0..9.

    Raises:
      RuntimeError: when scikit-learn is not installed.

    Example:
      >>> from sepconv_jax.apps.data import digits_data
      >>> (x_train, y_train), (x_test, y_test) = digits_data(image_size=8)
      >>> x_train.shape, x_test.shape, int(y_train.max())
      ((1437, 8, 8, 1), (360, 8, 8, 1), 9)
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise RuntimeError(
            f"the digits task needs scikit-learn (`pip install scikit-learn`): {e}"
        ) from None
    digits = load_digits()
    images = digits.images.astype(np.float32)[..., None] / 16.0
    if image_size != images.shape[1]:
        shape = (images.shape[0], image_size, image_size, 1)
        images = np.asarray(jax.image.resize(images, shape, "linear"))
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=0
    )
    mean, std = x_train.mean(), x_train.std()
    x_train = (x_train - mean) / std
    x_test = (x_test - mean) / std
    return (x_train, y_train), (x_test, y_test)


#: The classes of :func:`waveform_data`, in label order.
WAVEFORMS = ("sine", "square", "rising sawtooth", "falling sawtooth")


def waveform_data(
    n_train: int = 2048, n_test: int = 512, length: int = 64, noise: float = 0.3, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A generated sequence task: which waveform is under the noise?

    Each example is one of :data:`WAVEFORMS` (the label, balanced; telling the two
    sawtooths apart needs the direction of time) with a random period of 4 to 16
    samples, random phase, amplitude 0.5 to 1.5, and Gaussian noise of standard
    deviation ``noise``.

    Args:
      n_train: training examples.
      n_test: test examples.
      length: samples per sequence.
      noise: standard deviation of the additive noise.
      seed: seed of the generator (the data, not the training).

    Returns:
      ``((x_train, y_train), (x_test, y_test))`` with sequences ``(n, length, 1)``
      float32 and labels ``(n,)`` int32 in 0..3.

    Example:
      >>> from sepconv_jax.apps.data import waveform_data
      >>> (x, y), _ = waveform_data(n_train=8, n_test=4, length=32)
      >>> x.shape, y.tolist()
      ((8, 32, 1), [0, 1, 2, 3, 0, 1, 2, 3])
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    labels = np.arange(n) % len(WAVEFORMS)
    period = rng.uniform(4.0, 16.0, size=(n, 1))
    phase = rng.uniform(0.0, 1.0, size=(n, 1))
    amplitude = rng.uniform(0.5, 1.5, size=(n, 1))
    cycles = np.arange(length)[None, :] / period + phase
    frac = cycles % 1.0
    waves = np.stack(
        [
            np.sin(2 * np.pi * cycles),
            np.where(frac < 0.5, 1.0, -1.0),
            2.0 * frac - 1.0,
            1.0 - 2.0 * frac,
        ]
    )
    signal = waves[labels, np.arange(n)] * amplitude
    x = (signal + noise * rng.normal(size=signal.shape)).astype(np.float32)[..., None]
    y = labels.astype(np.int32)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


#: Samples per second of :func:`event_audio`.
SAMPLE_RATE = 16_000
#: The kinds of event in :func:`event_audio`.
EVENT_KINDS = ("tone", "chirp")


@dataclasses.dataclass(frozen=True)
class AudioEvent:
    """One event of :func:`event_audio`: samples ``[onset, offset)`` of a tone or a chirp.

    Attributes:
      onset: first sample.
      offset: one past the last sample.
      kind: ``"tone"`` (constant frequency) or ``"chirp"`` (a linear sweep).
      start_hz: frequency at the onset.
      end_hz: frequency at the offset (``start_hz`` for a tone).
      amplitude: peak amplitude.
    """

    onset: int
    offset: int
    kind: str
    start_hz: float
    end_hz: float
    amplitude: float


@dataclasses.dataclass(frozen=True)
class EventAudio:
    """A generated waveform, its per-sample labels and its events.

    Attributes:
      waveform: ``(samples,)`` float32.
      labels: ``(samples,)`` int32: 1 inside an event, 0 in noise alone.
      events: the events in time order.
      sample_rate: samples per second.
    """

    waveform: np.ndarray
    labels: np.ndarray
    events: tuple[AudioEvent, ...]
    sample_rate: int = SAMPLE_RATE


def event_audio(seconds: float, *, noise: float = 0.2, seed: int = 0) -> EventAudio:
    """Tones and chirps at random times in white noise, at 16 kHz, labelled per sample.

    Events last 80 to 250 ms with gaps of 50 to 400 ms between them; each is a tone
    (300 Hz to 3 kHz) or a chirp (a linear sweep between two frequencies from 300 Hz
    to 4 kHz at least 2.5 kHz apart, up or down), with a random phase, an amplitude
    of 0.3 to 1.0 and 5 ms fades, over Gaussian noise of standard deviation ``noise``.

    Args:
      seconds: length of the waveform.
      noise: standard deviation of the noise.
      seed: seed of the generator.

    Returns:
      An :class:`EventAudio`.

    Example:
      >>> from sepconv_jax.apps.data import event_audio
      >>> audio = event_audio(2.0, seed=1)
      >>> audio.waveform.shape, audio.waveform.dtype, sorted(set(audio.labels.tolist()))
      ((32000,), dtype('float32'), [0, 1])
      >>> all(audio.labels[e.onset : e.offset].all() for e in audio.events)
      True
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    waveform = noise * rng.standard_normal(n)
    labels = np.zeros(n, np.int32)
    events = []
    t = int(rng.uniform(0.05, 0.3) * SAMPLE_RATE)
    while True:
        length = int(rng.uniform(0.08, 0.25) * SAMPLE_RATE)
        if t + length > n:
            break
        kind = EVENT_KINDS[int(rng.integers(2))]
        amplitude = float(rng.uniform(0.3, 1.0))
        if kind == "tone":
            start_hz = end_hz = float(rng.uniform(300.0, 3000.0))
        else:
            start_hz, end_hz = rng.uniform(300.0, 4000.0, 2)
            while abs(end_hz - start_hz) < 2500.0:
                start_hz, end_hz = rng.uniform(300.0, 4000.0, 2)
        time = np.arange(length) / SAMPLE_RATE
        duration = length / SAMPLE_RATE
        # A linear sweep: the phase integrates start + (end - start) * time / duration.
        phase = 2 * np.pi * (start_hz * time + (end_hz - start_hz) * time**2 / (2 * duration))
        fade = np.minimum(1.0, np.minimum(time, duration - time) / 0.005)
        waveform[t : t + length] += amplitude * fade * np.sin(phase + rng.uniform(0, 2 * np.pi))
        labels[t : t + length] = 1
        events.append(AudioEvent(t, t + length, kind, float(start_hz), float(end_hz), amplitude))
        t += length + int(rng.uniform(0.05, 0.4) * SAMPLE_RATE)
    return EventAudio(waveform.astype(np.float32), labels, tuple(events))
