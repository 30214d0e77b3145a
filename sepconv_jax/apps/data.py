"""The demo's datasets: small, bundled or generated, never downloaded.

* :func:`digits_data`: scikit-learn's 8x8 handwritten digits with a fixed split.
* :func:`waveform_data`: noisy periodic waveforms to classify, a 1-D task for
  audio-like signals, generated from a fixed seed.
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["WAVEFORMS", "digits_data", "waveform_data"]


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
