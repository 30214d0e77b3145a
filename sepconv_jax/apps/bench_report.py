"""The benchmark suite's records for people: tables, a summary, Markdown and a plot.

Reads the records of :func:`sepconv_jax.apps.bench_layers.measure_layers` and
:func:`~sepconv_jax.apps.bench_train.measure_model` (plain dicts, as saved in
``bench.json``); measures nothing.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sepconv_jax.kernels import dispatch

__all__ = [
    "TABLE_HEADER",
    "format_row",
    "format_table",
    "markdown_report",
    "markdown_table",
    "plot",
    "summarize",
    "table_header",
]


def _passes(records: Sequence[dict]) -> list[str]:
    """The passes present (``"fwd"``, ``"fwd+bwd"``), in the order they were measured."""
    return list(dict.fromkeys(r["pass"] for r in records))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{1e3 * value:.2f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


#: The columns after the depthwise impls' (see :func:`table_header`).
_TAIL = (
    "flax ms",
    "torch ms",
    "xla/ours",
    "torch/ours",
    "sep ms",
    "fused ms",
    "std ms",
    "std/sep",
    "analytic",
    "real/anal",
)


def _impls(record: dict) -> list[str]:
    """The depthwise impls a record measured, in registry order."""
    return [impl for impl in dispatch.KERNELS if impl in record["seconds"]]


def table_header(impls: Sequence[str]) -> tuple[str, ...]:
    """The table's columns for records that measured the depthwise ``impls``."""
    return ("layer", "B", "dtype", "pass", *(f"{impl} ms" for impl in impls), *_TAIL)


#: The header of the default CPU suite (``xla`` and ``shift``).
TABLE_HEADER = table_header(("xla", "shift"))


def _row_cells(record: dict) -> list[str]:
    seconds, ratios = record["seconds"], record["ratios"]
    return [
        record["layer"],
        str(record["batch"]),
        record["dtype"],
        record["pass"],
        *(_ms(seconds[impl]) for impl in _impls(record)),
        _ms(seconds.get("flax")),
        _ms(seconds.get("torch")),
        _x(ratios["xla/ours"]),
        _x(ratios["torch/ours"]),
        _ms(seconds["separable"]),
        _ms(seconds.get("separable fused")),
        _ms(seconds["standard"]),
        _x(ratios["standard/separable"]),
        _x(record["analytic_savings"]),
        _x(ratios["realized/analytic"]),
    ]


def format_row(record: dict) -> str:
    """One record as a line of :func:`format_table`."""
    header = table_header(_impls(record))
    return "  ".join(
        f"{cell:>{max(len(head), 8)}}" if i else f"{cell:<26}"
        for i, (head, cell) in enumerate(zip(header, _row_cells(record), strict=True))
    )


def _header_line(header: Sequence[str]) -> str:
    return "  ".join(f"{h:>{max(len(h), 8)}}" if i else f"{h:<26}" for i, h in enumerate(header))


def format_table(records: Sequence[dict], impls: Sequence[str] | None = None) -> str:
    """The fixed-width table printed on stdout (``impls``: the depthwise columns when
    there are no records yet)."""
    header = table_header(_impls(records[0]) if records else impls or ("xla", "shift"))
    return "\n".join([_header_line(header), *(format_row(r) for r in records)])


def markdown_table(records: Sequence[dict]) -> str:
    """The same table in Markdown."""
    header = table_header(_impls(records[0]) if records else ("xla", "shift"))
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 4 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(_row_cells(r)) + " |" for r in records]
    return "\n".join(lines)


def _values(records: Sequence[dict], key: str, **match: Any) -> list[tuple[float, dict]]:
    return [
        (r["ratios"][key], r)
        for r in records
        if r["ratios"][key] is not None and all(r[k] == v for k, v in match.items())
    ]


