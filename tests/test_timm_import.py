"""Whole-model import from timm against timm itself (PyTorch, CPU, eval mode).

Each model is built with ``pretrained=False`` (nothing is downloaded), its
batch-norm statistics are set to non-trivial values (the batch statistics of a
calibration batch, perturbed) and its affine and layer-scale weights randomized; the
converted Flax model must reproduce ``timm_model.eval()(x)`` to a relative error
under 1e-4, and hold exactly as many parameters and statistics.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from sepconv_jax import models  # noqa: E402
from sepconv_jax.interop.timm import convert  # noqa: E402

RTOL = 1e-4
SIZE = 64
#: XLA:CPU options that cut compile time on a small machine (code generation only).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

#: timm name -> (our class, expected attributes of the converted module).
CASES = {
    "mobilenetv2_100": (models.MobileNetV2, dict(stride2_padding="symmetric", bn_epsilon=1e-5)),
    "mobilenetv3_large_100": (models.MobileNetV3Large, dict(alpha=1.0, stride2_padding="symmetric")),
    "mobilenetv3_small_100": (models.MobileNetV3Small, dict(alpha=1.0, minimalistic=False)),
    "efficientnet_b0": (models.EfficientNetB0, dict(stride2_padding="symmetric", bn_epsilon=1e-5)),
    "efficientnet_b1": (models.EfficientNetB1, dict(stride2_padding="symmetric")),
    "efficientnet_b2": (models.EfficientNetB2, dict(stride2_padding="symmetric")),
    "efficientnet_b3": (models.EfficientNetB3, dict(stride2_padding="symmetric")),
    "tf_efficientnet_b0": (models.EfficientNetB0, dict(stride2_padding="same", bn_epsilon=1e-3)),
    "tf_efficientnet_b1": (models.EfficientNetB1, dict(stride2_padding="same")),
    "tf_efficientnet_b2": (models.EfficientNetB2, dict(stride2_padding="same")),
    "tf_efficientnet_b3": (models.EfficientNetB3, dict(stride2_padding="same")),
    "convnext_tiny": (models.ConvNeXt, dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))),
}  # fmt: skip

#: The largest relative logit error per model, for the record.
ERRORS: dict[str, float] = {}


def randomized(name: str, seed: int, **kwargs):
    """A timm model with random affine weights and non-trivial running statistics."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=11, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.LayerNorm):
                module.weight.uniform_(0.7, 1.2, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
            if getattr(module, "gamma", None) is not None:  # ConvNeXt's layer scale
                module.gamma.uniform_(0.5, 1.0, generator=generator)
        # running statistics: those of a calibration batch (momentum 1), perturbed, so
        # every layer stays in range
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for bn in bns:
            bn.momentum = 1.0
        model.train()
        model(torch.rand(8, 3, SIZE, SIZE, generator=generator) * 2 - 1)
        for bn in bns:
            bn.momentum = 0.1
            noise = torch.randn(bn.running_mean.shape, generator=generator)
            bn.running_mean += 0.1 * bn.running_var.sqrt() * noise
            bn.running_var *= torch.empty_like(bn.running_var).uniform_(
                0.8, 1.5, generator=generator
            )
    return model.eval()


def relative_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


@pytest.mark.parametrize("name", list(CASES))
def test_convert_matches_timm_and_counts_parameters(name):
    cls, attributes = CASES[name]
    timm_model = randomized(name, seed=sorted(CASES).index(name))
    module, variables = convert(timm_model)
    assert type(module) is cls
    for attribute, value in attributes.items():
        assert getattr(module, attribute) == value, attribute
    assert (module.num_classes, module.include_top) == (11, True)

    x = np.random.default_rng(1).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = timm_model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    apply = jax.jit(lambda v, x: module.apply(v, x, train=False), compiler_options=FAST_COMPILE)
    ours = np.asarray(apply(variables, x))
    assert ours.shape == theirs.shape == (2, 11)
    assert np.std(theirs, axis=0).mean() > 1e-3 * np.abs(theirs).mean()  # input matters
    error = relative_error(ours, theirs)
    ERRORS[name] = error
    assert error < RTOL, (name, error)

    def count(tree) -> int:
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))

    assert count(variables["params"]) == sum(p.numel() for p in timm_model.parameters())
    running = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in timm_model.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    )
    assert count(variables.get("batch_stats", {})) == running


