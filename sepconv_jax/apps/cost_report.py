"""``sepconv-jax cost``: one layer's standard vs separable cost, or a model's profile.

``sepconv-jax cost --layer k=3,c=256,n=256,hw=28`` prints the closed forms of
:mod:`sepconv_jax.cost` for one layer; ``sepconv-jax cost --model mobilenet_v1``
prints the :class:`~sepconv_jax.cost.Profile` of a model-zoo architecture named as
:func:`sepconv_jax.models.from_name` names it; ``--device h100`` (or another name of
:data:`sepconv_jax.cost.DEVICES`, or ``this`` for this machine, measured) adds its
roofline, and ``--measure`` times every layer on this machine beside it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import jax
import numpy as np

from sepconv_jax import _spec, models
from sepconv_jax.cost import (
    DEVICES,
    Device,
    Profile,
    depthwise_conv_cost,
    pointwise_conv_cost,
    profile,
    roofline,
    savings_factor,
    separable_conv_cost,
    standard_conv_cost,
)

__all__ = ["layer_comparison", "model_profile", "register_cli"]


def _parse_layer(spec: str) -> dict[str, Any]:
    """``"k=3,c=256,n=256,hw=28"`` -> keyword values (``m`` and ``hw`` optional)."""
    allowed = {"k", "c", "n", "hw", "m"}
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in allowed:
            raise ValueError(
                f"`--layer` entry {item!r} is not KEY=VALUE with KEY in k, c, n, hw, m; "
                f"e.g. --layer k=3,c=256,n=256,hw=28"
            )
        try:
            parts = tuple(int(p) for p in value.lower().split("x"))
        except ValueError:
            raise ValueError(f"`--layer` value {item!r} must be an int (or HxW for hw)") from None
        if key != "hw" and len(parts) != 1:
            raise ValueError(f"`--layer` value {item!r} must be one int")
        values[key] = parts if len(parts) > 1 else parts[0]
    missing = [k for k in ("k", "c", "n") if k not in values]
    if missing:
        raise ValueError(
            f"`--layer` {spec!r} lacks {', '.join(missing)}; e.g. --layer k=3,c=256,n=256,hw=28"
        )
    return values


def layer_comparison(spec: str) -> dict[str, Any]:
    """Standard vs separable cost of the layer described by a ``--layer`` spec.

    Args:
      spec: ``"k=KERNEL,c=IN,n=OUT"`` plus optional ``hw=SIZE`` (or ``hw=HxW``, the
        output's spatial size; default 1, i.e. per position) and ``m=MULTIPLIER``.

    Returns:
      A dict with the parsed sizes, a :class:`Cost` for ``"standard"``,
      ``"depthwise"``, ``"pointwise"`` and ``"separable"``, the measured ``"ratio"``
      of standard to separable mult-adds and the seed's ``"savings_factor"``.

    Raises:
      ValueError: for a malformed spec or invalid sizes.

    Example:
      >>> from sepconv_jax.apps.cost_report import layer_comparison
      >>> r = layer_comparison("k=3,c=256,n=256,hw=28")
      >>> r["standard"].mult_adds, r["separable"].mult_adds, round(r["ratio"], 3)
      (462422016, 53186560, 8.694)
    """
    v = _parse_layer(spec)
    k, c, n, hw, m = v["k"], v["c"], v["n"], v.get("hw", 1), v.get("m", 1)
    standard = standard_conv_cost(k, c, n, output_spatial=hw)
    depthwise = depthwise_conv_cost(k, c, depth_multiplier=m, output_spatial=hw)
    pointwise = pointwise_conv_cost(c * m, n, output_spatial=hw)
    separable = separable_conv_cost(k, c, n, depth_multiplier=m, output_spatial=hw)
    return {
        "k": k,
        "c": c,
        "n": n,
        "hw": hw,
        "m": m,
        "standard": standard,
        "depthwise": depthwise,
        "pointwise": pointwise,
        "separable": separable,
        "ratio": standard.mult_adds / separable.mult_adds,
        "savings_factor": savings_factor(k, n),
    }


def _fmt_int(value: int) -> str:
    return f"{value:,}"


def _print_layer(spec: str, console) -> None:
    from rich.table import Table

    r = layer_comparison(spec)
    hw = r["hw"] if isinstance(r["hw"], int) else "x".join(map(str, r["hw"]))
    title = f"k={r['k']}, C={r['c']}, N={r['n']}, output {hw}" + (
        f"x{hw}" if isinstance(r["hw"], int) else ""
    )
    if r["m"] != 1:
        title += f", depth multiplier {r['m']}"
    table = Table(title=title)
    for col in ("layer", "mult-adds", "params"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for key, label in (
        ("standard", "standard conv"),
        ("depthwise", "  depthwise"),
        ("pointwise", "  pointwise"),
        ("separable", "separable conv"),
    ):
        cost = r[key]
        table.add_row(label, _fmt_int(cost.mult_adds), _fmt_int(cost.params))
    console.print(table)
    console.print(
        f"standard / separable mult-adds: {r['ratio']:.3f}; "
        f"savings factor k^2 N / (k^2 + N) = {r['savings_factor']:.3f}"
    )


def model_profile(
    name: models.Name,
    *,
    resolution: int = 224,
    width: float = 1.0,
    full_convolution: bool = False,
    num_classes: int = 1000,
    measure: bool = False,
) -> Profile:
    """The :class:`Profile` of a model-zoo model for one image of ``resolution``.

    Args:
      name: one of :data:`sepconv_jax.models.NAMES`: ``"mobilenet_v1"``,
        ``"mobilenet_v2"``, ``"efficientnet_b0"`` or ``"xception"``.
      resolution: input height and width.
      width: the width multiplier (MobileNets only).
      full_convolution: standard convolutions in place of separable ones
        (``"mobilenet_v1"`` only).
      num_classes: classifier outputs.
      measure: also time every layer alone on this machine (``profile(...,
        measure=True)``).

    Returns:
      The model's :class:`Profile` at batch 1, traced abstractly (and timed when
      ``measure``).

    Raises:
      ValueError: for an unknown model name or an option the model does not have.

    Example:
      >>> from sepconv_jax.apps.cost_report import model_profile
      >>> p = model_profile("mobilenet_v1", resolution=128, width=0.25)
      >>> p.by_kind["depthwise"].mult_adds, p.params
      (1419264, 470072)
    """
    model = models.from_name(
        name, width_multiplier=width, full_convolution=full_convolution, num_classes=num_classes
    )
    r = _spec.check_positive_int(resolution, "resolution")
    x = jax.ShapeDtypeStruct((1, r, r, 3), np.float32)
    return profile(model, x, train=False, measure=measure)


def _device(name: str) -> Device:
    """A built-in device, or ``"this"``: this machine's default backend, measured."""
    return Device.measure() if name == "this" else Device.named(name)


