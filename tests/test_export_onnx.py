"""ONNX export: our models and layers run in onnxruntime and equal our output.

The peer is onnxruntime's CPU implementation of the exported graph; the expected
value is our own JAX output with batch norm unfolded, so each comparison checks the
depthwise rewrite, the batch-norm folding and jax2onnx's conversion together. The
models' variables are drawn directly in NumPy with the shapes ``init`` would give
(``init`` itself compiles for half a minute per model), and our reference output is
computed with the ``"xla"`` kernel under ``jit`` (``tests/test_kernels.py`` shows
the kernels agree). "Equal" is the issue's tolerance: the largest
absolute difference at most 1e-5 of the largest output magnitude.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from sepconv_jax import depthwise_conv, models
from sepconv_jax import linen as sl
from sepconv_jax import nnx as sn
from sepconv_jax.export import _model, _rewrite, conv_groups, op_counts, run_onnx, to_onnx
from sepconv_jax.kernels import op as kernel_op
from sepconv_jax.kernels.dispatch import default_impl

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")

import onnx

from tests.export_helpers import REL, random_variables, relative_error, trained_like


def conv_weight_shapes(model):
    """The ONNX-layout ``(O, I, *window)`` shape of every Conv's weight (shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    for info in graph.value_info:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = tuple(d.dim_value for d in dims)
    return [shapes[node.input[1]] for node in graph.node if node.op_type == "Conv"]


