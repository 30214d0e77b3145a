"""The streaming demo's outcome for people: a table, a plot, JSON figures.

Renders a :class:`~sepconv_jax.apps.stream_records.StreamRun`; computes nothing of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sepconv_jax.apps.demo_report import write_record_and_figure

if TYPE_CHECKING:
    from sepconv_jax.apps.stream_records import StreamRun

__all__ = ["chunk_table", "plot_detections", "print_run", "write_outputs"]

#: Seconds of the test waveform drawn in the plot.
PLOT_SECONDS = 4.0


def chunk_table(result: StreamRun) -> Any:
    """The streamed runs as a :class:`rich.table.Table`, one row per chunk size."""
    from rich.table import Table

    rate = result.settings["sample_rate"]
    table = Table(
        title="streaming a causal separable detector: offline vs chunk by chunk",
        caption=f"{result.settings['test_seconds']:g} s of {rate // 1000} kHz audio; "
        f"{result.settings['backend']} ({result.settings['device']}); logits up to "
        f"{result.settings['max_abs_logit']:.1f} in magnitude; latency is the wall time of one "
        f"chunk's call; real-time factor = median latency / chunk duration",
    )
    for column in (
        "chunk",
        "samples streamed",
        "max |offline - streamed|",
        "median latency",
        "p99 latency",
        "real-time factor",
    ):
        table.add_column(column, justify="right")
    for run in result.chunks:
        table.add_row(
            f"{run.chunk} ({1e3 * run.chunk / rate:.2g} ms)",
            f"{run.frames:,}",
            f"{run.max_abs_diff:.1e}",
            f"{run.median_us:,.0f} µs",
            f"{run.p99_us:,.0f} µs",
            f"{run.real_time_factor:.3f}",
        )
    return table


def plot_detections(result: StreamRun) -> Any:
    """The test waveform with its events (top) and the streamed detections (bottom).

    Uses matplotlib's object API only, so it works headless and in notebooks.

    Returns:
      A :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    audio = result.audio
    rate = audio.sample_rate
    n = min(len(result.probabilities), int(PLOT_SECONDS * rate))
    time = np.arange(n) / rate
    fig = Figure(figsize=(11, 5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(time, audio.waveform[:n], color="0.45", linewidth=0.4)
    colors = {"tone": "tab:blue", "chirp": "tab:orange"}
    for event in audio.events:
        if event.onset >= n:
            break
        span = (event.onset / rate, min(event.offset, n) / rate)
        for axis in (top, bottom):
            axis.axvspan(*span, color=colors[event.kind], alpha=0.15, linewidth=0)
        top.text(span[0], 1.02, event.kind, transform=top.get_xaxis_transform(), fontsize=7)
    top.set_ylabel("waveform")
    top.set_title("test audio: tones and chirps in noise (shaded: true events)", pad=16)
    probability = result.probabilities[:n]
    detected = probability >= result.detection["threshold"]
    bottom.plot(time, probability, color="tab:green", linewidth=0.8, label="P(event), streamed")
    bottom.fill_between(time, 0, 1, where=detected, color="tab:green", alpha=0.25, label="detected")
    bottom.axhline(result.detection["threshold"], color="0.3", linestyle="--", linewidth=0.8)
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("event probability")
    chunk = result.chunks[-1].chunk
    bottom.set_title(f"detections, streamed {chunk} samples ({1e3 * chunk / rate:g} ms) at a time")
    bottom.legend(loc="upper right", fontsize=8)
    return fig


def write_outputs(result: StreamRun, out: str | Path) -> dict[str, Path]:
    """Writes ``stream_results.json`` and ``stream_detections.png`` into ``out``.

    The PNG needs matplotlib; without it only the JSON is written.

    Returns:
      The written paths by kind: ``{"json": ...}``, plus ``"png"`` when written.
    """
    return write_record_and_figure(
        out, "stream_results.json", result.to_dict(), "stream_detections.png",
        lambda: plot_detections(result),
    )  # fmt: skip


def print_run(result: StreamRun, paths: dict[str, Path], console: Any) -> None:
    """Prints the training, the detection quality, the table and where the files went."""
    model, training, d = result.settings["model"], result.training, result.detection
    console.print(
        f"Trained a causal separable detector ({model['params']:,} parameters, receptive "
        f"field {model['receptive_field']} samples = "
        f"{1e3 * model['receptive_field'] / result.settings['sample_rate']:.0f} ms) for "
        f"{training['steps']} steps in {training['seconds']:.1f} s; loss "
        f"{training['losses'][0]:.3f} -> {training['losses'][-1]:.3f}."
    )
    console.print(
        f"Streamed detections on the test audio: {100 * d['sample_accuracy']:.1f}% of samples "
        f"right, {100 * d['event_recall']:.0f}% of {d['events']} events found, "
        f"{100 * d['false_alarm_rate']:.1f}% false alarms in noise, median onset delay "
        f"{d['median_onset_delay_ms']:.1f} ms."
    )
    console.print(chunk_table(result))
    plot = paths.get("png", "not written (`pip install matplotlib` for the plot)")
    console.print(
        f"Total {result.wall_s:.1f} s.\nPlot: {plot}\nFigures: {paths['json']}", soft_wrap=True
    )
