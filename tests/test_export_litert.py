"""LiteRT (TFLite) export: our models run in the LiteRT interpreter and equal our output.

Skipped without the ``litert`` extra (``tensorflow``, ``ai-edge-litert``). The
tolerance is the issue's: the largest absolute difference at most 1e-5 of the
largest output magnitude. The operator list is read from the flatbuffer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from sepconv_jax import linen as sl
from sepconv_jax import models
from sepconv_jax import nnx as sn
from sepconv_jax.kernels.dispatch import default_impl
from tests.export_helpers import REL, random_variables, relative_error

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from sepconv_jax.export.litert import run_tflite, tflite_ops, to_tflite

# (model, input side, depthwise layers, 1x1 + standard convolutions)
MODELS = {
    "mobilenet_v1": (lambda: models.MobileNetV1(num_classes=10, width_multiplier=0.25), 32, 13, 14),
    "mobilenet_v2": (lambda: models.MobileNetV2(num_classes=10, width_multiplier=0.35), 32, 17, 35),
    "efficientnet": (
        lambda: models.EfficientNet(num_classes=10, depth_coefficient=0.25),
        32,
        7,
        29,
    ),
    "xception": (lambda: models.Xception(num_classes=10), 64, 34, 40),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_runs_in_litert_and_equals_ours(name, tmp_path):
    build, size, depthwise, convs = MODELS[name]
    model = build()
    x = jax.random.normal(jax.random.key(1), (1, size, size, 3))
    if name == "efficientnet":
        x = 127.5 + 60.0 * x
    variables = random_variables(model, x)
    with default_impl("xla"):
        want = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    path = to_tflite(model, variables, x, tmp_path / f"{name}.tflite")
    assert relative_error(run_tflite(path, x), want) <= REL
    ops = tflite_ops(path)
    assert ops["DEPTHWISE_CONV_2D"] == depthwise, ops
    assert ops["CONV_2D"] == convs, ops
    # No tap-by-tap slicing: the only strided slices are Xception's 4 strided shortcuts.
    assert ops.get("SLICE", 0) == 0
    assert ops.get("STRIDED_SLICE", 0) == (4 if name == "xception" else 0)
    if name.startswith("mobilenet"):  # each 1x1 step one CONV_2D on the image, as Keras'
        assert "RESHAPE" not in ops, ops
    if name == "efficientnet":  # squeeze-and-excitation means: one pooling each
        assert "SUM" not in ops and "RESHAPE" not in ops, ops
        assert ops["AVERAGE_POOL_2D"] >= 1, ops  # (a pooling over 1x1 is dropped)


def test_layers_and_nnx(tmp_path):
    x = jax.random.normal(jax.random.key(2), (1, 9, 9, 4))
    layer = sl.SeparableConv(features=6, kernel_size=(3, 3), strides=2, depth_multiplier=2)
    variables = layer.init(jax.random.key(3), x)
    path = to_tflite(layer, variables, x, tmp_path / "layer.tflite")
    assert relative_error(run_tflite(path, x), layer.apply(variables, x)) <= REL
    assert tflite_ops(path)["DEPTHWISE_CONV_2D"] == 1
    nnx_layer = sn.DepthwiseConv(4, (5, 5), rngs=nnx.Rngs(0))
    path = to_tflite(nnx_layer, None, x, tmp_path / "nnx.tflite")
    assert relative_error(run_tflite(path, x), nnx_layer(x)) <= REL
    assert tflite_ops(path)["DEPTHWISE_CONV_2D"] == 1


def test_rejects_non_float32(tmp_path):
    layer = sl.PointwiseConv(features=2)
    x = jnp.ones((1, 2, 2, 3), jnp.bfloat16)
    variables = layer.init(jax.random.key(0), x)
    with pytest.raises(TypeError, match="float32"):
        to_tflite(layer, variables, x, tmp_path / "m.tflite")


def test_full_integer_int8(tmp_path):
    """``calibration_batches``: int8 kernels from input to output, float only at the ends.

    One separable layer: input, weights and output each rounded to 8 bits (a step of
    1/255 of the calibrated range), so the output is within a few percent of float.
    """
    import numpy as np

    layer = sl.SeparableConv(features=16, kernel_size=(3, 3), strides=2)
    x = jax.random.normal(jax.random.key(4), (1, 16, 16, 8))
    variables = layer.init(jax.random.key(5), x)
    calibration = jax.random.normal(jax.random.key(6), (6, 16, 16, 8))
    path = to_tflite(layer, variables, x, tmp_path / "int8.tflite", calibration_batches=calibration)
    ops = tflite_ops(path)
    assert ops == {"QUANTIZE": 1, "DEPTHWISE_CONV_2D": 1, "CONV_2D": 1, "DEQUANTIZE": 1}, ops
    from sepconv_jax.export.litert import interpreter

    it = interpreter(path, num_threads=1)
    kinds = [np.dtype(t["dtype"]) for t in it.get_tensor_details()]
    assert kinds.count(np.dtype(np.float32)) == 2  # the model's input and output
    assert relative_error(run_tflite(it, x), layer.apply(variables, x)) <= 0.05


def test_rejects_bad_calibration(tmp_path):
    layer = sl.PointwiseConv(features=2)
    x = jnp.ones((1, 2, 2, 3))
    variables = layer.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="calibration_batches"):
        to_tflite(
            layer, variables, x, tmp_path / "m.tflite", calibration_batches=jnp.ones((4, 2, 2))
        )
    with pytest.raises(TypeError, match="calibration_batches"):
        to_tflite(layer, variables, x, tmp_path / "m.tflite", calibration_batches="images")
