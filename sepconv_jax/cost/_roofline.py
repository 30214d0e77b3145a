"""The roofline: a layer's time predicted from its mult-adds, its bytes and a device.

A device does at most ``peak_flops`` floating-point operations a second (two per
mult-add) and moves at most ``bandwidth`` bytes a second between memory and its
cores, so a layer takes at least ``max(2 * mult_adds / peak_flops, bytes_moved /
bandwidth)`` (Williams, Waterman and Patterson, "Roofline: an insightful visual
performance model for multicore architectures", CACM 2009). A layer whose
arithmetic intensity (mult-adds per byte) is below the device's ridge point
``peak_flops / (2 * bandwidth)`` is memory-bound: more mult-adds would not slow it
down, fewer do not speed it up. Depthwise layers (about ``k^2`` mult-adds per byte
moved) sit far below the ridge of every current accelerator, pointwise and standard
convolutions (about ``C`` or more) near or above it.

:class:`Device` holds the two figures (built-in specs in :data:`DEVICES`, or
:meth:`Device.measure` for this machine), :func:`roofline` predicts every layer of
a :class:`~sepconv_jax.cost.Profile` (or a :class:`~sepconv_jax.cost.Count`) and,
when the profile was measured, puts the measured times beside the prediction.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from sepconv_jax.cost import _measure
from sepconv_jax.cost._count import KINDS, Count, intensity
from sepconv_jax.cost._profile import Profile

Bound = Literal["compute", "memory"]


def _check_rate(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Device:
    """A device's two roofline figures.

    Attributes:
      peak_flops: floating-point operations per second at most (a mult-add is two),
        for the dtype and precision the model runs at.
      bandwidth: bytes per second between main memory (HBM, DRAM) and the cores.
      name: what to call it in tables.
      source: where the figures come from (a datasheet, or a measurement).

    Raises:
      ValueError: when ``peak_flops`` or ``bandwidth`` is not positive and finite.
      TypeError: when either is not a number.

    Example:
      >>> from sepconv_jax.cost import Device
      >>> d = Device(peak_flops=2e12, bandwidth=1e11, name="toy")
      >>> d.ridge_intensity  # mult-adds per byte where the two roofs meet
      10.0
      >>> d.predict(mult_adds=10**9, bytes_moved=10**6)  # compute-bound: 2e9 / 2e12
      0.001
    """

    peak_flops: float
    bandwidth: float
    name: str = "device"
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "peak_flops", _check_rate(self.peak_flops, "peak_flops"))
        object.__setattr__(self, "bandwidth", _check_rate(self.bandwidth, "bandwidth"))
        if not isinstance(self.name, str):
            raise TypeError(f"`name` must be a str, got {type(self.name).__name__}")

    @property
    def ridge_intensity(self) -> float:
        """Mult-adds per byte at which a layer turns from memory- to compute-bound."""
        return self.peak_flops / (2 * self.bandwidth)

    def compute_time(self, mult_adds: float) -> float:
        """Seconds for ``mult_adds`` at peak: ``2 * mult_adds / peak_flops``."""
        return 2 * mult_adds / self.peak_flops

    def memory_time(self, bytes_moved: float) -> float:
        """Seconds to move ``bytes_moved`` at full bandwidth."""
        return bytes_moved / self.bandwidth

    def predict(self, mult_adds: float, bytes_moved: float) -> float:
        """The roofline time: ``max(compute_time, memory_time)``, in seconds."""
        return max(self.compute_time(mult_adds), self.memory_time(bytes_moved))

    def bound(self, mult_adds: float, bytes_moved: float) -> Bound:
        """``"compute"`` or ``"memory"``: which roof limits a layer."""
        return (
            "compute" if self.compute_time(mult_adds) >= self.memory_time(bytes_moved) else "memory"
        )

    @staticmethod
    def named(name: str) -> Device:
        """A built-in device of :data:`DEVICES` by name (case and ``_`` vs ``-`` ignored).

        Raises:
          ValueError: for a name that is not in :data:`DEVICES`.
        """
        if not isinstance(name, str):
            raise TypeError(f"`device` must be a Device or a str, got {type(name).__name__}")
        key = name.strip().lower().replace("_", "-")
        if key not in DEVICES:
            raise ValueError(
                f"`device` {name!r} is not a built-in device; choose one of "
                f"{', '.join(DEVICES)}, or build a Device(peak_flops, bandwidth) or use "
                f"Device.measure()"
            )
        return DEVICES[key]

    @classmethod
    def measure(
        cls,
        *,
        copy_bytes: int = 1 << 27,
        matmul_size: int = 1024,
        repeats: int = 5,
        dtype: Any = jnp.float32,
        name: str | None = None,
    ) -> Device:
        """Measures this machine's default JAX backend: bandwidth and matmul peak.

        Bandwidth: a jitted ``x + 1`` over ``copy_bytes`` of ``dtype``, in place (a
        streaming copy: every element read once and written once, ``2 *
        copy_bytes`` moved), best of ``repeats``. Peak: a jitted ``(n, n) @ (n, n)`` matmul with
        ``n = matmul_size`` (``2 n^3`` flops), best of ``repeats``. Both are what
        JAX attains, a practical roof rather than a datasheet's; choose
        ``copy_bytes`` well above the last-level cache (the default, 128 MiB, is).

        Args:
          copy_bytes: size of the streamed array in bytes.
          matmul_size: side of the square matmul.
          repeats: timed calls of each (the best is kept), after a warm-up.
          dtype: the dtype of both measurements (the model's).
          name: the device's name; default the backend and device kind.

        Returns:
          A :class:`Device` whose ``source`` says how it was measured.

        Raises:
          ValueError: when a size or ``repeats`` is not a positive int.
        """
        repeats = _measure.check_repeats(repeats)
        copy_bytes = _measure.check_repeats(copy_bytes, "copy_bytes")
        n = _measure.check_repeats(matmul_size, "matmul_size")
        dtype = np.dtype(dtype)
        elements = max(1, copy_bytes // dtype.itemsize)
        # The input is donated and each call's result fed to the next, so that the
        # output reuses the input's memory: a fresh allocation per call would time
        # the operating system's page faults rather than the memory.
        state = [jnp.ones((elements,), dtype)]
        step = jax.jit(lambda v: v + 1, donate_argnums=0).lower(state[0]).compile()

        def copy() -> None:
            state[0] = jax.block_until_ready(step(state[0]))

        copy_s = _measure.best_time(copy, repeats)
        key_a, key_b = jax.random.split(jax.random.key(0))
        a = jax.random.normal(key_a, (n, n), dtype)
        b = jax.random.normal(key_b, (n, n), dtype)
        matmul_s = _measure.time_compiled(jnp.matmul, [a, b], repeats)
        if name is None:
            device = jax.devices()[0]
            name = f"{device.platform} ({device.device_kind}), measured"
        return cls(
            peak_flops=2 * n**3 / matmul_s,
            bandwidth=2 * elements * dtype.itemsize / copy_s,
            name=name,
            source=f"measured with JAX: x + 1 over {elements * dtype.itemsize:,} bytes and a "
            f"{n}x{n} matmul, {dtype.name}, best of {repeats}",
        )


_NVIDIA_H100 = (
    "NVIDIA H100 Tensor Core GPU datasheet, SXM5 column (www.nvidia.com/en-us/data-center/h100/)"
)
_NVIDIA_A100 = "NVIDIA A100 Tensor Core GPU datasheet, 80GB SXM column (www.nvidia.com/en-us/data-center/a100/)"

#: Built-in devices, from their makers' published datasheets. Peaks are the dense
#: figures (NVIDIA's headline tensor-core figures are twice these, "with
#: sparsity"); ``"h100"`` and ``"a100"`` are their BF16/FP16 tensor-core peaks,
#: ``"-tf32"`` the TF32 ones, which float32 matmuls get at JAX's default precision
#: on these GPUs. TPUs list bfloat16 peaks (float32 matmuls run as bfloat16 passes
#: at JAX's default precision).
#:
#: * ``"h100"``: H100 SXM5, 989.4 TFLOPS dense BF16, 3.35 TB/s HBM3. ``"h100-tf32"``:
#:   494.7 TFLOPS dense TF32. Source: NVIDIA H100 Tensor Core GPU datasheet.
#: * ``"a100"``: A100 80GB SXM, 312 TFLOPS BF16, 2,039 GB/s HBM2e. ``"a100-tf32"``:
#:   156 TFLOPS TF32. Source: NVIDIA A100 Tensor Core GPU datasheet.
#: * ``"tpu-v5e"``: one TPU v5e chip, 197 TFLOPS bfloat16, 819 GB/s HBM2. Source:
#:   Google Cloud TPU documentation, "TPU v5e" (cloud.google.com/tpu/docs/v5e).
#: * ``"tpu-v4"``: one TPU v4 chip, 275 TFLOPS bfloat16, 1,200 GB/s HBM2. Source:
#:   Google Cloud TPU documentation, "TPU v4" (cloud.google.com/tpu/docs/v4).
DEVICES: Mapping[str, Device] = {
    "h100": Device(989.4e12, 3.35e12, "H100 SXM (BF16)", _NVIDIA_H100),
    "h100-tf32": Device(494.7e12, 3.35e12, "H100 SXM (TF32)", _NVIDIA_H100),
    "a100": Device(312e12, 2.039e12, "A100 80GB SXM (BF16)", _NVIDIA_A100),
    "a100-tf32": Device(156e12, 2.039e12, "A100 80GB SXM (TF32)", _NVIDIA_A100),
    "tpu-v5e": Device(
        197e12,
        819e9,
        "TPU v5e",
        "Google Cloud TPU v5e documentation (cloud.google.com/tpu/docs/v5e)",
    ),
    "tpu-v4": Device(
        275e12, 1200e9, "TPU v4", "Google Cloud TPU v4 documentation (cloud.google.com/tpu/docs/v4)"
    ),
}


@dataclasses.dataclass(frozen=True)
class RooflineRow:
    """One layer on the roofline.

    Attributes:
      path: the layer's module path (a profile's) or JAX name stack (a count's).
      kind: one of :data:`~sepconv_jax.cost.KINDS`.
      mult_adds: mult-adds (forward, or forward plus backward when ``training``).
      bytes_moved: least bytes moved, in the same convention.
      predicted_s: the roofline time on the device.
      bound: ``"compute"`` or ``"memory"``.
      measured_s: the profile's measured time (forward only), or ``None``.
    """

    path: str
    kind: str
    mult_adds: int
    bytes_moved: int
    predicted_s: float
    bound: Bound
    measured_s: float | None = None

    @property
    def intensity(self) -> float:
        """Mult-adds per byte."""
        return intensity(self.mult_adds, self.bytes_moved)


def _sum_by_kind(rows: Any, field: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for row in rows:
        value = getattr(row, field)
        if value is not None:
            totals[row.kind] = totals.get(row.kind, 0) + value
    return {k: totals[k] for k in KINDS if k in totals}


def pearson(a: Any, b: Any) -> float:
    """Pearson's correlation coefficient of two equally long sequences (``nan`` when
    either is constant or shorter than 2)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"`a` and `b` must be 1-D of one length, got {a.shape} and {b.shape}")
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def gap_explained(mult_add_ratio: float, time_ratio: float, predicted_ratio: float) -> float:
    """How much of the gap between a mult-add ratio and a time ratio a prediction explains.

    Comparing two models (or layers) A and B, the mult-adds say A should take
    ``mult_add_ratio`` times B's time; it measures ``time_ratio`` times; the roofline
    predicts ``predicted_ratio``. On a log scale the gap is
    ``log(mult_add_ratio / time_ratio)`` and the prediction covers
    ``log(mult_add_ratio / predicted_ratio)`` of it; the result is their quotient:
    1 when the roofline predicts the measured ratio, 0 when it predicts no more
    than the mult-adds do, above 1 when it overshoots. ``nan`` without a gap.

    Example:
      >>> from sepconv_jax.cost import gap_explained
      >>> round(gap_explained(8.0, 2.0, 4.0), 3)  # 8x fewer mult-adds, 2x faster, 4x predicted
      0.5
    """
    for value, name in (
        (mult_add_ratio, "mult_add_ratio"),
        (time_ratio, "time_ratio"),
        (predicted_ratio, "predicted_ratio"),
    ):
        _check_rate(value, name)
    gap = math.log(mult_add_ratio / time_ratio)
    if gap == 0:
        return math.nan
    return math.log(mult_add_ratio / predicted_ratio) / gap


