"""One traced model, exported for several platforms, carries each platform's kernel.

``impl="auto"`` is resolved when the depthwise primitives are lowered, per platform
(``sepconv_jax.kernels.op``), so a MobileNetV2 traced once on this CPU machine and
exported for ``("cpu", "cuda", "tpu")`` holds the shift loop for CPU and the grouped
convolution for CUDA and TPU. The module text is read per platform.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from sepconv_jax import depthwise_conv, models
from sepconv_jax.kernels import dispatch

MODEL = models.MobileNetV2(num_classes=10, width_multiplier=0.35)
X = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
# MobileNetV2 has one 3x3 depthwise layer per inverted residual block: 17 of them.
DEPTHWISE_LAYERS = 17


@pytest.fixture(scope="module")
def model_fn():
    variables = MODEL.init(jax.random.key(0), jnp.zeros(X.shape), train=False)
    x = jax.random.normal(jax.random.key(1), X.shape)
    return jax.jit(lambda v, x: MODEL.apply(v, x, train=False)), variables, x


def _grouped_convs(text: str) -> list[int]:
    """The ``feature_group_count`` of every convolution in a StableHLO module text."""
    convs = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    groups = []
    for line in convs:
        found = re.search(r"feature_group_count\s*=\s*(\d+)", line)
        groups.append(int(found.group(1)) if found else 1)
    return groups


def _lowered_text(fn, *args, platform: str) -> str:
    return fn.trace(*args).lower(lowering_platforms=(platform,)).as_text()


def test_each_platform_gets_its_own_kernel(model_fn):
    fn, variables, x = model_fn
    cpu = _lowered_text(fn, variables, x, platform="cpu")
    # CPU: the depthwise layers are shifted multiply-accumulates (slices of the
    # padded input), no grouped convolution; the only convolutions are the stem's
    # 3x3 and the 1x1 projections.
    assert all(g == 1 for g in _grouped_convs(cpu))
    assert cpu.count("stablehlo.slice") >= 9 * DEPTHWISE_LAYERS
    for platform in ("cuda", "tpu"):
        text = _lowered_text(fn, variables, x, platform=platform)
        grouped = [g for g in _grouped_convs(text) if g > 1]
        assert len(grouped) == DEPTHWISE_LAYERS, platform
        assert "stablehlo.slice" not in text, platform  # none of the CPU loop


def test_exported_for_three_platforms_runs_here_after_serialization(model_fn):
    fn, variables, x = model_fn
    exported = export.export(fn, platforms=("cpu", "cuda", "tpu"))(variables, x)
    assert exported.platforms == ("cpu", "cuda", "tpu")
    text = exported.mlir_module()
    # The multi-platform module holds both kernels, chosen by the platform index.
    assert "stablehlo.slice" in text
    assert [g for g in _grouped_convs(text) if g > 1]
    restored = export.deserialize(exported.serialize())
    got = restored.call(variables, x)
    want = fn(variables, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_gradients_export_too():
    def loss(x, k):
        return jnp.sum(jnp.sin(depthwise_conv(x, k, strides=2)))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    x = jax.random.normal(jax.random.key(2), (2, 9, 8, 4))
    k = jax.random.normal(jax.random.key(3), (3, 3, 1, 8))
    exported = export.export(grad, platforms=("cpu", "cuda"))(x, k)
    got = export.deserialize(exported.serialize()).call(x, k)
    for a, b in zip(got, grad(x, k), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    cuda = _lowered_text(grad, x, k, platform="cuda")
    assert "stablehlo.slice" not in cuda and any(g > 1 for g in _grouped_convs(cuda))


def test_override_names_one_kernel_for_every_platform(model_fn):
    _, variables, x = model_fn
    with dispatch.default_impl("xla"):
        traced = jax.jit(lambda v, x: MODEL.apply(v, x, train=False))
        cpu = _lowered_text(traced, variables, x, platform="cpu")
    assert len([g for g in _grouped_convs(cpu) if g > 1]) == DEPTHWISE_LAYERS