def summarize(records: Sequence[dict], model: Sequence[dict] = ()) -> dict:
    """The headline numbers the targets are stated in, per dtype and pass.

    Returns:
      ``{"<dtype> <pass>": {...}}`` with the minimum and median ``xla/ours`` (and the
      layer of the minimum), the median ``torch/ours`` over distinct depthwise
      shapes, and ``realized/analytic`` for layers with ``C, N >= 128``; plus the
      whole-model speedup when measured.
    """
    summary: dict[str, Any] = {}
    for dtype in sorted({r["dtype"] for r in records}):
        for pass_name in _passes(records):
            sel = [r for r in records if r["dtype"] == dtype and r["pass"] == pass_name]
            if not sel:
                continue
            entry: dict[str, Any] = {}
            xla = _values(sel, "xla/ours")
            if xla:
                worst = min(xla, key=lambda v: v[0])
                entry["xla/ours min"] = worst[0]
                entry["xla/ours min at"] = f"{worst[1]['depthwise']} B{worst[1]['batch']}"
                entry["xla/ours median"] = statistics.median(v for v, _ in xla)
            distinct = {(r["depthwise"], r["batch"]): v for v, r in _values(sel, "torch/ours")}
            if distinct:
                entry["torch/ours median"] = statistics.median(distinct.values())
                entry["torch/ours min"] = min(distinct.values())
            wide = [
                (v, r)
                for v, r in _values(sel, "realized/analytic")
                if r["channels"] >= 128 and r["out_channels"] >= 128
            ]
            if wide:
                entry["realized/analytic min (C,N>=128)"] = min(v for v, _ in wide)
                entry["realized/analytic median (C,N>=128)"] = statistics.median(v for v, _ in wide)
            summary[f"{dtype} {pass_name}"] = entry
    for architecture in dict.fromkeys(m["model"] for m in model):
        by_impl = {
            m["impl"]: m
            for m in model
            if m["model"] == architecture and m.get("images_per_second") is not None
        }
        if "xla" not in by_impl:
            continue
        for impl, m in by_impl.items():
            if impl != "xla":
                summary[f"{architecture} train step {impl}/xla images/s"] = (
                    m["images_per_second"] / by_impl["xla"]["images_per_second"]
                )
    return summary


def plot(records: Sequence[dict], path: Path, dtype: str = "float32") -> None:
    """Ratios by layer (log scale): vs ``xla``, vs PyTorch, and realized vs analytic savings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in records if r["dtype"] == dtype] or list(records)
    layers = list(dict.fromkeys(r["layer"] for r in sel))
    batches = sorted({r["batch"] for r in sel})
    fig, axes = plt.subplots(3, 1, figsize=(max(8.0, 0.55 * len(layers)), 11), sharex=True)
    panels = (
        ("xla/ours", "speedup of ours over impl='xla'", 1.0),
        ("torch/ours", "PyTorch time / our time", 1.0),
        ("realized/analytic", "realized / analytic separable savings", 0.6),
    )
    positions = np.arange(len(layers))
    for ax, (key, title, line) in zip(axes, panels, strict=True):
        plotted = False
        for batch in batches:
            for pass_name, marker in zip(_passes(sel), "os^v", strict=False):
                points = [
                    (layers.index(r["layer"]), r["ratios"][key])
                    for r in sel
                    if r["batch"] == batch
                    and r["pass"] == pass_name
                    and r["ratios"][key] is not None
                ]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, marker=marker, linestyle="", label=f"B{batch} {pass_name}")
                    plotted = True
        ax.axhline(line, color="gray", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{title} ({dtype})")
        if plotted:
            ax.legend(fontsize=7, ncol=4)
        else:
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center")
        ax.grid(True, which="both", alpha=0.3)
    axes[-1].set_xticks(positions)
    axes[-1].set_xticklabels(layers, rotation=70, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_report(result: dict) -> str:
    """A Markdown report: the machine, the summary, the whole-model line and the table."""
    machine = result["machine"]
    lines = ["## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    lines += ["", "## Summary", ""]
    for key, value in result["summary"].items():
        if isinstance(value, dict):
            parts = ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()
            )
            lines.append(f"- {key}: {parts}")
        else:
            lines.append(f"- {key}: {value:.2f}")
    if result["model"]:
        lines += ["", "## Whole model", ""]
        for m in result["model"]:
            what = f"- {m['model']} training step, impl={m['impl']} ({m['resolved_impl']}): "
            if m.get("images_per_second") is None:
                lines.append(what + f"failed: {m.get('error', '')[:300]}")
                continue
            lines.append(
                what + f"{m['images_per_second']:.1f} images/s ({1e3 * m['seconds']:.0f} ms/step, "
                f"batch {m['batch']}, {m['image_size']}x{m['image_size']}, "
                f"{m.get('dtype', 'float32')}, width {m['width_multiplier']}, compiled in "
                f"{m['compile_seconds']:.1f} s)"
            )
    lines += [
        "",
        "## Layers",
        "",
        "Times in ms (best of n).",
        "",
        markdown_table(result["records"]),
    ]
    return "\n".join(lines) + "\n"