@pytest.mark.parametrize("name", ["efficientnet_b0", "convnext_tiny"])
def test_convert_without_classifier_gives_pooled_features(name):
    """``num_classes=0``: timm returns the pooled features, and so does the module."""
    torch.manual_seed(0)
    timm_model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    module, variables = convert(timm_model)
    assert not module.include_top and module.pooling == "avg"
    x = np.random.default_rng(2).uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = timm_model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    ours = jax.jit(lambda v, x: module.apply(v, x), compiler_options=FAST_COMPILE)(variables, x)
    assert relative_error(ours, theirs) < RTOL


def test_convert_rejects_other_models():
    with pytest.raises(TypeError, match="`timm_model` must be a timm"):
        convert(torch.nn.Linear(2, 3))
    hardswish_v2 = timm.create_model("mobilenetv2_100", pretrained=False, act_layer="hard_swish")
    with pytest.raises(ValueError, match="activations"):
        convert(hardswish_v2)
    with pytest.raises(ValueError, match="num_classes=0"):
        convert(timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=0))


# ----------------------------------------------------------------------------- bench --models


def test_bench_models_quick_runs_both_sides_on_one_network(tmp_path, capsys):
    """``bench --models``: ours and timm's records at each batch (inference at 1 and 2,
    training at 2 with --quick), the same parameter count on both sides (one network),
    a table with every runner and batch, and the per-image scaling table. Run in a
    process of its own, with --retain-memory, which must come before the first JAX
    computation (this test process has had many)."""
    import json
    import subprocess
    import sys

    argv = ["bench", "--models", "MobileNetV2", "--quick", "--model-impls", "auto"]
    proc = subprocess.run(
        [sys.executable, "-m", "sepconv_jax.cli", *argv, "--retain-memory", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "models.json").read_text())
    assert result["config"]["retain_memory"] is True
    records = result["records"]
    runners = {(r["runner"], r["mode"], r["batch"]) for r in records}
    expected_runners = ("ours impl=auto", "timm NCHW", "timm channels_last")
    timed = [("inference", 1), ("inference", 2), ("training", 2)]
    assert runners == {(r, m, b) for r in expected_runners for m, b in timed}
    assert all(r["images_per_second"] > 0 and r["seconds"] > 0 for r in records)
    for r in records:
        assert r["images_per_second"] == pytest.approx(r["batch"] / r["seconds"])
    assert {r["params"] for r in records} == {result["facts"]["timm_params"]["MobileNetV2"]}
    config = result["config"]
    assert config["image_size"] == 32
    assert (config["inference_batches"], config["training_batches"]) == ([1, 2], [2])
    table = (tmp_path / "models.md").read_text()
    for runner in expected_runners:
        assert f"| MobileNetV2 | 1 | {runner} |" in table
        assert f"| MobileNetV2 | 2 | {runner} |" in table
    # per-image throughput at batch 2 over batch 1, from the records themselves
    rate = {(r["runner"], r["mode"], r["batch"]): r["images_per_second"] for r in records}
    ours = rate[("ours impl=auto", "inference", 2)] / rate[("ours impl=auto", "inference", 1)]
    assert "| model | runner | mode | b2 / b1 |" in table
    assert f"| MobileNetV2 | ours impl=auto | inference | {ours:.2f} |" in table
    assert "Both processes keep freed heap memory for reuse" in table
    assert (tmp_path / "models.png").read_bytes().startswith(b"\x89PNG")


def test_bench_models_retain_memory_after_jax_has_run_is_refused(tmp_path, capsys):
    import jax.numpy as jnp

    from sepconv_jax import cli

    jnp.ones(2).block_until_ready()
    argv = ["bench", "--models", "MobileNetV2", "--quick", "--retain-memory"]
    assert cli.main([*argv, "--out", str(tmp_path)]) == 2
    assert "--retain-memory: retain_freed_memory() must be called before" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "models.json").exists()


def test_bench_models_batches_must_be_positive(tmp_path, capsys):
    from sepconv_jax import cli
    from sepconv_jax.apps import bench_models

    with pytest.raises(SystemExit):
        cli.main(["bench", "--models", "--inference-batches", "0", "--out", str(tmp_path)])
    assert "expected a positive int, got '0'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="`training_batches` must hold positive ints"):
        bench_models.measure_batches(training_batches=(8, -1))
    with pytest.raises(ValueError, match="both empty"):
        bench_models.measure_batches(inference_batches=(), training_batches=())


def test_bench_models_rejects_unknown_models(tmp_path, capsys):
    from sepconv_jax import cli

    assert cli.main(["bench", "--models", "ResNet50", "--out", str(tmp_path)]) == 2
    assert "--models takes MobileNetV2" in capsys.readouterr().err
    assert not (tmp_path / "models.json").exists()
