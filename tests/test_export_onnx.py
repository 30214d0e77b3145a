"""ONNX export: our models and layers run in onnxruntime, equal our output, and have
the shape of the standard export.

The peer is onnxruntime's CPU implementation of the exported graph; the expected
value is our own JAX output with batch norm unfolded, so each comparison checks the
depthwise rewrite, the batch-norm folding and the jaxpr-to-ONNX emitter together.
The models' variables are drawn directly in NumPy with the shapes ``init`` would
give (``init`` itself compiles for half a minute per model), and our reference
output is computed with the ``"xla"`` kernel under ``jit`` (``tests/test_kernels.py``
shows the kernels agree). "Equal" is the issue's tolerance: the largest absolute
difference at most 1e-5 of the largest output magnitude.

The structure is checked against what the model is, not against counts written
here: the number of depthwise ``Conv`` nodes is the number of depthwise units the
tracing pass finds, every unit is one ``Conv`` or ``Gemm``, and each ``Conv``'s
group, bias input and consumers are read from the graph.
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

import onnx

from tests.export_helpers import REL, random_variables, relative_error, trained_like


def conv_weight_shapes(model):
    """The ONNX-layout ``(O, I, *window)`` shape of every Conv's weight (shape inference)."""
    return [s["weight"] for s in conv_facts(model)]


