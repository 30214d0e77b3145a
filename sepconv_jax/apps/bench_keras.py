"""Keras' side of ``bench --export``: Keras applications through ``tf.lite.TFLiteConverter``.

The conversion runs in a child process of its own (:func:`start_keras`), with
``KERAS_BACKEND=tensorflow``: the converter needs Keras on TensorFlow, while this
package and its tests load Keras on JAX, and a process holds one Keras backend.
Each model is built with ``weights=None`` (nothing is downloaded), no classifier
activation (timm's models end at the logits too) and, for MobileNetV3, without the
preprocessing layer (ours has none); it is converted twice: float32, and full-integer
int8 with the same settings as ours (:func:`sepconv_jax.export.litert.full_integer`).

Run as ``python -m sepconv_jax.apps.bench_keras FOLDER SIZE CALIBRATION.npy NAME...``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["KERAS_APPLICATIONS", "collect_keras", "main", "start_keras"]

#: Our model name -> the ``keras.applications`` constructor of the same network.
KERAS_APPLICATIONS = {
    "MobileNetV2": "MobileNetV2",
    "MobileNetV3Large": "MobileNetV3Large",
    "EfficientNetB0": "EfficientNetB0",
}


def _paths(folder: str, name: str) -> dict[str, str]:
    return {
        "keras-litert": os.path.join(folder, f"keras_{name}.tflite"),
        "keras-litert-int8": os.path.join(folder, f"keras_{name}_int8.tflite"),
    }


def start_keras(names: Sequence[str], size: int, folder: str, calibration_path: str) -> Any:
    """Starts converting the Keras applications of ``names`` in a child process.

    Args:
      names: keys of :data:`KERAS_APPLICATIONS`.
      size: the square input side.
      folder: where the ``.tflite`` files go.
      calibration_path: an ``.npy`` file of ``(n, size, size, 3)`` float32 images.

    Returns:
      The child, for :func:`collect_keras` (it runs while the caller exports its own).
    """
    unknown = [n for n in names if n not in KERAS_APPLICATIONS]
    if unknown:
        raise ValueError(f"`names` has {unknown}; choose from {tuple(KERAS_APPLICATIONS)}")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", __name__, folder, str(size), calibration_path, *names]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def collect_keras(
    child: Any, names: Sequence[str], folder: str, *, timeout: float = 1800
) -> dict[str, dict[str, Any]]:
    """Waits for :func:`start_keras`'s child.

    Returns:
      ``name -> {"keras-litert": path, "keras-litert-int8": path}``, a path
      replaced by ``{"note": why}`` where that conversion failed.
    """
    try:
        _, stderr = child.communicate(timeout=timeout)
        lines = (stderr or "").strip().splitlines() or ["?"]
        failure = None if child.returncode == 0 else lines[-1]
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        failure = f"the Keras conversion took over {timeout:.0f} s"
    report_path = os.path.join(folder, "keras.json")
    report = {}
    if os.path.exists(report_path):
        with open(report_path) as f:
            report = json.load(f)
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        found[name] = {}
        for runner, path in _paths(folder, name).items():
            note = report.get(name, {}).get(runner) or failure or "not converted"
            found[name][runner] = path if os.path.exists(path) else {"note": note}
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """The child process: converts each named model, writes ``keras.json`` (errors)."""
    folder, size_text, calibration_path, *names = sys.argv[1:] if argv is None else argv
    import importlib

    import numpy as np
    import tensorflow as tf

    from sepconv_jax.export.litert import convert, full_integer

    keras = importlib.import_module("keras")
    size = int(size_text)
    images = np.load(calibration_path).astype(np.float32)
    samples = [image[None] for image in images]
    report: dict[str, dict[str, str]] = {}
    for name in names:
        report[name] = {}
        options: dict[str, Any] = {
            "weights": None,
            "input_shape": (size, size, 3),
            "classifier_activation": None,
        }
        if name.startswith("MobileNetV3"):
            options["include_preprocessing"] = False
        model = getattr(keras.applications, KERAS_APPLICATIONS[name])(**options)
        for runner, path in _paths(folder, name).items():
            try:
                converter = tf.lite.TFLiteConverter.from_keras_model(model)
                if runner.endswith("int8"):
                    full_integer(converter, samples)
                with open(path, "wb") as f:
                    f.write(convert(converter))
            except Exception as error:  # recorded for the parent, which goes on
                report[name][runner] = f"{type(error).__name__}: {error}"[:300]
    with open(os.path.join(folder, "keras.json"), "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
