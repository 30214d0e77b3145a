"""One traced model, exported for several platforms, carries each platform's kernel.

``impl="auto"`` is resolved when the depthwise primitives are lowered, per platform
(``sepconv_jax.kernels.op``), so a MobileNetV2 traced once on this CPU machine and
exported for ``("cpu", "cuda", "tpu")`` holds the shift loop for CPU and the grouped
convolution for CUDA and TPU. Compiled (not exported), its CPU layers run the native
kernel's FFI calls and its strided CUDA layers the Pallas (Triton) kernels instead:
``jax.export`` only serializes custom calls with compatibility guarantees, which
neither has, so ``"auto"`` keeps to StableHLO when lowering for export. The module
text is read per platform.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from sepconv_jax import depthwise_conv, models
from sepconv_jax.kernels import dispatch, native
from tests.helpers import gpu_lowering_here

MODEL = models.MobileNetV2(num_classes=10, width_multiplier=0.35)
X = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
# MobileNetV2 has one 3x3 depthwise layer per inverted residual block: 17 of them,
# 4 of them with stride 2.
DEPTHWISE_LAYERS = 17
STRIDED_LAYERS = 4
TRITON_CALL = "__gpu$xla.gpu.triton"


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
    # CPU: the depthwise layers are the native kernel's FFI calls (or, where it cannot
    # be built, shifted multiply-accumulates: slices of the padded input), no grouped
    # convolution; the only convolutions are the stem's 3x3 and the 1x1 projections.
    assert all(g == 1 for g in _grouped_convs(cpu))
    if native.available():
        assert cpu.count("custom_call @sepconv_jax_depthwise_forward(") == DEPTHWISE_LAYERS
    else:
        assert cpu.count("stablehlo.slice") >= 9 * DEPTHWISE_LAYERS
    tpu = _lowered_text(fn, variables, x, platform="tpu")
    assert len([g for g in _grouped_convs(tpu) if g > 1]) == DEPTHWISE_LAYERS
    assert "stablehlo.slice" not in tpu  # none of the CPU loop
    assert TRITON_CALL not in tpu
    with gpu_lowering_here():
        cuda = _lowered_text(fn, variables, x, platform="cuda")
    # CUDA: the strided layers run the Triton kernel, the others the grouped conv.
    grouped = [g for g in _grouped_convs(cuda) if g > 1]
    assert len(grouped) == DEPTHWISE_LAYERS - STRIDED_LAYERS
    assert cuda.count(TRITON_CALL) == STRIDED_LAYERS
    assert "stablehlo.slice" not in cuda


def test_exported_for_three_platforms_runs_here_after_serialization(model_fn):
    fn, variables, x = model_fn
    exported = export.export(fn, platforms=("cpu", "cuda", "tpu"))(variables, x)
    assert exported.platforms == ("cpu", "cuda", "tpu")
    text = exported.mlir_module()
    # The multi-platform module holds both kernels, chosen by the platform index, and
    # no Triton call: exported, the strided CUDA layers are grouped convolutions too.
    assert "stablehlo.slice" in text
    assert [g for g in _grouped_convs(text) if g > 1]
    assert TRITON_CALL not in text
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
    cuda_only = export.export(grad, platforms=("cuda",))(x, k).mlir_module()
    assert TRITON_CALL not in cuda_only and any(g > 1 for g in _grouped_convs(cuda_only))
    with gpu_lowering_here():
        cuda = _lowered_text(grad, x, k, platform="cuda")
    # A strided 3x3 layer: the Triton kernels for the forward and both transposes.
    assert cuda.count(TRITON_CALL) == 3 and not any(g > 1 for g in _grouped_convs(cuda))


def test_override_names_one_kernel_for_every_platform(model_fn):
    _, variables, x = model_fn
    with dispatch.default_impl("xla"):
        traced = jax.jit(lambda v, x: MODEL.apply(v, x, train=False))
        cpu = _lowered_text(traced, variables, x, platform="cpu")
    assert len([g for g in _grouped_convs(cpu) if g > 1]) == DEPTHWISE_LAYERS


def test_an_explicit_pallas_kernel_is_exported_only_where_the_user_allows_it():
    x = jax.random.normal(jax.random.key(4), (2, 8, 8, 4))
    k = jax.random.normal(jax.random.key(5), (3, 3, 1, 4))
    fn = jax.jit(lambda x, k: depthwise_conv(x, k, impl="pallas"))
    with gpu_lowering_here():
        # Named explicitly, the Triton kernel is what gets lowered, and jax.export
        # refuses it unless the user disables that check for its target.
        with pytest.raises(ValueError, match="compatibility guarantees"):
            export.export(fn, platforms=("cuda",))(x, k)
        check = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
        exported = export.export(fn, platforms=("cuda",), disabled_checks=[check])(x, k)
    assert TRITON_CALL in exported.mlir_module()
