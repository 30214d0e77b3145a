"""``sepconv-jax bench --export --quick`` through the CLI: every runner, the table's
columns, the op counts, JSON, Markdown and PNG (structure only: no speed asserted)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from sepconv_jax import cli
from sepconv_jax.apps import bench_export
from sepconv_jax.export import latency

_NEEDS = ("onnx", "onnxruntime", "tensorflow", "ai_edge_litert", "timm", "keras", "matplotlib")
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in _NEEDS),
    reason=f"needs {', '.join(_NEEDS)}",
)

FLOAT = ("jax", "onnxruntime", "torch.onnx", "litert")


def test_bench_export_quick(tmp_path, capsys):
    assert cli.main(["bench", "--export", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "export.json").read_text())
    rows = {r["runtime"]: r for r in result["rows"]}
    assert [(r["model"], r["runtime"]) for r in result["rows"]] == [
        ("MobileNetV2", runner) for runner in bench_export.RUNNERS
    ]
    assert result["config"]["image_size"] == 32 and result["config"]["threads"] == latency.THREADS
    for row in rows.values():
        assert row["median_ms"] is not None, row  # every runner ran
        assert row["runs"] == 3
    # The same network and weights on our side and timm's: float outputs agree with
    # our JAX call (torch.onnx is PyTorch's own computation of it).
    for runner in FLOAT:
        assert rows[runner]["max_rel_error"] <= 1e-5, rows[runner]
    for runner in ("keras-litert", "keras-litert-int8"):
        assert rows[runner]["max_rel_error"] is None  # other weights
    # Our LiteRT graph is Keras' one: the same convolutions, no reshapes around them.
    ours, keras = rows["litert"]["ops"], rows["keras-litert"]["ops"]
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "FULLY_CONNECTED"):
        assert ours[op] == keras[op], (ours, keras)
    assert "RESHAPE" not in ours and "TRANSPOSE" not in ours
    # Full integer: float only at the input and output.
    for runner in ("litert-int8", "keras-litert-int8"):
        ops = rows[runner]["ops"]
        assert ops["QUANTIZE"] == ops["DEQUANTIZE"] == 1, ops
    assert rows["torch.onnx"]["ops"]["Conv"] == rows["torch.onnx"]["optimized_ops"]["Conv"] == 52
    header = "| model | " + " | ".join(bench_export.RUNNERS)
    ratios = " | ".join(f"{a} / {b}" for a, b in bench_export.RATIOS)
    assert f"{header} | {ratios} |" in printed
    markdown = (tmp_path / "export.md").read_text()
    assert f"{header} | {ratios} |" in markdown and "| MobileNetV2 | litert | ADD" in markdown
    assert (tmp_path / "export.png").read_bytes().startswith(b"\x89PNG")