def _shapes(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    for info in [*graph.value_info, *graph.input, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = tuple(d.dim_value for d in dims)
    return shapes


def conv_facts(model):
    """For each Conv: weight shape, input shape, group, and its number of inputs."""
    shapes = _shapes(model)
    facts = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            group = 1
            for attr in node.attribute:
                if attr.name == "group":
                    group = int(onnx.helper.get_attribute_value(attr))
            facts.append(
                {
                    "weight": shapes[node.input[1]],
                    "input": shapes[node.input[0]],
                    "group": group,
                    "inputs": len(node.input),
                }
            )
    return facts


def assert_standard_shape(model, *, input_transposes=1, bias=True):
    """The graph the standard (PyTorch) export has: NCHW from the input on.

    At most ``input_transposes`` Transpose, reading the graph input (or writing
    its output); no MatMul, and no
    Reshape or Transpose next to a Conv; every Conv an initializer weight, a
    constant bias in input 3 (with ``bias``) and an NCHW input; depthwise Convs with group = C; every
    Clip with constant bounds, fed by a Conv that feeds nothing else.
    """
    graph = model.graph
    ops = op_counts(model)
    inits = {i.name for i in graph.initializer}
    sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    transposes = [n for n in graph.node if n.op_type == "Transpose"]
    assert len(transposes) <= input_transposes, ops
    ends = (graph.input[0].name, graph.output[0].name)
    assert all(t.input[0] in ends or t.output[0] in ends for t in transposes), ops
    assert "MatMul" not in ops and "Einsum" not in ops and "BatchNormalization" not in ops, ops
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        assert node.input[1] in inits
        if bias:
            assert len(node.input) == 3 and node.input[2] in inits, node
        # A bias is never a separate Add of a constant after the Conv.
        for user in consumers.get(node.output[0], []):
            vectors = [i for i in user.input if i in sizes and sizes[i] > 1]
            assert user.op_type != "Add" or not vectors, user
        before = producers.get(node.input[0])
        assert (
            before is None
            or before.op_type not in ("Reshape", "Transpose")
            or (before.input[0] == graph.input[0].name)
        ), before
        after = consumers.get(node.output[0], [])
        after = [n for n in after if graph.output[0].name not in n.output]  # to channels-last
        assert all(n.op_type not in ("Reshape", "Transpose", "MatMul") for n in after), after
    for node in graph.node:
        if node.op_type == "Clip":
            assert node.input[1] in inits and node.input[2] in inits
            source = producers[node.input[0]]
            if source.op_type == "Add" and any(sizes.get(i) == 1 for i in source.input):
                continue  # a hard sigmoid's clip(x + 3, 0, 6) (MobileNetV3)
            assert source.op_type == "Conv", source.op_type
            assert len(consumers[node.input[0]]) == 1
    for fact in conv_facts(model):
        assert len(fact["input"]) == len(fact["weight"])  # NCHW input, OIHW weight
        if fact["group"] > 1:  # group = C: one input channel per group
            assert fact["weight"][1] == 1 and fact["group"] == fact["input"][1], fact


def assert_pooled_head(model):
    """The classifier: GlobalAveragePool -> Flatten, then only dense steps (Gemm and
    elementwise ops: ConvNeXt's head norm, MobileNetV3's hidden layer) to a Gemm."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    node = producers[graph.output[0].name]
    assert node.op_type == "Gemm" and len(node.input) == 3, node
    while node.op_type != "Flatten":
        assert node.op_type not in ("Conv", "Reshape", "Transpose", "MatMul"), node
        node = producers[node.input[0]]
    assert producers[node.input[0]].op_type == "GlobalAveragePool"


def units_of(model, variables, x):
    """The depthwise units and all units the tracing pass finds in ``model``."""
    layers = _model.discover(model, variables, x).layers
    kinds = [u.kind for info in layers for u in info.units for _ in range(info.calls)]
    return kinds.count("depthwise"), len(kinds)


# (model, input shape, ReLU6 network, classifier head). One per family, small.
MODELS = {
    "mobilenet_v1": (
        lambda: models.MobileNetV1(num_classes=10, width_multiplier=0.25),
        (1, 32, 32, 3),
    ),
    "mobilenet_v2": (
        lambda: models.MobileNetV2(num_classes=10, width_multiplier=0.35),
        (1, 32, 32, 3),
    ),
    "mobilenet_v3": (lambda: models.MobileNetV3Small(num_classes=10), (1, 32, 32, 3)),
    "efficientnet": (
        lambda: models.EfficientNet(num_classes=10, depth_coefficient=0.25),
        (1, 32, 32, 3),
    ),
    "xception": (lambda: models.Xception(num_classes=10), (1, 64, 64, 3)),
    "convnext": (lambda: models.ConvNeXtTiny(num_classes=10), (1, 32, 32, 3)),
    "matchboxnet": (
        lambda: models.MatchboxNet(blocks=3, repeat=2, channels=16, num_classes=5),
        (1, 32, 64),
    ),
    "quartznet": (lambda: models.QuartzNet(blocks=5, repeat=1, num_classes=5), (1, 32, 64)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_runs_in_onnxruntime_equals_ours_and_has_the_standard_shape(name, tmp_path):
    build, shape = MODELS[name]
    model = build()
    x = jax.random.normal(jax.random.key(1), shape)
    if name == "efficientnet":
        x = 127.5 + 60.0 * x  # its preprocessing expects [0, 255]
    variables = random_variables(model, x)
    with default_impl("xla"):
        want = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    path = to_onnx(model, variables, x, tmp_path / f"{name}.onnx")
    assert relative_error(run_onnx(path, x), want) <= REL

    graph = onnx.load(path)
    ops = op_counts(graph)
    # A per-frame output (QuartzNet's) goes back to channels-last: one more Transpose.
    # The depthwise steps of Xception and the speech models have no bias (the batch
    # norm follows the pointwise step), so only the others have one in every Conv.
    bias = name not in ("matchboxnet", "quartznet", "xception")
    assert_standard_shape(graph, input_transposes=1 if want.ndim == 2 else 2, bias=bias)
    depthwise, units = units_of(model, variables, x)
    groups = conv_groups(graph)
    assert sum(g > 1 for g in groups) == depthwise > 0
    assert len(groups) + ops.get("Gemm", 0) == units, ops
    # No chain of slices from the CPU kernel (9 per 3x3 layer): Xception's four
    # strided shortcuts are its only slices, its max pools MaxPool nodes.
    assert ops.get("Slice", 0) == (4 if name == "xception" else 0), ops
    assert ops.get("MaxPool", 0) == (4 if name == "xception" else 0), ops
    if want.ndim == 2:
        assert_pooled_head(graph)
    # No Reshape anywhere (squeeze-excite blocks pool straight into their 1x1 Convs);
    # ConvNeXt's layer norms put back the channel axis they reduce.
    assert name == "convnext" or "Reshape" not in ops, ops
    if name == "mobilenet_v3":  # its activations as the standard export writes them
        assert ops["HardSwish"] > 0 and ops["HardSigmoid"] > 0 and "Div" not in ops, ops
    if name in ("mobilenet_v1", "mobilenet_v2"):  # ReLU6: Clip(0, 6), after a Conv
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.graph.initializer}
        clips = [n for n in graph.graph.node if n.op_type == "Clip"]
        assert len(clips) >= sum(g > 1 for g in groups), ops
        assert all((inits[c.input[1]], inits[c.input[2]]) == (0.0, 6.0) for c in clips)


def test_nchw_layout_has_no_transpose(tmp_path):
    model = models.MobileNetV2(num_classes=10, width_multiplier=0.35)
    x = jax.random.normal(jax.random.key(2), (1, 32, 32, 3))
    variables = random_variables(model, x)
    path = to_onnx(model, variables, x, tmp_path / "nchw.onnx", layout="NCHW")
    graph = onnx.load(path)
    assert_standard_shape(graph, input_transposes=0)
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
    with default_impl("xla"):
        want = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert relative_error(run_onnx(path, np.transpose(x, (0, 3, 1, 2))), want) <= REL


def test_unfolded_batch_norm_also_matches(tmp_path):
    model = models.MobileNetV1(num_classes=10, width_multiplier=0.25)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = random_variables(model, x)
    path = to_onnx(model, variables, x, tmp_path / "m.onnx", fold_batch_norm=False)
    with default_impl("xla"):
        want = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert relative_error(run_onnx(path, x), want) <= REL
    # 27 batch norms left in the graph, each as its elementwise steps on constants
    # (their square roots computed while exporting).
    ops = op_counts(path)
    assert "Sqrt" not in ops and ops["Conv"] == 27 and ops["Mul"] >= 27, ops


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
    want = layer.apply(variables, x)
    path = to_onnx(layer, variables, x, tmp_path / f"{name}.onnx")
    assert relative_error(run_onnx(path, x), want) <= REL
    # Reflect padding is 8 slices (each mirrored border cut, then reversed), never the
    # 9 taps of a 3x3 window.
    assert op_counts(path).get("Slice", 0) == (8 if "reflect" in name else 0)
    if "channels_first" in name:  # already NCHW: nothing to transpose
        assert "Transpose" not in op_counts(path)
        return
    # Given and returned as NCHW, a layer has no Transpose at all.
    nchw = to_onnx(layer, variables, x, tmp_path / f"{name}_nchw.onnx", layout="NCHW")
    graph = onnx.load(nchw)
    assert "Transpose" not in op_counts(graph)
    if "reflect" not in name:
        assert_standard_shape(graph, input_transposes=0, bias=False)
    move = (0, len(shape) - 1, *range(1, len(shape) - 1))
    got = run_onnx(nchw, np.transpose(x, move))
    assert relative_error(got, np.transpose(want, move)) <= REL


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
        (jnp.cumsum, None, np.ones((1, 4)), "m.onnx", NotImplementedError, "`cumsum`"),
    ],
)
def test_errors(module, variables, example, path, error, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        to_onnx(module, variables, example, path)


def test_bad_layout(tmp_path):
    layer = sl.PointwiseConv(features=2)
    x = np.ones((1, 3, 3, 4), np.float32)
    variables = layer.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="`layout`"):
        to_onnx(layer, variables, x, tmp_path / "m.onnx", layout="NHCW")
    with pytest.raises(ValueError, match="rank 3 or more"):
        to_onnx(lambda v: v * 2.0, None, np.ones((2, 4)), tmp_path / "m.onnx", layout="NCHW")


def test_export_prints_nothing(tmp_path):
    """Exporting writes no warning or traceback (no third-party converter is imported)."""
    import subprocess
    import sys

    script = (
        "import jax, jax.numpy as jnp, sys\n"
        "from sepconv_jax.linen import SeparableConv\n"
        "from sepconv_jax.export import to_onnx\n"
        "layer = SeparableConv(features=4, kernel_size=(3, 3))\n"
        "x = jnp.ones((1, 6, 6, 3))\n"
        f"to_onnx(layer, layer.init(jax.random.key(0), x), x, {str(tmp_path / 'm.onnx')!r})\n"
        "print('jax2onnx' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False" and "Traceback" not in out.stderr, out.stderr
