"""The ``export`` subcommand and the latency table (structure only: no speed asserted)."""

from __future__ import annotations

import argparse

import jax
import numpy as np
import pytest

from sepconv_jax import linen as sl
from sepconv_jax.export import _cli, latency

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_latency_table_rows():
    layer = sl.SeparableConv(features=8, kernel_size=(3, 3))
    x = np.asarray(jax.random.normal(jax.random.key(0), (1, 8, 8, 4)), np.float32)
    variables = layer.init(jax.random.key(1), x)
    rows = latency.latency_table(layer, variables, x, runs=3)
    assert [r["runtime"] for r in rows] == list(latency.RUNTIMES)
    for r in rows:
        if r["median_ms"] is None:  # an extra that is not installed
            assert "extra" in r["note"]
            continue
        assert 0 < r["median_ms"] <= r["p90_ms"] and r["runs"] == 3
        limit = 0.1 if r["runtime"].endswith("-int8") else 1e-5
        assert r["max_rel_error"] <= limit, r
    table = latency.markdown([{"model": "layer", **r} for r in rows])
    assert table.count("\n") == len(rows) + 1
    with pytest.raises(ValueError, match="`runtimes`"):
        latency.latency_table(layer, variables, x, runtimes=("tvm",))
    with pytest.raises(ValueError, match="`runs`"):
        latency.time_calls(lambda: None, runs=0)


def test_export_command_writes_a_model_onnxruntime_runs(tmp_path, capsys):
    from sepconv_jax.export import run_onnx

    parser = argparse.ArgumentParser(prog="sepconv-jax")
    _cli.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "m.onnx"
    args = parser.parse_args(
        [
            "export",
            "--model",
            "mobilenet_v1",
            "--width",
            "0.25",
            "--size",
            "32",
            "--classes",
            "10",
            "--out",
            str(out),
        ]
    )
    assert args.func(args) == 0
    assert "wrote" in capsys.readouterr().out
    y = run_onnx(out, np.zeros((1, 32, 32, 3), np.float32))
    assert y.shape == (1, 10)
    with pytest.raises(ValueError, match="`--model`"):
        _cli.build_model("resnet50")


def test_cli_wires_export_without_loading_the_exporters():
    """``sepconv-jax export`` is registered; building the parser loads no exporter."""
    import subprocess
    import sys

    from sepconv_jax import cli, models

    args = cli._parser().parse_args(["export", "--model", "mobilenet_v1", "--out", "m.onnx"])
    assert args.command == "export" and args.func is _cli.run
    assert _cli.model_names() == tuple(models.NAMES)
    probe = (
        "import sys; from sepconv_jax import cli; cli._parser(); "
        "print(sorted(m for m in ('jax2onnx', 'onnx', 'onnxruntime', 'tensorflow') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
