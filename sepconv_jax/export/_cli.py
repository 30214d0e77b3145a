"""``sepconv-jax export``: a reference model to ONNX or LiteRT.

:func:`register` adds the subcommand to the CLI's subparsers; :func:`run` is what
it runs. The model's variables come from ``init`` (or a checkpoint restored by
the caller); ``--int8`` quantizes it first, calibrated on random inputs.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import jax
import numpy as np

__all__ = ["MODELS", "build_model", "register", "run"]

#: The models the command knows, with their constructor's width argument.
MODELS = {
    "mobilenet_v1": ("MobileNetV1", "width_multiplier"),
    "mobilenet_v2": ("MobileNetV2", "width_multiplier"),
    "efficientnet_b0": ("EfficientNetB0", "width_coefficient"),
    "xception": ("Xception", None),
}


def build_model(name: str, *, num_classes: int = 1000, width: float = 1.0) -> Any:
    """A reference model by name (``models.from_name`` where the package has it)."""
    from sepconv_jax import models

    if name not in MODELS:
        raise ValueError(f"`--model` must be one of {sorted(MODELS)}, got {name!r}")
    cls_name, width_arg = MODELS[name]
    options: dict[str, Any] = {"num_classes": num_classes}
    if width_arg is not None and width != 1.0:
        options[width_arg] = width
    from_name = getattr(models, "from_name", None)
    if from_name is not None:
        return from_name(name, **options)
    return getattr(models, cls_name)(**options)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``export`` to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "export",
        help="export a reference model to ONNX or LiteRT (TFLite)",
        description="Export a reference model (batch norm folded) to ONNX or LiteRT.",
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="mobilenet_v2")
    parser.add_argument("--format", choices=("onnx", "tflite"), default="onnx")
    parser.add_argument("--out", required=True, help="the file to write")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--int8", action="store_true", help="quantize (ONNX only, QDQ)")
    parser.add_argument("--no-fold", action="store_true", help="keep batch norms unfolded")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Builds, initializes, optionally quantizes and exports; prints what it wrote."""
    from sepconv_jax.export import to_onnx
    from sepconv_jax.export.litert import to_tflite
    from sepconv_jax.export.quantization import quantize

    if args.int8 and args.format != "onnx":
        raise SystemExit("--int8 is available for --format onnx only")
    model = build_model(args.model, num_classes=args.classes, width=args.width)
    x = np.zeros((1, args.size, args.size, 3), np.float32)
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)
    fold = not args.no_fold
    if args.int8:
        calibration = [np.random.default_rng(0).normal(size=(8, *x.shape[1:])).astype(np.float32)]
        model, variables = quantize(model, variables, calibration)
    export = to_onnx if args.format == "onnx" else to_tflite
    path = export(model, variables, x, args.out, fold_batch_norm=fold)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    return 0