# (model, input side, depthwise layers, pointwise layers, standard convs, other slices).
# EfficientNet at depth 0.25 has one MBConv block per stage (7): 7 depthwise, 14
# squeeze-excite, 6 expand, 7 project and 1 top 1x1 convolutions. Xception has no
# width option; its 4 strided blocks each end in a 3x3 max-pool (written as 9 strided
# slices for ONNX) and subsample their shortcut with one more slice: 40 slices.
MODELS = {
    "mobilenet_v1": (
        lambda: models.MobileNetV1(num_classes=10, width_multiplier=0.25),
        32,
        13,
        13,
        1,
        0,
    ),
    "mobilenet_v2": (
        lambda: models.MobileNetV2(num_classes=10, width_multiplier=0.35),
        32,
        17,
        34,
        1,
        0,
    ),
    "efficientnet": (
        lambda: models.EfficientNet(num_classes=10, depth_coefficient=0.25),
        32,
        7,
        28,
        1,
        0,
    ),
    "xception": (lambda: models.Xception(num_classes=10), 64, 34, 34 + 4, 2, 40),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_runs_in_onnxruntime_equals_ours_and_has_grouped_depthwise(name, tmp_path):
    build, size, depthwise, pointwise, standard, slices = MODELS[name]
    model = build()
    x = jax.random.normal(jax.random.key(1), (1, size, size, 3))
    if name == "efficientnet":
        x = 127.5 + 60.0 * x  # its preprocessing expects [0, 255]
    variables = random_variables(model, x)
    with default_impl("xla"):
        want = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    path = to_onnx(model, variables, x, tmp_path / f"{name}.onnx")
    assert relative_error(run_onnx(path, x), want) <= REL

    graph = onnx.load(path)
    ops = op_counts(graph)
    # No chain of slices from the CPU kernel (9 per 3x3 layer), no batch norm left.
    assert ops.get("Slice", 0) == slices and "BatchNormalization" not in ops, ops
    assert ops.get("Sqrt", 0) == (1 if name == "efficientnet" else 0), ops  # preprocessing
    shapes = conv_weight_shapes(graph)
    groups = conv_groups(graph)
    assert len(shapes) == depthwise + pointwise + standard
    dw = [(g, s) for g, s in zip(groups, shapes, strict=True) if g > 1]
    assert len(dw) == depthwise
    # group = C: one input channel per group, the output channels a multiple of C.
    assert all(s[1] == 1 and s[0] == g for g, s in dw), dw
    # Our pointwise step: a Conv with a window of one (1-D, over flattened positions).
    pw = [s for g, s in zip(groups, shapes, strict=True) if g == 1 and np.prod(s[2:]) == 1]
    assert len(pw) == pointwise


def test_unfolded_batch_norm_also_matches(tmp_path):
    model = models.MobileNetV1(num_classes=10, width_multiplier=0.25)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = random_variables(model, x)
    path = to_onnx(model, variables, x, tmp_path / "m.onnx", fold_batch_norm=False)
    with default_impl("xla"):
        want = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert relative_error(run_onnx(path, x), want) <= REL
    # 27 batch norms, each normalizing with a square root of its variance.
    assert op_counts(path)["Sqrt"] == 27


LAYERS = [
    (
        "separable_stride2_multiplier2",
        lambda: sl.SeparableConv(features=6, kernel_size=(3, 3), strides=2, depth_multiplier=2),
        (2, 9, 9, 4),
    ),
    (
        "depthwise_dilated_reflect",
        lambda: sl.DepthwiseConv(kernel_size=(3, 3), kernel_dilation=2, padding_mode="reflect"),
        (1, 10, 10, 3),
    ),
    (
        "depthwise_1d_causal",
        lambda: sl.DepthwiseConv(kernel_size=(5,), padding="CAUSAL"),
        (2, 16, 4),
    ),
    (
        "separable_channels_first",
        lambda: sl.SeparableConv(features=5, kernel_size=(3, 3), data_format="channels_first"),
        (1, 3, 8, 8),
    ),
    ("pointwise", lambda: sl.PointwiseConv(features=7), (1, 5, 5, 3)),
]


@pytest.mark.parametrize("name,build,shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_layers(name, build, shape, tmp_path):
    layer = build()
    x = jax.random.normal(jax.random.key(3), shape)
    variables = layer.init(jax.random.key(4), x)
    path = to_onnx(layer, variables, x, tmp_path / f"{name}.onnx")
    assert relative_error(run_onnx(path, x), layer.apply(variables, x)) <= REL
    # Reflect padding is 4 slices (the mirrored borders), never the 9 taps of a 3x3 window.
    assert op_counts(path).get("Slice", 0) == (4 if "reflect" in name else 0)


class _NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.sep = sn.SeparableConv(3, 8, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.bn(self.sep(x)))


def test_nnx_layer_and_module(tmp_path):
    x = jax.random.normal(jax.random.key(5), (2, 8, 8, 3))
    layer = sn.SeparableConv(3, 4, (3, 3), strides=2, rngs=nnx.Rngs(0))
    path = to_onnx(layer, None, x, tmp_path / "layer.onnx")
    assert relative_error(run_onnx(path, x), layer(x)) <= REL
    assert sorted(conv_groups(path)) == [1, 3]
    block = _NNXBlock(nnx.Rngs(1))
    block.bn.mean[...] = jnp.linspace(-0.5, 0.5, 8)
    block.bn.var[...] = jnp.linspace(0.5, 2.0, 8)
    path = to_onnx(block, None, x, tmp_path / "block.onnx")
    block.eval()
    assert relative_error(run_onnx(path, x), block(x)) <= REL


def test_plain_function(tmp_path):
    kernel = jax.random.normal(jax.random.key(6), (3, 3, 1, 4))

    def fn(x):
        return jnp.tanh(depthwise_conv(x, kernel, strides=2))

    x = jax.random.normal(jax.random.key(7), (1, 7, 7, 4))
    path = to_onnx(fn, None, x, tmp_path / "fn.onnx")
    assert relative_error(run_onnx(path, x), fn(x)) <= REL
    assert conv_groups(path) == [4]


def test_rewrite_reaches_into_scan_and_jit():
    kernel = jax.random.normal(jax.random.key(8), (3, 3, 1, 4))

    @jax.jit
    def step(h, _):
        return depthwise_conv(h, kernel), None

    def fn(x):
        return jax.lax.scan(step, x, None, length=3)[0]

    x = jax.random.normal(jax.random.key(9), (1, 6, 6, 4))
    rewritten = _rewrite.reference_kernels(fn, x)
    jaxpr = jax.make_jaxpr(rewritten)(x)
    assert _rewrite.contains_depthwise(jax.make_jaxpr(fn)(x))
    assert not _rewrite.contains_depthwise(jaxpr)
    np.testing.assert_allclose(rewritten(x), fn(x), rtol=1e-5, atol=1e-5)


def test_rewrite_refuses_an_open_sub_jaxpr_it_cannot_rebuild():
    kernel = jnp.ones((3, 3, 1, 2))
    open_jaxpr = jax.make_jaxpr(lambda x: depthwise_conv(x, kernel))(jnp.ones((1, 4, 4, 2))).jaxpr
    assert any(e.primitive is kernel_op.forward_p for e in open_jaxpr.eqns)
    with pytest.raises(NotImplementedError, match="custom_thing"):
        _rewrite._rewrite_param(open_jaxpr, "custom_thing")


class _SharedOutput(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = sl.PointwiseConv(features=4, use_bias=False)(x)
        z = nn.BatchNorm(use_running_average=True)(y)
        return z + y  # the conv output has a second use: folding would change it


def test_batch_norm_with_a_shared_input_is_not_folded(tmp_path):
    module = _SharedOutput()
    x = jax.random.normal(jax.random.key(10), (1, 4, 4, 3))
    variables = trained_like(module.init(jax.random.key(11), x))
    found = _model.discover(module, variables, x)
    assert found.folds == {}
    assert "other uses" in next(iter(found.unfolded.values()))
    path = to_onnx(module, variables, x, tmp_path / "shared.onnx")
    assert relative_error(run_onnx(path, x), module.apply(variables, x)) <= REL


def test_folded_model_equals_unfolded_in_jax():
    model = models.MobileNetV1(num_classes=10, width_multiplier=0.25)
    x = jax.random.normal(jax.random.key(12), (2, 32, 32, 3))
    variables = random_variables(model, x)
    found = _model.discover(model, variables, x)
    assert len(found.folds) == 27 and not found.unfolded
    folded = _model.inference_function(model, variables, x, fold_batch_norm=True)
    with default_impl("xla"):
        got = jax.jit(folded)(x)
        want = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert relative_error(got, want) <= REL


@pytest.mark.parametrize(
    "module,variables,example,path,error,match",
    [
        (3, None, np.ones((1, 4)), "m.onnx", TypeError, "`module`"),
        (sl.PointwiseConv(features=2), [1], np.ones((1, 4)), "m.onnx", TypeError, "`variables`"),
        (sl.PointwiseConv(features=2), {"x": 1}, np.ones((1, 4)), "m.onnx", ValueError, "params"),
        (lambda x: x, None, np.ones((1, 4), np.int32), "m.onnx", TypeError, "floating"),
        (lambda x: x, None, "x", "m.onnx", TypeError, "`example_input`"),
        (lambda x: x, None, np.ones((1, 4)), "no/such/dir/m.onnx", ValueError, "does not exist"),
        (lambda x: x, {"params": {}}, np.ones((1, 4)), "m.onnx", TypeError, "variables=None"),
    ],
)
def test_errors(module, variables, example, path, error, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        to_onnx(module, variables, example, path)
