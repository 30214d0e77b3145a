"""``sepconv-jax export``: a reference model to ONNX or LiteRT.

:func:`register` adds the subcommand to the CLI's subparsers; :func:`run` is what
it runs. The model's variables come from ``init`` (or a checkpoint restored by
the caller); ``--int8`` quantizes it first, calibrated on random inputs.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["build_model", "model_names", "register", "run"]


def model_names() -> tuple[str, ...]:
    """The names ``--model`` takes: the model zoo's (:data:`sepconv_jax.models.NAMES`)."""
    from sepconv_jax import models

    return tuple(models.NAMES)


def build_model(name: str, *, num_classes: int = 1000, width: float = 1.0) -> Any:
    """The model-zoo architecture ``name`` (:func:`sepconv_jax.models.from_name`).

    Raises:
      ValueError: for an unknown name, or a width multiplier the model has not.
    """
    from sepconv_jax import models

    if name not in models.NAMES:
        raise ValueError(f"`--model` must be one of {', '.join(models.NAMES)}, got {name!r}")
    return models.from_name(name, num_classes=num_classes, width_multiplier=width)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``export`` to the CLI's subparsers (the exporters load when it runs)."""
    parser = subparsers.add_parser(
        "export",
        help="export a reference model to ONNX or LiteRT (TFLite)",
        description="Export a reference model (batch norm folded) to ONNX or LiteRT.",
    )
    parser.add_argument("--model", choices=model_names(), default="mobilenet_v2")
    parser.add_argument("--format", choices=("onnx", "tflite"), default="onnx")
    parser.add_argument("--out", required=True, help="the file to write")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (MobileNets)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--int8", action="store_true", help="quantize (ONNX only, QDQ)")
    parser.add_argument(
        "--full-range",
        action="store_true",
        help="with --int8: 8-bit weights in [-127, 127] instead of the default 7 bits "
        "(onnxruntime's reduce_range), which x86 CPUs without VNNI can saturate",
    )
    parser.add_argument("--no-fold", action="store_true", help="keep batch norms unfolded")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Builds, initializes, optionally quantizes and exports; prints what it wrote."""
    import jax
    import numpy as np

    from sepconv_jax.export import to_onnx
    from sepconv_jax.export.litert import to_tflite
    from sepconv_jax.export.quantization import quantize

    if args.int8 and args.format != "onnx":
        raise SystemExit("--int8 is available for --format onnx only")
    if args.full_range and not args.int8:
        raise SystemExit("--full-range applies to --int8 only")
    model = build_model(args.model, num_classes=args.classes, width=args.width)
    x = np.zeros((1, args.size, args.size, 3), np.float32)
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)
    fold = not args.no_fold
    if args.int8:
        calibration = [np.random.default_rng(0).normal(size=(8, *x.shape[1:])).astype(np.float32)]
        model, variables = quantize(model, variables, calibration, reduce_range=not args.full_range)
    export = to_onnx if args.format == "onnx" else to_tflite
    path = export(model, variables, x, args.out, fold_batch_norm=fold)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    return 0
