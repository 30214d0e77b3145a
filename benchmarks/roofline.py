"""A model's layers on this machine's roofline: predicted vs measured time per kind.

Measures this machine's roofline with :meth:`sepconv_jax.cost.Device.measure` (an
in-place streaming ``x + 1`` for the bandwidth, a square matmul for the peak), then
profiles a model-zoo model with ``profile(..., measure=True)`` (every convolution
and matrix multiply compiled alone and timed, best of ``--repeats`` calls after a
warm-up) and sets each layer's measured time beside its roofline prediction
``max(2 * mult_adds / peak, bytes / bandwidth)``. Reports the time per kind
(predicted and measured, with shares, next to the share of mult-adds), Pearson's
correlation between predicted and measured per-layer times, and the whole model's
jitted forward time for scale. Writes ``roofline.json``, ``roofline.md`` and
``roofline.png`` to ``--out``.

Best-of-n times on a shared machine are the least disturbed calls, not typical
ones; the correlation and the ratios are what to read, not the bare times.

Usage::

    python benchmarks/roofline.py --out benchmarks/results/roofline
    python benchmarks/roofline.py --quick   # a small input, seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from sepconv_jax import models
from sepconv_jax.cost import Device, profile, roofline
from sepconv_jax.cost._measure import time_compiled


def _machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "load_average": list(load) if load else None,
    }


def _pct(part: float, total: float) -> str:
    return f"{100 * part / total:.1f}%"


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    machine = _machine()
    device = Device.measure(repeats=args.repeats)
    print(
        f"{device.name}: {device.peak_flops / 1e9:.1f} GFLOP/s, {device.bandwidth / 1e9:.1f} GB/s"
    )
    model = models.from_name(args.model, width_multiplier=args.width)
    shape = (args.batch, args.resolution, args.resolution, 3)
    x = jax.ShapeDtypeStruct(shape, np.float32)
    p = profile(model, x, train=False, measure=True, measure_repeats=args.repeats)
    here = roofline(p, device)
    h100 = roofline(p, "h100-tf32")

    # The whole model, jitted as one program, for scale.
    variables = model.init(jax.random.key(0), np.zeros(shape, np.float32), train=False)
    image = jax.random.normal(jax.random.key(1), shape, np.float32)
    whole_s = time_compiled(
        lambda v, im: model.apply(v, im, train=False), [variables, image], args.repeats
    )

    macs, pred, meas = here.mult_adds_by_kind(), here.predicted_by_kind(), here.measured_by_kind()
    kinds = []
    for kind in pred:
        kinds.append(
            {
                "kind": kind,
                "layers": sum(r.kind == kind for r in here.rows),
                "memory_bound": sum(r.kind == kind and r.bound == "memory" for r in here.rows),
                "mult_adds": macs[kind],
                "mult_adds_share": macs[kind] / here.mult_adds,
                "predicted_s": pred[kind],
                "predicted_share": pred[kind] / here.predicted_s,
                "measured_s": meas[kind],
                "measured_share": meas[kind] / here.measured_s,
                "h100_tf32_predicted_s": h100.predicted_by_kind()[kind],
            }
        )
    result = {
        "settings": {
            "model": args.model,
            "width": args.width,
            "resolution": args.resolution,
            "batch": args.batch,
            "repeats": args.repeats,
            "timing": "each layer compiled alone, best of `repeats` calls after a warm-up",
        },
        "machine": machine,
        "device": {
            "name": device.name,
            "peak_flops": device.peak_flops,
            "bandwidth": device.bandwidth,
            "ridge_intensity": device.ridge_intensity,
            "source": device.source,
        },
        "totals": {
            "mult_adds": here.mult_adds,
            "bytes_moved": p.bytes_moved,
            "predicted_s": here.predicted_s,
            "measured_layers_s": here.measured_s,
            "measured_whole_model_s": whole_s,
            "h100_tf32_predicted_s": h100.predicted_s,
            "h100_memory_bound": sum(r.bound == "memory" for r in h100.rows),
        },
        "correlation": here.correlation(),
        "correlation_log": here.correlation(log=True),
        "kinds": kinds,
        "layers": here.to_dict()["rows"],
        "wall_s": time.perf_counter() - start,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "roofline.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "roofline.md").write_text(markdown(result))
    here.plot(
        title=f"{args.model} {args.resolution}x{args.resolution}, batch {args.batch}: "
        f"layers on this machine's roofline"
    ).savefig(out / "roofline.png", dpi=110)
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    s, m, d, t = r["settings"], r["machine"], r["device"], r["totals"]
    lines = [
        f"# {s['model']} (width {s['width']}, {s['resolution']}x{s['resolution']}, "
        f"batch {s['batch']}) on this machine's roofline",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; jax {m['jax']} "
        f"({m['backend']}); {m['date']}; load average at start {m['load_average']}.",
        "",
        f"Roofline (measured with JAX, best of {s['repeats']}): peak "
        f"{d['peak_flops'] / 1e9:.1f} GFLOP/s ({d['peak_flops'] / 2e9:.1f} G mult-adds/s), "
        f"bandwidth {d['bandwidth'] / 1e9:.1f} GB/s, ridge {d['ridge_intensity']:.1f} "
        f"mult-adds/byte. {d['source']}.",
        "",
        f"Layer times: {s['timing']}. The machine is shared and noisy: best-of-n is the "
        f"least disturbed call.",
        "",
        "| kind | layers | memory-bound | mult-adds share | predicted ms | predicted share "
        "| measured ms | measured share | measured / predicted |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in r["kinds"]:
        lines.append(
            f"| {k['kind']} | {k['layers']} | {k['memory_bound']} | "
            f"{100 * k['mult_adds_share']:.1f}% | {1e3 * k['predicted_s']:.3f} | "
            f"{100 * k['predicted_share']:.1f}% | {1e3 * k['measured_s']:.3f} | "
            f"{100 * k['measured_share']:.1f}% | {k['measured_s'] / k['predicted_s']:.2f}x |"
        )
    lines += [
        f"| total | {len(r['layers'])} | | | {1e3 * t['predicted_s']:.3f} | | "
        f"{1e3 * t['measured_layers_s']:.3f} | | "
        f"{t['measured_layers_s'] / t['predicted_s']:.2f}x |",
        "",
        f"Pearson correlation between predicted and measured per-layer times: "
        f"**r = {r['correlation']:.3f}** (of log times: {r['correlation_log']:.3f}), over "
        f"{len(r['layers'])} layers.",
        "",
        f"The whole model jitted as one program: {1e3 * t['measured_whole_model_s']:.3f} ms "
        f"(the layers alone sum to {1e3 * t['measured_layers_s']:.3f} ms; the whole "
        f"program also runs batch norm and activations, and XLA fuses across layers).",
        "",
        f"On an H100 SXM (TF32 datasheet figures, float32 at JAX's default precision) the "
        f"roofline predicts {1e6 * t['h100_tf32_predicted_s']:.1f} µs for the same layers, "
        f"{t['h100_memory_bound']} of {len(r['layers'])} of them memory-bound at batch "
        f"{s['batch']}.",
        "",
        "| module | kind | mult-adds | bytes | MA/byte | bound | predicted µs | measured µs |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for row in r["layers"]:
        lines.append(
            f"| {row['path']} | {row['kind']} | {row['mult_adds']:,} | {row['bytes_moved']:,} | "
            f"{row['intensity']:.1f} | {row['bound']} | {1e6 * row['predicted_s']:.1f} | "
            f"{1e6 * row['measured_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=models.NAMES, default="mobilenet_v2")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/roofline")
    parser.add_argument("--quick", action="store_true", help="a 64x64 input, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.resolution, args.repeats = 64, 2
    run(args)


if __name__ == "__main__":
    main()
