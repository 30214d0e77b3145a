"""The demo's outcome for people: a table, a plot, JSON figures, printed lines.

Renders a :class:`~sepconv_jax.apps.demo_records.Comparison` and the rows of
:func:`~sepconv_jax.apps.demo.layer_rows`; computes nothing of its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

if TYPE_CHECKING:
    from sepconv_jax.apps.demo_records import Comparison, TrainingFault

__all__ = [
    "comparison_table",
    "gap_sentence",
    "plot_comparison",
    "print_comparison",
    "print_layer_table",
    "write_fault",
    "write_outputs",
]


def _fmt_count(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def comparison_table(comparison: Comparison):
    """The comparison as a :class:`rich.table.Table`: one row per network, then ratios."""
    from rich.table import Table

    s = comparison.settings
    table = Table(
        title=f"{comparison.task}: standard vs separable convolutions",
        caption=f"input {s['input']}, {s['n_train']:,} train / {s['n_test']:,} test examples\n"
        f"{s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}, batch {s['batch_size']}, "
        f"seed {s['seed']}, {s['devices']} {s['backend']} "
        f"device{'s' if s['devices'] != 1 else ''}",
    )
    for col in ("network", "params", "mult-adds", "train step", "test accuracy"):
        table.add_column(col, justify="left" if col == "network" else "right")
    for run in (comparison.standard, comparison.separable):
        table.add_row(
            run.name,
            f"{run.params:,}",
            _fmt_count(run.mult_adds),
            f"{run.step_ms:.1f} ms",
            f"{100 * run.test_accuracy:.1f}%",
        )
    r = comparison.ratios()
    table.add_row(
        "standard / separable",
        f"{r['params']:.2f}x",
        f"{r['mult_adds']:.2f}x",
        f"{r['step_time']:.2f}x",
        f"{r['accuracy_points']:+.1f} pt",
        style="bold",
    )
    if "predicted_step_time" in r:
        std, sep = comparison.standard, comparison.separable
        table.caption = (
            f"{table.caption}\nroofline step (convs and matmuls, fwd+bwd): "
            f"{std.predicted_step_ms:.2f} ms standard, {sep.predicted_step_ms:.2f} ms "
            f"separable\n{gap_sentence(r)}"
        )
    return table


def gap_sentence(ratios: dict) -> str:
    """One line: how much of the mult-add vs step-time gap the roofline accounts for."""
    explained = ratios["gap_explained"]
    share = "no gap" if explained != explained else f"{100 * explained:.0f}% of the gap"
    return (
        f"mult-adds {ratios['mult_adds']:.2f}x, step time {ratios['step_time']:.2f}x, "
        f"roofline (fwd+bwd convs and matmuls) {ratios['predicted_step_time']:.2f}x: "
        f"the roofline accounts for {share} (log scale)"
    )


def plot_comparison(comparison: Comparison):
    """Test accuracy against mult-adds (left) and per epoch (right), as a Figure.

    Uses matplotlib's object API only (no pyplot state), so it works headless and
    in notebooks alike.

    Returns:
      A :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    colors = {"standard": "tab:blue", "separable": "tab:orange"}
    for run in (comparison.standard, comparison.separable):
        left.scatter(run.mult_adds, 100 * run.test_accuracy, s=80, color=colors[run.name])
        left.annotate(
            f"{run.name}\n{run.params:,} params",
            (run.mult_adds, 100 * run.test_accuracy),
            textcoords="offset points",
            xytext=(10, -4),
        )
        epochs = np.arange(1, len(run.epoch_accuracy) + 1)
        right.plot(
            epochs,
            100 * np.asarray(run.epoch_accuracy),
            "o-",
            color=colors[run.name],
            label=run.name,
        )
    left.set_xscale("log")
    lo = min(comparison.standard.mult_adds, comparison.separable.mult_adds)
    hi = max(comparison.standard.mult_adds, comparison.separable.mult_adds)
    left.set_xlim(lo / 2, hi * 3)
    accuracies = [100 * r.test_accuracy for r in (comparison.standard, comparison.separable)]
    left.set_ylim(min(accuracies) - 3, min(100.5, max(accuracies) + 1.5))
    left.set_xlabel("mult-adds per example (log scale)")
    left.set_ylabel("test accuracy (%)")
    left.set_title(f"{comparison.task}: accuracy vs compute")
    r = comparison.ratios()
    if "predicted_step_time" in r:
        left.text(
            0.02,
            0.02,
            gap_sentence(r).replace(": the", ":\nthe").replace(", roofline", ",\nroofline"),
            transform=left.transAxes,
            fontsize=7,
            va="bottom",
        )
    left.grid(True, alpha=0.3)
    right.set_xlabel("epoch")
    right.set_ylabel("test accuracy (%)")
    right.set_title("test accuracy per epoch")
    right.grid(True, alpha=0.3)
    right.legend()
    return fig