def _fmt_us(seconds: float | None) -> str:
    return "" if seconds is None else f"{1e6 * seconds:,.4g}"


def _pct(part: float | None, total: float | None) -> str:
    return "" if part is None or not total else f"{100 * part / total:.1f}%"


_KIND_COLORS = {
    "standard": "tab:blue",
    "depthwise": "tab:orange",
    "pointwise": "tab:green",
    "grouped": "tab:purple",
    "dense": "tab:red",
}


@dataclasses.dataclass(frozen=True)
class Roofline:
    """Every layer's roofline prediction on one device, beside its measured time.

    Attributes:
      device: the :class:`Device`.
      rows: one :class:`RooflineRow` per counted operation, in trace order.
      training: whether the figures are forward plus backward.

    ``print(roofline)`` shows a per-kind and a per-layer table; :meth:`plot` draws
    time against mult-adds and the roofline; :meth:`to_dict` gives plain data.
    """

    device: Device
    rows: tuple[RooflineRow, ...]
    training: bool = False

    @property
    def measured(self) -> bool:
        """Whether every row has a measured time."""
        return bool(self.rows) and all(r.measured_s is not None for r in self.rows)

    @property
    def mult_adds(self) -> int:
        return sum(r.mult_adds for r in self.rows)

    @property
    def predicted_s(self) -> float:
        """The sum of the layers' predicted times."""
        return sum(r.predicted_s for r in self.rows)

    @property
    def measured_s(self) -> float | None:
        """The sum of the layers' measured times, ``None`` unless all were measured."""
        return sum(r.measured_s or 0.0 for r in self.rows) if self.measured else None

    def predicted_by_kind(self) -> dict[str, float]:
        """Predicted seconds per kind present."""
        return _sum_by_kind(self.rows, "predicted_s")

    def measured_by_kind(self) -> dict[str, float]:
        """Measured seconds per kind present (empty unless measured)."""
        return _sum_by_kind(self.rows, "measured_s") if self.measured else {}

    def mult_adds_by_kind(self) -> dict[str, float]:
        return _sum_by_kind(self.rows, "mult_adds")

    def correlation(self, log: bool = False) -> float:
        """Pearson's correlation between predicted and measured per-layer times.

        Args:
          log: correlate the logarithms of the times instead (weighs small layers
            as much as large ones).

        Raises:
          ValueError: when the profile was not measured.
        """
        if not self.measured:
            raise ValueError(
                "the roofline has no measured times; profile the model with "
                "`profile(..., measure=True)` first"
            )
        predicted = np.array([r.predicted_s for r in self.rows], np.float64)
        measured = np.array([r.measured_s for r in self.rows], np.float64)
        if log:
            return pearson(np.log(predicted), np.log(measured))
        return pearson(predicted, measured)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict: device, totals, per-kind and per-layer figures."""
        out: dict[str, Any] = {
            "device": dataclasses.asdict(self.device),
            "training": self.training,
            "mult_adds": self.mult_adds,
            "predicted_s": self.predicted_s,
            "measured_s": self.measured_s,
            "mult_adds_by_kind": self.mult_adds_by_kind(),
            "predicted_by_kind": self.predicted_by_kind(),
            "measured_by_kind": self.measured_by_kind(),
            "rows": [{**dataclasses.asdict(r), "intensity": r.intensity} for r in self.rows],
        }
        if self.measured:
            out["correlation"] = self.correlation()
            out["correlation_log"] = self.correlation(log=True)
        return out

    def kind_table(self, title: str | None = None):
        """Per kind: share of mult-adds, predicted time and share, measured time and share
        (the MobileNet paper's Table 2, in time), as a :class:`rich.table.Table`."""
        from rich.table import Table

        d = self.device
        table = Table(
            title=title
            or f"Roofline on {d.name}: {d.peak_flops / 1e12:.3g} TFLOP/s, "
            f"{d.bandwidth / 1e9:,.0f} GB/s, ridge {d.ridge_intensity:.1f} mult-adds/byte",
        )
        cols = ["kind", "mult-adds share", "memory-bound", "predicted µs", "predicted share"]
        if self.measured:
            cols += ["measured µs", "measured share"]
        for col in cols:
            table.add_column(col, justify="left" if col == "kind" else "right")
        macs, pred, meas = (
            self.mult_adds_by_kind(),
            self.predicted_by_kind(),
            self.measured_by_kind(),
        )
        for kind in pred:
            rows = [r for r in self.rows if r.kind == kind]
            memory = sum(r.bound == "memory" for r in rows)
            cells = [
                kind,
                _pct(macs[kind], self.mult_adds),
                f"{memory}/{len(rows)}",
                _fmt_us(pred[kind]),
                _pct(pred[kind], self.predicted_s),
            ]
            if self.measured:
                cells += [_fmt_us(meas[kind]), _pct(meas[kind], self.measured_s)]
            table.add_row(*cells)
        cells = ["total", "", "", _fmt_us(self.predicted_s), ""]
        if self.measured:
            cells += [_fmt_us(self.measured_s), ""]
        table.add_row(*cells, style="bold")
        if self.measured:
            table.caption = (
                f"per-layer predicted vs measured time: Pearson r = {self.correlation():.3f} "
                f"(log times: {self.correlation(log=True):.3f}); measured: each layer "
                f"compiled alone, best of several calls"
            )
        return table

    def table(self, title: str | None = "Roofline by layer"):
        """Per layer: mult-adds, bytes, intensity, bound, predicted and measured time."""
        from rich.table import Table

        table = Table(title=title)
        cols = ["module", "kind", "mult-adds", "bytes", "MA/byte", "bound", "predicted µs"]
        if self.measured:
            cols += ["measured µs", "measured / predicted"]
        for col in cols:
            table.add_column(col, justify="left" if col in cols[:2] else "right")
        for r in self.rows:
            cells = [
                r.path or "(root)",
                r.kind,
                f"{r.mult_adds:,}",
                f"{r.bytes_moved:,}",
                f"{r.intensity:.1f}",
                r.bound,
                _fmt_us(r.predicted_s),
            ]
            if self.measured and r.measured_s is not None:
                cells += [_fmt_us(r.measured_s), f"{r.measured_s / r.predicted_s:.1f}x"]
            table.add_row(*cells)
        return table

    def __rich_console__(self, console, options):
        yield self.kind_table()
        yield self.table()

    def render(self, width: int = 120) -> str:
        """Both tables as plain text."""
        from rich.console import Console

        buffer = io.StringIO()
        Console(file=buffer, width=width, color_system=None, force_terminal=False).print(self)
        return buffer.getvalue()

    def __str__(self) -> str:
        return self.render()

    def plot(self, title: str | None = None):
        """Two panels: per-layer time against mult-adds (left), the roofline (right).

        Left: each layer's predicted time (open marker) and, when measured, its
        measured time (filled), against its mult-adds, log-log. Right: attained
        mult-adds per second against arithmetic intensity, with the device's two
        roofs; each layer a point (measured when measured, else its prediction,
        which lies on the roof). Uses matplotlib's object API only.

        Returns:
          A :class:`matplotlib.figure.Figure`.
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(12, 4.6), layout="constrained")
        left, right = fig.subplots(1, 2)
        d = self.device
        for kind in {r.kind for r in self.rows}:
            rows = [r for r in self.rows if r.kind == kind]
            color = _KIND_COLORS.get(kind, "tab:gray")
            macs = np.array([r.mult_adds for r in rows], np.float64)
            pred = np.array([r.predicted_s for r in rows])
            left.scatter(macs, 1e3 * pred, facecolors="none", edgecolors=color, s=28)
            inten = np.array([r.intensity for r in rows])
            if self.measured:
                meas = np.array([r.measured_s for r in rows], np.float64)
                left.scatter(macs, 1e3 * meas, color=color, s=18, label=kind)
                right.scatter(inten, macs / meas, color=color, s=18, label=kind)
            else:
                left.scatter([], [], color=color, label=kind)
                right.scatter(inten, macs / pred, color=color, s=18, label=kind)
        intensities = [r.intensity for r in self.rows if r.bytes_moved]
        lo = min([*intensities, d.ridge_intensity]) / 3
        hi = max([*intensities, d.ridge_intensity]) * 3
        grid = np.geomspace(lo, hi, 200)
        right.plot(grid, np.minimum(d.peak_flops / 2, d.bandwidth * grid), "k-", lw=1.2)
        right.axvline(d.ridge_intensity, color="k", ls=":", lw=0.8)
        for ax in (left, right):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.25)
            ax.legend(fontsize=8)
        what = "forward + backward" if self.training else "forward"
        left.set_xlabel(f"mult-adds per layer ({what})")
        left.set_ylabel("time per layer (ms)")
        subtitle = "open: roofline prediction" + (", filled: measured" if self.measured else "")
        if self.measured:
            subtitle += f"; Pearson r = {self.correlation():.2f}"
        left.set_title(f"time vs mult-adds ({subtitle})", fontsize=9)
        right.set_xlabel("arithmetic intensity (mult-adds per byte)")
        right.set_ylabel("mult-adds per second" + (" (measured)" if self.measured else ""))
        right.set_title(
            f"roofline of {d.name}: {d.peak_flops / 2e12:.3g} T mult-adds/s, "
            f"{d.bandwidth / 1e9:,.0f} GB/s",
            fontsize=9,
        )
        if title:
            fig.suptitle(title)
        return fig


def roofline(cost: Profile | Count, device: Device | str, *, training: bool = False) -> Roofline:
    """Predicts every counted layer's time on ``device`` from its mult-adds and bytes.

    Each layer's time is ``max(2 * mult_adds / device.peak_flops, bytes_moved /
    device.bandwidth)``: its compute at peak or its least memory traffic at full
    bandwidth, whichever is longer. It is a lower bound for a layer run alone;
    measured times sit above it by what the kernel leaves of the peak and the
    bandwidth, and by launch and other fixed costs that weigh most on small layers.

    Args:
      cost: a :class:`~sepconv_jax.cost.Profile` (its measured times, when
        ``profile(..., measure=True)`` made it, are carried over) or a
        :class:`~sepconv_jax.cost.Count`.
      device: a :class:`Device`, or the name of a built-in one in :data:`DEVICES`
        (``"h100"``, ``"a100"``, ``"tpu-v5e"``, ``"tpu-v4"``, ...).
      training: predict forward plus backward (each op and its two transposes:
        three times the forward's mult-adds and bytes); measured times, which are
        of the forward alone, are then dropped.

    Returns:
      A :class:`Roofline`.

    Raises:
      ValueError: for an unknown device name.
      TypeError: for a ``cost`` that is neither a Profile nor a Count.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax import separable_conv
      >>> from sepconv_jax.cost import count, roofline
      >>> x = jax.ShapeDtypeStruct((1, 56, 56, 128), jnp.float32)
      >>> dk = jax.ShapeDtypeStruct((3, 3, 1, 128), jnp.float32)
      >>> pk = jax.ShapeDtypeStruct((128, 128), jnp.float32)
      >>> r = roofline(count(separable_conv, x, dk, pk), "h100")
      >>> [(row.kind, row.bound) for row in r.rows]
      [('depthwise', 'memory'), ('pointwise', 'memory')]
    """
    if not isinstance(device, Device):
        device = Device.named(device)
    factor = 3 if training else 1
    rows: list[RooflineRow] = []
    if isinstance(cost, Profile):
        items = [
            (r.path, r.kind, r.mult_adds, r.bytes_moved, r.measured_s)
            for r in cost.layers
            if r.kind in KINDS
        ]
    elif isinstance(cost, Count):
        items = [(op.name, op.kind, op.mult_adds, op.bytes_moved, None) for op in cost.ops]
    else:
        raise TypeError(
            f"`cost` must be a sepconv_jax.cost.Profile or Count, got {type(cost).__name__}"
        )
    for path, kind, mult_adds, nbytes, measured in items:
        macs, nbytes = factor * mult_adds, factor * nbytes
        rows.append(
            RooflineRow(
                path,
                kind,
                macs,
                nbytes,
                device.predict(macs, nbytes),
                device.bound(macs, nbytes),
                None if training else measured,
            )
        )
    return Roofline(device, tuple(rows), training)
