"""Our LiteRT graph against Keras' one, with the same weights and without: is a gap
the graph or the harness?

Builds, for one model of ``bench --export``:

* ``ours (timm weights)``: the timm model converted by ``sepconv_jax.interop.timm``
  and exported by ``to_tflite`` (what ``bench --export`` times; timm's symmetric
  stride-2 padding converts to 5 ``PAD`` ops);
* ``ours (Keras weights)``: ``keras.applications`` (``weights=None``) imported by
  ``sepconv_jax.interop.keras_models.convert`` and exported by ``to_tflite`` (Keras'
  padding, no ``PAD``);
* ``keras``: the same Keras model through ``tf.lite.TFLiteConverter``;

float32, or full-integer int8 (``--int8``, every side calibrated on the same 8
generated images), and times the three in one process, taking turns
(:func:`sepconv_jax.export.latency.time_side_by_side`), in the LiteRT interpreter
with XNNPACK and 2 threads. The Keras model is built and converted in a child
process with ``KERAS_BACKEND=tensorflow`` (the converter needs it) and read back
here from a ``.keras`` file.

Usage: ``python benchmarks/litert_probe.py --model EfficientNetB0 --int8 --out
benchmarks/results/litert_probe``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

MODELS = ("MobileNetV2", "MobileNetV3Large", "EfficientNetB0")


def _keras_side(name: str, folder: str, int8: bool) -> None:
    """Child process: the Keras model to ``keras.keras`` and its ``.tflite``."""
    import keras
    import tensorflow as tf

    from sepconv_jax.export.litert import convert, full_integer

    extra = {"include_preprocessing": False} if name.startswith("MobileNetV3") else {}
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(224, 224, 3), classifier_activation=None, **extra
    )
    model.save(os.path.join(folder, "keras.keras"))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        images = np.load(os.path.join(folder, "calibration.npy"))
        converter = full_integer(converter, [image[None] for image in images])
    with open(os.path.join(folder, "keras.tflite"), "wb") as f:
        f.write(convert(converter))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, default="MobileNetV2")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--runs", type=int, default=150)
    parser.add_argument("--out", default=None)
    parser.add_argument("--keras-side", nargs=2, metavar=("NAME", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keras_side:
        _keras_side(*args.keras_side, args.int8)
        return
    import timm  # noqa: F401  (torch and timm before jax: loaded after it, triton crashes)

    folder = tempfile.mkdtemp()
    images = np.random.default_rng(7).standard_normal((8, 224, 224, 3)).astype(np.float32)
    np.save(os.path.join(folder, "calibration.npy"), images)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, __file__, "--keras-side", args.model, folder]
    subprocess.run(command + (["--int8"] if args.int8 else []), env=env, check=True)

    import keras

    from sepconv_jax.apps import bench_models
    from sepconv_jax.export import latency, litert
    from sepconv_jax.interop import keras_models
    from sepconv_jax.interop.timm import convert

    x = images[:1]
    calibration = [images] if args.int8 else None
    module, variables = convert(bench_models._timm_model(bench_models.ZOO[args.model], 1000))
    paths = {"ours (timm weights)": os.path.join(folder, "ours_timm.tflite")}
    litert.to_tflite(
        module, variables, x, paths["ours (timm weights)"], calibration_batches=calibration
    )
    imported, imported_variables = keras_models.convert(
        keras.models.load_model(os.path.join(folder, "keras.keras"))
    )
    paths["ours (Keras weights)"] = os.path.join(folder, "ours_keras.tflite")
    litert.to_tflite(
        imported,
        imported_variables,
        x,
        paths["ours (Keras weights)"],
        calibration_batches=calibration,
    )
    paths["keras"] = os.path.join(folder, "keras.tflite")
    runners = {name: latency.litert_runner(path, x) for name, path in paths.items()}
    stats = latency.time_side_by_side(
        {name: r["call"] for name, r in runners.items()}, runs=args.runs, rounds=10
    )
    rows = [{"graph": name, **stats[name], "ops": runners[name]["ops"]} for name in paths]
    load = os.getloadavg()
    print(f"{args.model} {'int8' if args.int8 else 'float32'}, load average {load[0]:.1f}")
    print("| graph | median ms | p90 ms | / keras | op types |")
    print("| --- | ---: | ---: | ---: | --- |")
    keras_ms = stats["keras"]["median_ms"]
    for row in rows:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(row["ops"].items()))
        print(
            f"| {row['graph']} | {row['median_ms']:.2f} | {row['p90_ms']:.2f} | "
            f"{row['median_ms'] / keras_ms:.2f}x | {ops} |"
        )
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        name = f"{args.model}_{'int8' if args.int8 else 'float32'}.json"
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(
                {"model": args.model, "int8": args.int8, "load_average": load, "rows": rows},
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