def write_outputs(comparison: Comparison, out: str | Path) -> dict[str, Path]:
    """Writes ``{task}_results.json`` and ``{task}_accuracy_vs_mult_adds.png`` into ``out``.

    The PNG needs matplotlib; without it only the JSON is written.

    Returns:
      The written paths by kind: ``{"json": ...}``, plus ``"png"`` when written.
    """
    task = comparison.task
    return write_record_and_figure(
        out, f"{task}_results.json", comparison.to_dict(),
        f"{task}_accuracy_vs_mult_adds.png", lambda: plot_comparison(comparison),
    )  # fmt: skip


def write_record_and_figure(
    out: str | Path, json_name: str, record: Any, png_name: str, plot: Callable[[], Any]
) -> dict[str, Path]:
    """Writes ``record`` as ``json_name`` and the figure ``plot()`` draws as ``png_name``
    into ``out`` (made if need be); without matplotlib (``plot`` raises ``ImportError``)
    only the JSON. Returns the paths written: ``{"json": ...}``, and ``"png"``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / json_name}
    paths["json"].write_text(json.dumps(record, indent=2) + "\n")
    try:
        figure = plot()
    except ImportError:
        return paths
    paths["png"] = out / png_name
    figure.savefig(paths["png"], dpi=120)
    return paths


def write_fault(fault: TrainingFault, out: str | Path) -> Path:
    """Writes ``{task}_results.json`` with the settings and the ``fault`` of a stopped run.

    Returns:
      The written path.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{fault.task}_results.json"
    path.write_text(json.dumps(fault.to_dict(), indent=2) + "\n")
    return path


def print_comparison(comparison: Comparison, paths: dict[str, Path], console) -> None:
    """Prints the table, the blocks' ratios, compile times and where the files went."""
    console.print(comparison_table(comparison))
    console.print("mult-adds are per example; train step is the median time of one step.")
    r = comparison.ratios()
    console.print(
        f"In the convolution blocks alone (the layers that differ): "
        f"{r['block_mult_adds']:.2f}x fewer mult-adds, {r['block_params']:.2f}x fewer parameters."
    )
    console.print(
        f"Compile: {comparison.standard.compile_s:.1f} s standard, "
        f"{comparison.separable.compile_s:.1f} s separable; "
        f"total {comparison.wall_s:.1f} s."
    )
    plot = paths.get("png", "not written (`pip install matplotlib` for the plot)")
    console.print(f"Plot: {plot}\nFigures: {paths['json']}", soft_wrap=True)


def _roofline_cells(r: dict) -> tuple[str, ...]:
    from sepconv_jax.cost import gap_explained

    if "standard_predicted_ms" not in r:
        return ()
    macs = r["standard_mult_adds"] / r["separable_mult_adds"]
    measured = r["standard_ms"] / r["separable_ms"]
    predicted = r["standard_predicted_ms"] / r["separable_predicted_ms"]
    explained = gap_explained(macs, measured, predicted)
    return f"{predicted:.2f}x", "-" if explained != explained else f"{100 * explained:.0f}%"


def print_layer_table(rows: list[dict], console=None) -> None:
    """Prints :func:`~sepconv_jax.apps.demo.layer_rows` as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"3x3 standard vs depthwise separable conv on {jax.default_backend()}")
    for col in (
        "layer",
        "std MACs",
        "sep MACs",
        "MAC ratio",
        "k²N/(k²+N)",
        "std params",
        "sep params",
        "std ms",
        "sep ms",
        "time ratio",
        *(
            ("roofline ratio", "gap explained")
            if rows and "standard_predicted_ms" in rows[0]
            else ()
        ),
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["layer"],
            f"{r['standard_mult_adds'] / 1e6:.1f}M",
            f"{r['separable_mult_adds'] / 1e6:.1f}M",
            f"{r['standard_mult_adds'] / r['separable_mult_adds']:.2f}x",
            f"{r['savings_factor']:.2f}x",
            f"{r['standard_params']:,}",
            f"{r['separable_params']:,}",
            f"{r['standard_ms']:.2f}",
            f"{r['separable_ms']:.2f}",
            f"{r['standard_ms'] / r['separable_ms']:.2f}x",
            *_roofline_cells(r),
        )
    if console is None:
        console = Console()
        console = Console(width=max(console.width, 150))
    console.print(table)