def _cli(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    try:
        if args.layer is not None:
            _print_layer(args.layer, console)
        else:
            p = model_profile(
                args.model,
                resolution=args.resolution,
                width=args.width,
                full_convolution=args.full_convolution,
                num_classes=args.num_classes,
                measure=args.measure,
            )
            what = "full-convolution " if args.full_convolution else ""
            console.print(
                f"{args.model} ({what}width {args.width}, {args.resolution}x{args.resolution}): "
                f"{p.mult_adds / 1e6:.1f}M mult-adds, {p.params / 1e6:.2f}M parameters, "
                f"{p.bytes_moved / 1e6:.1f}M bytes moved at least"
            )
            if args.device is None:
                console.print(p)
            else:
                r = roofline(p, _device(args.device))
                console.print(p.kind_table())
                console.print(r)
                if args.measure:
                    console.print(
                        f"measured on {jax.default_backend()}: each layer compiled alone, "
                        f"best of 5 calls"
                    )
    except (ValueError, TypeError) as e:
        print(f"sepconv-jax cost: error: {e}", file=sys.stderr)
        return 2
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the ``cost`` subcommand to an ``argparse`` subparsers object.

    ``sepconv-jax cost --layer k=3,c=256,n=256,hw=28`` compares one layer's standard
    and separable cost; ``sepconv-jax cost --model mobilenet_v1 --resolution 224
    --width 1.0`` prints a model's per-kind and per-layer tables.

    Args:
      subparsers: the object returned by ``ArgumentParser.add_subparsers``.

    Returns:
      The ``cost`` parser; its ``func`` default takes the parsed args and returns
      an exit code.
    """
    parser = subparsers.add_parser(
        "cost",
        help="mult-adds and parameters of a layer or a model",
        description="Mult-adds and parameters: one layer standard vs separable, or a "
        "model's per-kind and per-layer tables.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--layer",
        metavar="SPEC",
        help="k=KERNEL,c=IN,n=OUT[,hw=OUTPUT_SIZE or HxW][,m=DEPTH_MULTIPLIER], "
        "e.g. k=3,c=256,n=256,hw=28",
    )
    what.add_argument("--model", choices=models.NAMES, help="a model-zoo architecture")
    parser.add_argument("--resolution", type=int, default=224, help="input size (default 224)")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1)")
    parser.add_argument(
        "--full-convolution",
        action="store_true",
        help="standard convolutions in place of the separable ones",
    )
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs")
    parser.add_argument(
        "--device",
        choices=[*DEVICES, "this"],
        default=None,
        help="with --model: each layer's roofline time on a built-in device, or on this "
        "machine (measured bandwidth and matmul peak)",
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="with --model: time every layer alone on this machine, beside the roofline",
    )
    parser.set_defaults(func=_cli)
    return parser
