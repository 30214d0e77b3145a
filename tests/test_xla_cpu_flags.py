"""``benchmarks/xla_cpu_flags.py`` on a toy program: per-compile options, the round-robin
timing, the error measures and the program summary (the whole-model run is a benchmark)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "xla_cpu_flags.py"


def _load(monkeypatch):
    spec = importlib.util.spec_from_file_location("xla_cpu_flags", _PATH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "xla_cpu_flags", module)
    spec.loader.exec_module(module)
    return module


def test_errors_are_relative_l2_of_logits_and_of_the_update(monkeypatch):
    flags = _load(monkeypatch)
    ref = np.array([3.0, 4.0])  # norm 5
    assert np.isclose(flags.errors("inference", [], ref + np.array([0.0, 0.5]), ref)["logits"], 0.1)
    params = {"w": np.ones(3), "b": np.zeros(1)}
    new_ref = {"w": np.array([1.0, 4.0, 1.0]), "b": np.array([4.0])}  # update norm 5
    new_out = {"w": np.array([1.0, 4.0, 2.0]), "b": np.array([4.0])}  # off by 1
    stats = {"mean": np.array([2.0])}
    out = (new_out, {"s": {"mean": np.array([2.2])}}, None, np.float32(2.0))
    ref_step = (new_ref, {"s": stats}, None, np.float32(1.0))
    found = flags.errors("training", [params], out, ref_step)
    # The parameters themselves (norm about 6) are not what is compared: the update is.
    assert np.isclose(found["update"], 1 / 5)
    assert np.isclose(found["loss"], 1.0) and np.isclose(found["batch stats"], 0.1)
    assert "batch stats" not in flags.errors(
        "training", [params], (out[0], {}, *out[2:]), (ref_step[0], {}, *ref_step[2:])
    )


def test_program_summary_counts_entry_instructions(monkeypatch):
    flags = _load(monkeypatch)
    text = "\n".join(
        [
            "%fused_computation (p: f32[4]) -> f32[4] {",
            "  %copy.9 = f32[4]{0} copy(%p)",  # inside a fusion: not counted
            "}",
            "ENTRY %main (x: f32[4]) -> f32[4] {",
            '  %ynn_fusion = f32[4]{0} fusion(%x), kind=kCustom, calls=%a, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}',
            "  %loop_fusion = f32[4]{0} fusion(%ynn_fusion), kind=kLoop, calls=%b",
            "  %transpose_copy_fusion = f32[4]{0} fusion(%loop_fusion), kind=kLoop, calls=%c",
            "  ROOT %copy.1 = f32[4]{0} copy(%transpose_copy_fusion)",
            "}",
        ]
    )
    assert flags.program_summary(text) == {
        "ynn_fusion": 1,
        "xla fusion": 2,
        "copy/transpose": 2,
    }


def test_measure_compiles_each_set_and_times_them_side_by_side(monkeypatch):
    flags = _load(monkeypatch)
    sets = {
        "default": {},
        "ynn off": {"xla_cpu_experimental_ynn_fusion_type": ""},
        "bad value": {"xla_cpu_use_xnnpack": "maybe"},
    }
    monkeypatch.setattr(flags, "OPTION_SETS", sets)
    w = jax.random.normal(jax.random.key(0), (16, 8))
    x = jax.random.normal(jax.random.key(1), (4, 16))
    fn = lambda w, x: jnp.tanh(x @ w)
    lines: list[str] = []
    records = flags.measure("toy", "inference", fn, [w, x], list(sets), 3, 1, lines.append)
    by_set = {r["set"]: r for r in records}
    assert "not a valid bool" in by_set["bad value"]["error"]  # recorded, not raised
    expected = np.tanh(np.asarray(x, np.float64) @ np.asarray(w, np.float64))
    for label in ("default", "ynn off"):
        r = by_set[label]
        assert len(r["round_ms"]) == 3 and r["ms"] > 0 and r["compile_s"] > 0
        assert r["errors"]["logits"] < 1e-5
    assert by_set["default"]["ratio"] == 1.0 and by_set["default"]["same_hlo_as"] == "default"
    assert by_set["default"]["one_ulp_errors"]["logits"] < 1e-5
    compiled = jax.jit(fn).lower(w, x).compile(sets["ynn off"])
    np.testing.assert_allclose(compiled(w, x), expected, rtol=1e-5, atol=1e-6)
    text = "\n".join(flags.tables(records, list(sets)))
    assert "| bad value | failed |" in text and "| default | " in text
