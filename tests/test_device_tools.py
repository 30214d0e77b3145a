"""The GPU tooling, run here on CPU: ``benchmarks/device_check.py`` (the step sequence
and its budgets), ``benchmarks/model_steps.py`` (one dry-run step) and
``benchmarks/gpu_profile.py`` (its parser and classifier on a CPU trace)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from sepconv_jax import ops

_BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(_BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, _BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- device_check


def test_device_check_plan_fits_eight_minutes(monkeypatch):
    check = _load("device_check", monkeypatch)
    assert [s.name for s in check.STEPS] == ["fused", "models", "profile", "layers", "tests"]
    assert check.planned_total() <= check.TOTAL_BUDGET_S == 480
    for step in check.STEPS:
        argv = check.command(step, Path("out"), dry_run=False, python="py")
        assert argv[0] == "py"
        if "--budget" in argv:  # the step's own budget ends it before the hard limit
            assert float(argv[argv.index("--budget") + 1]) < step.budget_s
        if "{out}" in step.argv:
            assert str(Path("out") / step.name) in argv
        dry = check.command(step, Path("out"), dry_run=True, python="py")
        assert dry == argv + list(step.dry_run)
    # Every benchmark step has a dry-run form.
    assert all(s.dry_run for s in check.STEPS if s.name != "tests")


def test_device_check_runs_in_order_writing_after_each_step(monkeypatch, tmp_path):
    check = _load("device_check", monkeypatch)
    order = tmp_path / "order.txt"
    append = f"open({str(order)!r}, 'a').write('{{}}\\n')"
    steps = (
        check.Step("first", ("-c", append.format("first")), 30.0, ()),
        # Sleeps past its limit, except in a dry run (one more argument).
        check.Step(
            "slow",
            ("-c", "import sys, time; time.sleep(30 if len(sys.argv) == 1 else 0)"),
            1.0,
            ("dry", "run"),
        ),
        check.Step("last", ("-c", append.format("last") + "; raise SystemExit(3)"), 30.0, ()),
    )
    monkeypatch.setattr(check, "STEPS", steps)
    lines: list[str] = []
    records = check.run(tmp_path / "out", dry_run=False, log=lines.append)
    assert order.read_text().split() == ["first", "last"]
    assert [r["step"] for r in records] == ["first", "slow", "last"]
    assert records[0]["returncode"] == 0
    assert records[1]["timed_out"] and records[1]["wall_s"] < 10  # the hard limit held
    assert records[2]["returncode"] == 3
    summary = json.loads((tmp_path / "out" / "device_check.json").read_text())
    assert summary["planned_total_s"] == 61.0 and len(summary["steps"]) == 3
    assert any("planned device budget 1 s" in line for line in lines)
    # A dry run has no hard limit and appends the dry-run arguments.
    records = check.run(tmp_path / "dry", dry_run=True, only=["slow"], log=lines.append)
    assert [(r["step"], r["returncode"]) for r in records] == [("slow", 0)]
    assert records[0]["argv"][-2:] == ["dry", "run"] and records[0]["wall_s"] < 25


# ----------------------------------------------------------------------------- model_steps


def test_model_steps_plan_order(monkeypatch):
    steps = _load("model_steps", monkeypatch)
    plan = steps.plan(("MobileNetV2", "EfficientNetB0"), ("float32", "bfloat16"), (64, 256),
                      ("auto", "xla", "pallas"))  # fmt: skip
    assert len(plan) == 24
    assert plan[0] == {"model": "MobileNetV2", "dtype": "bfloat16", "batch": 256, "impl": "auto"}
    assert [(c["batch"], c["dtype"]) for c in plan[::6]] == [
        (256, "bfloat16"),
        (256, "float32"),
        (64, "bfloat16"),
        (64, "float32"),
    ]


def test_model_steps_dry_run(monkeypatch, tmp_path, capsys):
    steps = _load("model_steps", monkeypatch)
    argv = ["--dry-run", "--architectures", "MobileNetV2", "--dtypes", "float32"]
    assert (
        steps.main([*argv, "--impls", "xla", "--compile-threads", "1", "--out", str(tmp_path)]) == 0
    )
    result = json.loads((tmp_path / "model_steps.json").read_text())
    [record] = result["records"]
    assert record["impl"] == "xla" and record["batch"] == 2 and record["seconds"] > 0
    assert record["speedup_vs_xla"] == 1.0
    text = (tmp_path / "model_steps.md").read_text()
    assert "| MobileNetV2 | float32 | 2 | xla |" in text and text in capsys.readouterr().out


def test_model_steps_budget_skips(monkeypatch, tmp_path):
    steps = _load("model_steps", monkeypatch)
    args = steps.parse_args(["--dry-run", "--budget", "0", "--out", str(tmp_path)])
    result = steps.run(args, log=lambda _: None)
    assert len(result["records"]) == 12  # 2 models x 2 dtypes x 1 batch x 3 impls
    assert all(r["seconds"] is None and "budget" in r["skipped"] for r in result["records"])


# ----------------------------------------------------------------------------- gpu_profile


def test_profile_classifier_on_gpu_hlo_lines(monkeypatch):
    profile = _load("gpu_profile", monkeypatch)
    lines = {
        '%cudnn-conv.3 = (f32[3,3,1,32]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b), window={size=3x3},'
        ' feature_group_count=32, custom_call_target="__cudnn$convBackwardFilter"':
            "depthwise bwd kernel",
        '%cudnn-conv.4 = (f32[8,9,9,32]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b), window={size=3x3},'
        ' feature_group_count=32, custom_call_target="__cudnn$convBackwardInput"':
            "depthwise bwd input",
        '%cudnn-conv.5 = (f32[8,9,9,32]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b), window={size=3x3},'
        ' feature_group_count=32, custom_call_target="__cudnn$convForward"': "depthwise fwd",
        '%cudnn-conv.6 = (f32[8,9,9,64]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b), window={size=1x1},'
        ' custom_call_target="__cudnn$convForward"': "pointwise/matmul",
        '%triton.1 = f32[8,9,9,64]{3,2,1,0} custom-call(%a, %b, %c), custom_call_target='
        '"__gpu$xla.gpu.triton", metadata={op_name="jit(step)/separable_conv/'
        'sepconv_fused_separable"}': "fused separable",
        '%triton.2 = f32[8,9,9,64]{3,2,1,0} custom-call(%a, %b), custom_call_target='
        '"__gpu$xla.gpu.triton", metadata={op_name="jit(step)/transpose(jvp(M))/'
        'depthwise_conv_input_transpose/depthwise_input_transpose"}': "depthwise bwd input",
        '%gemm.1 = f32[64,64]{1,0} custom-call(%a, %b), custom_call_target="__cublas$gemm"':
            "pointwise/matmul",
        '%fusion.9 = f32[64]{0} fusion(%a), kind=kInput, calls=%fused_reduce, metadata={op_name='
        '"jit(step)/jvp(M)/BatchNorm_0/reduce_sum"}': "batch norm",
        '%fusion.10 = f32[64]{0} fusion(%a), kind=kLoop, calls=%fused_sgd, metadata={op_name='
        '"jit(step)/optimizer/mul"}': "optimizer",
    }  # fmt: skip
    for line, kind in lines.items():
        name = line.split()[0].lstrip("%")
        instrs, computations = profile.parse_hlo("ENTRY %main {\n  " + line + "\n}\n")
        assert profile.classify(instrs[name], computations) == kind, line
    text = (
        "%fused_t (p: f32[3,4]) -> f32[4,3] {\n  %p = f32[3,4]{1,0} parameter(0)\n"
        "  ROOT %t = f32[4,3]{1,0} transpose(%p), dimensions={1,0}\n}\n"
        "ENTRY %main (x: f32[3,4]) -> f32[4,3] {\n"
        "  ROOT %f = f32[4,3]{1,0} fusion(%x), kind=kLoop, calls=%fused_t\n}\n"
    )
    instrs, computations = profile.parse_hlo(text)
    assert profile.classify(instrs["f"], computations) == "transposes/copies"


def test_profile_of_a_cpu_trace(monkeypatch, tmp_path):
    """A real trace taken here: the depthwise op's three maps, a 1x1 step and an
    ``optimizer`` scope, each found with its time, and the shares summing to 1."""
    profile = _load("gpu_profile", monkeypatch)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 8))
    k = jax.random.normal(jax.random.key(1), (3, 3, 1, 8))
    p = jax.random.normal(jax.random.key(2), (8, 16))

    def loss(x, k, p):
        y = ops.depthwise_conv(x, k, impl="xla")
        return jnp.sum(ops.pointwise_conv(y, p) ** 2)

    def step(x, k, p):
        gx, gk, gp = jax.grad(loss, argnums=(0, 1, 2))(x, k, p)
        with jax.named_scope("optimizer"):
            return x - 0.1 * gx, k - 0.1 * gk, p - 0.1 * gp

    compiled = jax.jit(step).lower(x, k, p).compile()
    jax.block_until_ready(compiled(x, k, p))
    with jax.profiler.trace(str(tmp_path)):
        for _ in range(2):
            jax.block_until_ready(compiled(x, k, p))
    [path] = list(tmp_path.glob("**/*.xplane.pb"))
    events = profile.device_events(str(path), "jit_step")
    assert events and all(seconds >= 0 for _, seconds in events)
    summary = profile.summarize(events, compiled.as_text(), steps=2)
    kinds = summary["kinds"]
    for kind in ("depthwise fwd", "depthwise bwd input", "depthwise bwd kernel", "optimizer"):
        assert kind in kinds and kinds[kind]["ms_per_step"] > 0, (kind, kinds)
    assert "pointwise/matmul" in kinds
    assert sum(r["share"] for r in kinds.values()) == pytest.approx(1.0)
    assert sum(r["ms_per_step"] for r in kinds.values()) == pytest.approx(
        summary["total_ms_per_step"]
    )
    assert summary["pallas_ms_per_step"] == 0
    result = {
        "architecture": "toy", "dtype": "float32", "batch": 4, "steps": 2,
        "machine": {"device": "cpu"}, "impls": {"xla": summary},
    }  # fmt: skip
    assert "| depthwise bwd kernel |" in profile.markdown(result)
