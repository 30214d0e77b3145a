"""int8 post-training quantization simulated in JAX, its QDQ ONNX export, and the
depthwise failure mode of per-tensor weight scales.

Expected values: closed forms for the quantizer, a float64 NumPy evaluation of the
quantized layer written from the scheme's definition (``tests/reference.py``
convolutions), and onnxruntime running the exported QDQ graph.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from sepconv_jax import linen as sl
from sepconv_jax import models
from sepconv_jax.export import _digits, fold_batch_norm, quantization, spread
from sepconv_jax.export.quantization import (
    activation_params,
    fake_quant,
    layer_sqnr_table,
    sqnr_by_kind,
    weight_scales,
)
from sepconv_jax.kernels.dispatch import default_impl
from sepconv_jax.models.blocks import InvertedResidual
from tests import reference


def quantize_np(x, scale, zero_point, qmin, qmax):
    """The definition: clip(round-half-even(x / scale) + z, qmin, qmax), then back."""
    q = np.clip(np.round(np.asarray(x, np.float64) / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def test_fake_quant_closed_form():
    x = jnp.array([-2.0, -0.26, 0.0, 0.25, 0.75, 1.0, 100.0])
    got = fake_quant(x, 0.5, np.uint8(4), axis=None, qmin=0, qmax=10)
    # round(x / 0.5): -4, -1 (-0.52), 0, 0 (0.5 rounds to even), 2 (1.5 to even), 2, 200
    # plus 4, clipped to [0, 10], minus 4, times 0.5.
    np.testing.assert_array_equal(got, [-2.0, -0.5, 0.0, 0.0, 1.0, 1.0, 3.0])


def test_fake_quant_per_channel_axis():
    w = np.random.default_rng(0).normal(size=(3, 3, 1, 5)).astype(np.float32)
    scale = weight_scales(w, per_channel=True)
    np.testing.assert_allclose(scale, np.abs(w).reshape(-1, 5).max(0) / 127, rtol=1e-6)
    got = fake_quant(jnp.asarray(w), scale, np.zeros(5, np.int8), axis=-1, qmin=-127, qmax=127)
    np.testing.assert_allclose(got, quantize_np(w, scale, 0, -127, 127), rtol=1e-6, atol=1e-7)
    # Each channel's largest magnitude is exact, and at most half a step is lost.
    assert np.all(np.abs(np.asarray(got) - w) <= scale / 2 * (1 + 1e-6))


def test_activation_params_hold_zero_exactly():
    for low, high in [(-1.0, 3.0), (0.0, 6.0), (0.5, 2.0), (-4.0, -1.0)]:
        scale, zero = activation_params(low, high)
        assert zero.dtype == np.uint8
        lo, hi = min(low, 0.0), max(high, 0.0)
        np.testing.assert_allclose(scale * 255, hi - lo, rtol=1e-6)
        assert quantize_np(0.0, scale, int(zero), 0, 255) == 0.0


def test_fold_batch_norm_equals_the_batch_norm_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 6, 3))
    kernel = rng.normal(size=(3, 3, 1, 6))  # depthwise, multiplier 2
    bias = rng.normal(size=6)
    mean, var = rng.normal(size=6), rng.uniform(0.1, 2.0, 6)
    gamma, beta, eps = rng.normal(size=6), rng.normal(size=6), 1e-3
    z = reference.depthwise_conv_nd(x, kernel, bias=bias)
    want = (z - mean) / np.sqrt(var + eps) * gamma + beta  # Keras: eps inside the sqrt
    k, b = fold_batch_norm(kernel, bias, mean=mean, var=var, scale=gamma, offset=beta, epsilon=eps)
    got = reference.depthwise_conv_nd(x, np.asarray(k), bias=np.asarray(b))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert k.dtype == np.float64 and b.dtype == np.float64
    with pytest.raises(ValueError, match="`mean` has shape"):
        fold_batch_norm(kernel, None, mean=mean[:3], var=var, epsilon=eps)


def test_quantized_separable_layer_equals_numpy_definition():
    layer = sl.SeparableConv(features=5, kernel_size=(3, 3), strides=2)
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    variables = layer.init(jax.random.key(1), x)
    variables = {"params": dict(variables["params"], bias=jnp.linspace(-0.3, 0.3, 5))}
    qmodel, qvars = quantization.quantize(layer, variables, [x])
    got = qmodel.apply(qvars, x)

    p, q = variables["params"], qvars["quantization"]["<root>"]
    xs = np.asarray(x, np.float64)

    def act(v, unit, stage):
        return quantize_np(
            v, float(unit[f"{stage}_scale"]), int(unit[f"{stage}_zero_point"]), 0, 255
        )

    u0, u1 = q["unit0"], q["unit1"]
    dk = quantize_np(p["depthwise_kernel"], u0["kernel_scale"], 0, -127, 127)
    pk = quantize_np(p["pointwise_kernel"], u1["kernel_scale"], 0, -127, 127)
    h = reference.depthwise_conv_nd(act(xs, u0, "input"), dk, strides=2)
    h = act(act(h, u0, "output"), u1, "input")
    y = act(reference.pointwise_conv_nd(h, pk, np.asarray(p["bias"])), u1, "output")
    # The float32 simulation may round a value on the other side of a step: allow one.
    step = float(u1["output_scale"])
    assert np.abs(np.asarray(got, np.float64) - y).max() <= step * (1 + 1e-6)
    assert np.mean(np.isclose(np.asarray(got), y, atol=1e-5)) > 0.98
    # Calibration: the ranges are the float tensors' own, with 0 inside.
    y_float = np.asarray(layer.apply(variables, x))
    np.testing.assert_allclose(
        float(u1["output_scale"]) * 255,
        max(y_float.max(), 0) - min(y_float.min(), 0),
        rtol=1e-5,
    )


class _GatedBlock(nn.Module):
    """A 1x1 convolution, swish, and a squeeze-excite-like gate over the spatial mean."""

    @nn.compact
    def __call__(self, x):
        h = sl.PointwiseConv(features=4)(x)
        a = nn.swish(h)
        m = jnp.mean(a, axis=(1, 2), keepdims=True)
        return a * nn.sigmoid(2.0 * m)


def test_quantized_gates_products_and_means_equal_numpy_definition():
    """Points on every gate, product with a gate and spatial mean (inputs not yet
    quantized, and outputs), calibrated on the float tensors there."""
    block = _GatedBlock()
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    variables = block.init(jax.random.key(1), x)
    qmodel, qvars = quantization.quantize(block, variables, [x])
    # The 1x1 step's output is quantized already; 2 * mean is not.
    assert qmodel.elementwise == ("gate", "product", "mean", "gate_input", "gate", "product")
    got = np.asarray(jax.jit(lambda x: qmodel.apply(qvars, x))(x), np.float64)

    p = variables["params"]["PointwiseConv_0"]
    q = qvars["quantization"]
    unit, points = q["PointwiseConv_0"]["unit0"], q["<elementwise>"]

    def fq(v, entry, prefix=""):
        return quantize_np(
            v, float(entry[f"{prefix}scale"]), int(entry[f"{prefix}zero_point"]), 0, 255
        )

    def sigmoid(v):
        return 1.0 / (1.0 + np.exp(-v))

    xs = np.asarray(x, np.float64)
    kernel = np.asarray(p["kernel"], np.float64)
    bias = np.asarray(p["bias"], np.float64)
    # Float: the calibration's tensors.
    h = xs @ kernel + bias
    a = h * sigmoid(h)
    m = a.mean(axis=(1, 2), keepdims=True)
    floats = [sigmoid(h), a, m, 2.0 * m, sigmoid(2.0 * m), a * sigmoid(2.0 * m)]
    for i, value in enumerate(floats):
        np.testing.assert_allclose(
            float(points[str(i)]["scale"]) * 255,
            max(value.max(), 0.0) - min(value.min(), 0.0),
            rtol=1e-5,
        )
    # Quantized: each point rounds what the quantized tensors before it compute.
    wq = quantize_np(kernel, unit["kernel_scale"], 0, -127, 127)
    hq = fq(fq(xs, unit, "input_") @ wq + bias, unit, "output_")
    sq = fq(sigmoid(hq), points["0"])
    aq = fq(hq * sq, points["1"])
    mq = fq(aq.mean(axis=(1, 2), keepdims=True), points["2"])
    gq = fq(sigmoid(fq(2.0 * mq, points["3"])), points["4"])
    want = fq(aq * gq, points["5"])
    step = float(points["5"]["scale"])
    assert np.abs(got - want).max() <= step * (1 + 1e-6)
    assert np.mean(np.isclose(got, want, atol=1e-6)) > 0.95
    # A call that meets other points than the calibration did is refused.
    with pytest.raises(ValueError, match="elementwise point 5 of this call is a 'product'"):
        dataclasses.replace(qmodel, elementwise=qmodel.elementwise[:5]).apply(qvars, x)
    # Without elementwise points only the layer is quantized.
    plain, plain_vars = quantization.quantize(block, variables, [x], elementwise=False)
    assert plain.elementwise == () and "<elementwise>" not in plain_vars["quantization"]
    ref = fq(fq(xs, unit, "input_") @ wq + bias, unit, "output_")
    a = ref * sigmoid(ref)
    want = a * sigmoid(2.0 * a.mean(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(plain.apply(plain_vars, x), want, rtol=1e-4, atol=1e-5)


def test_quantize_errors():
    layer = sl.PointwiseConv(features=2)
    x = jnp.ones((1, 2, 2, 3))
    variables = layer.init(jax.random.key(0), x)
    with pytest.raises(TypeError, match="`module`"):
        quantization.quantize(lambda x: x, None, [x])
    with pytest.raises(ValueError, match="`calibration_batches` is empty"):
        quantization.quantize(layer, variables, [])
    with pytest.raises(TypeError, match="`per_channel`"):
        quantization.quantize(layer, variables, [x], per_channel="yes")
    with pytest.raises(ValueError, match="`kinds`"):
        quantization.quantize(layer, variables, [x], kinds=("conv",))
    with pytest.raises(TypeError, match="`elementwise`"):
        quantization.quantize(layer, variables, [x], elementwise=1)


@pytest.fixture(scope="module")
def digits_net():
    """The separable digits network, trained for a few seconds, and its data."""
    x_train, y_train, x_test, y_test = _digits.digits()
    net = _digits.SeparableDigitsNet()
    with default_impl("xla"):  # compiles faster than the CPU default; same function
        variables = _digits.train(net, x_train, y_train, epochs=6)
    return net, variables, x_train, x_test, y_test


def _accuracy(model, variables, x, y):
    return quantization.accuracy(jax.jit(lambda x: model.apply(variables, x)), x, y)


def _trained_network_survives_int8(digits_net):
    net, variables, x_train, x_test, y_test = digits_net
    float_acc = quantization.accuracy(
        jax.jit(lambda x: net.apply(variables, x, train=False)), x_test, y_test
    )
    assert float_acc > 0.85
    for per_channel in (False, True):
        qmodel, qvars = quantization.quantize(
            net, variables, [x_train[:256]], per_channel=per_channel
        )
        assert _accuracy(qmodel, qvars, x_test, y_test) >= float_acc - 0.03


def _depthwise_spread_breaks_per_tensor_weights(digits_net):
    net, variables, x_train, x_test, y_test = digits_net
    spread_vars, fraction = spread.spread_depthwise_channels(
        net, variables, np.concatenate([x_train, x_test]), decades=3.0
    )
    assert fraction > 0.5
    # The float function is the same.
    f = jax.jit(lambda v, x: net.apply(v, x, train=False))
    want = np.asarray(f(variables, x_test))
    np.testing.assert_allclose(f(spread_vars, x_test), want, atol=1e-5 * np.abs(want).max())
    float_acc = quantization.accuracy(lambda x: f(variables, x), x_test, y_test)
    # Depthwise weights alone in int8: one scale per tensor loses the small channels,
    # one per channel keeps them (the construction moves no range elsewhere).
    accs = {}
    for per_channel in (False, True):
        qmodel, qvars = quantization.quantize(
            net,
            spread_vars,
            [x_train[:256]],
            per_channel=per_channel,
            kinds=("depthwise",),
            activations=False,
        )
        accs[per_channel] = _accuracy(qmodel, qvars, x_test, y_test)
    assert accs[True] >= float_acc - 0.02
    assert accs[False] < float_acc - 0.2
    rows = layer_sqnr_table(net, spread_vars, [x_train[:256]], [x_test[:128]])
    kinds = {r["kind"] for r in rows}
    assert kinds == {"standard", "depthwise", "pointwise", "dense"}
    for row in rows:
        if row["kind"] == "depthwise":
            assert row["weight_sqnr_per_channel"] > 35.0
            assert row["weight_sqnr_per_tensor"] < row["weight_sqnr_per_channel"] - 10.0
    summary = {r["kind"]: r for r in sqnr_by_kind(rows)}
    assert summary["depthwise"]["units"] == 2


def qdq_conv_units(path):
    """For each Conv of a QDQ graph: whether its inputs are DequantizeLinear nodes of
    a per-tensor uint8 activation, per-channel int8 weights (axis 0) and an int32
    bias, and its output goes to QuantizeLinear nodes only (after a ReLU6 Clip that
    the quantization's range contains)."""
    import onnx

    graph = onnx.load(path).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def axis(node):
        return next((onnx.helper.get_attribute_value(a) for a in node.attribute), None)

    units = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        x, w, b = (producers.get(i) for i in node.input)
        ok = all(d is not None and d.op_type == "DequantizeLinear" for d in (x, w, b))
        ok = ok and inits[x.input[2]].dtype == np.uint8 and inits[x.input[1]].size == 1
        ok = ok and inits[w.input[0]].dtype == np.int8 and axis(w) == 0
        ok = ok and inits[w.input[1]].size == inits[w.input[0]].shape[0]
        ok = ok and inits[b.input[0]].dtype == np.int32
        np.testing.assert_allclose(  # bias scale = x_scale * w_scale
            inits[b.input[1]], inits[x.input[1]] * inits[w.input[1]], rtol=1e-6
        )
        after = consumers[node.output[0]]
        if len(after) == 1 and after[0].op_type == "Clip":
            after = consumers[after[0].output[0]]
        ok = ok and all(n.op_type == "QuantizeLinear" for n in after)
        # One QuantizeLinear feeds each DequantizeLinear of the input.
        ok = ok and producers[x.input[0]].op_type == "QuantizeLinear"
        units.append(ok)
    return units


def optimized_ops(path, tmp_path):
    """onnxruntime's optimized graph (ORT_ENABLE_EXTENDED, saved) as op-type counts."""
    import onnxruntime as ort

    from sepconv_jax.export import op_counts

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return op_counts(tmp_path / "optimized.onnx")


def test_quantized_mobilenet_v2_runs_every_conv_as_qlinearconv(tmp_path):
    pytest.importorskip("onnxruntime")
    from sepconv_jax.export import conv_groups, op_counts, to_onnx
    from tests.export_helpers import random_variables

    model = models.MobileNetV2(num_classes=10, width_multiplier=0.35)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = random_variables(model, x[:1])
    qmodel, qvars = quantization.quantize(model, variables, [x])
    path = to_onnx(qmodel, qvars, x[:1], tmp_path / "q.onnx")
    units = qdq_conv_units(path)
    assert units and all(units), units
    convs = len(conv_groups(path))
    ops = optimized_ops(path, tmp_path)
    # Every Conv became an integer convolution; none is left in float.
    assert "Conv" not in ops and ops["QLinearConv"] == convs, ops
    # The residual additions run on integers too, as does the classifier.
    assert ops.get("QLinearAdd", 0) == op_counts(path)["Add"], ops
    assert "QGemm" in ops, ops


GATED_MODELS = {
    "efficientnet": lambda: models.EfficientNet(num_classes=10, depth_coefficient=0.25),
    "mobilenet_v3": lambda: models.MobileNetV3Small(num_classes=10),
}


@pytest.mark.parametrize("name", sorted(GATED_MODELS))
def test_quantized_gates_products_and_means_run_on_integers(name, tmp_path):
    """SiLU, hard swish and squeeze-excite in onnxruntime's integer kernels: every
    Sigmoid, every product of two activations and every GlobalAveragePool of the
    exported graph is a QLinear node after onnxruntime's optimization, so the NHWC
    layout needs no Transpose around float operations. The hard sigmoid has no
    integer kernel and runs in float between a DequantizeLinear and a
    QuantizeLinear, as in onnxruntime's own quantization of the standard export."""
    pytest.importorskip("onnxruntime")
    import onnx

    from sepconv_jax.export import conv_groups, op_counts, run_onnx, to_onnx
    from tests.export_helpers import random_variables, relative_error

    model = GATED_MODELS[name]()
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    if name == "efficientnet":
        x = 127.5 + 60.0 * x  # its preprocessing expects [0, 255]
    variables = random_variables(model, x[:1])
    qmodel, qvars = quantization.quantize(model, variables, [x])
    path = to_onnx(qmodel, qvars, x[:1], tmp_path / "q.onnx")
    graph = onnx.load(path).graph
    inits = {i.name for i in graph.initializer}
    products = sum(n.op_type == "Mul" and not inits & set(n.input) for n in graph.node)
    ops, optimized = op_counts(path), optimized_ops(path, tmp_path)
    assert ops["GlobalAveragePool"] > 0 and products > 0, ops
    assert "Conv" not in optimized and optimized["QLinearConv"] == len(conv_groups(path))
    assert "Sigmoid" not in optimized, optimized
    assert optimized.get("QLinearSigmoid", 0) == ops.get("Sigmoid", 0), optimized
    assert optimized["QLinearMul"] == products, optimized
    # What stays a float Mul is the preprocessing's scaling by a constant.
    assert optimized.get("Mul", 0) == ops["Mul"] - products, optimized
    assert "GlobalAveragePool" not in optimized, optimized
    assert optimized["QLinearGlobalAveragePool"] == ops["GlobalAveragePool"], optimized
    assert optimized.get("Transpose", 0) <= 2, optimized
    # Nothing else leaves the integers: the input, the output, the hard sigmoids.
    hard = optimized.get("HardSigmoid", 0)
    assert hard == ops.get("HardSigmoid", 0)
    assert optimized.get("DequantizeLinear", 0) <= 2 + hard, optimized
    # The graph computes what the simulation does, to about an output step.
    want = qmodel.apply(qvars, x[:1])
    assert relative_error(run_onnx(path, x[:1]), want) < 0.1


def _qdq_onnx_runs_in_onnxruntime(digits_net, tmp_path):
    from sepconv_jax.export import conv_groups, run_onnx, to_onnx
    from sepconv_jax.export.onnx import session

    net, variables, x_train, x_test, y_test = digits_net
    qmodel, qvars = quantization.quantize(net, variables, [x_train[:256]], per_channel=True)
    path = to_onnx(qmodel, qvars, x_test[:1], tmp_path / "q.onnx")
    units = qdq_conv_units(path)
    assert len(units) == len(conv_groups(path)) and all(units), units
    assert "Conv" not in optimized_ops(path, tmp_path)
    sess = session(path)
    got = np.concatenate([run_onnx(sess, x_test[i : i + 1]) for i in range(len(x_test))])
    want = np.asarray(qmodel.apply(qvars, x_test))
    # The graph quantizes a ReLU6 output once where the simulation rounds the layer's
    # output and then the ReLU6's: the two differ by about one output step, and
    # agree on almost every prediction.
    assert np.mean(got.argmax(-1) == want.argmax(-1)) > 0.97
    float_acc = quantization.accuracy(
        jax.jit(lambda x: net.apply(variables, x, train=False)), x_test, y_test
    )
    assert np.mean(got.argmax(-1) == y_test) >= float_acc - 0.01


def test_digits_network(digits_net, tmp_path):
    """One test, so that the network is trained once (not once per xdist worker)."""
    _trained_network_survives_int8(digits_net)
    _depthwise_spread_breaks_per_tensor_weights(digits_net)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return  # the QDQ export needs the export extra
    _qdq_onnx_runs_in_onnxruntime(digits_net, tmp_path)


class _GatedDigitsNet(nn.Module):
    """A stem and two MBConv blocks with swish and squeeze-excite (EfficientNet's)."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(8, (3, 3), use_bias=False, name="stem")(x)
        x = nn.swish(nn.BatchNorm(not train, epsilon=1e-3, name="stem_bn")(x))
        for i, strides in enumerate((2, 1)):
            block = InvertedResidual(
                features=16, expand_ratio=4, strides=strides, se_ratio=0.25, name=f"block{i}"
            )
            x = block(x, train)
        return nn.Dense(10, name="predictions")(jnp.mean(x, axis=(1, 2)))


def test_gated_digits_network_in_int8_stays_within_a_point(tmp_path):
    """Trained swish and squeeze-excite layers with their elementwise points: int8
    top-1 within one point of float, in the simulation and in onnxruntime."""
    x_train, y_train, x_test, y_test = _digits.digits()
    net = _GatedDigitsNet()
    with default_impl("xla"):
        variables = _digits.train(net, x_train, y_train, epochs=6)
    float_acc = quantization.accuracy(
        jax.jit(lambda x: net.apply(variables, x, train=False)), x_test, y_test
    )
    assert float_acc > 0.9
    qmodel, qvars = quantization.quantize(net, variables, [x_train[:256]])
    assert {"gate", "product", "mean"} <= set(qmodel.elementwise)
    assert _accuracy(qmodel, qvars, x_test, y_test) >= float_acc - 0.01
    pytest.importorskip("onnxruntime")
    from sepconv_jax.export import run_onnx, to_onnx
    from sepconv_jax.export.onnx import session

    sess = session(to_onnx(qmodel, qvars, x_test[:1], tmp_path / "q.onnx"))
    got = np.concatenate([run_onnx(sess, x_test[i : i + 1]) for i in range(len(x_test))])
    assert np.mean(got.argmax(-1) == y_test) >= float_acc - 0.01


def test_reduce_range_weights_run_exactly_in_onnxruntime(tmp_path):
    """7-bit weights: onnxruntime's integer kernels compute what its reference
    (unoptimized) evaluation of the same QDQ graph does, on every x86 CPU."""
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from sepconv_jax.export import to_onnx

    layer = sl.PointwiseConv(features=8)
    x = np.asarray(jax.random.normal(jax.random.key(0), (1, 8, 8, 4)), np.float32)
    variables = layer.init(jax.random.key(1), x)
    qmodel, qvars = quantization.quantize(layer, variables, [x], reduce_range=True)
    path = str(to_onnx(qmodel, qvars, x, tmp_path / "q.onnx"))
    weights = [
        onnx.numpy_helper.to_array(i)
        for i in onnx.load(path).graph.initializer
        if onnx.numpy_helper.to_array(i).dtype == np.int8
    ]
    assert weights and max(int(np.abs(w).max()) for w in weights) == 63
    outs = []
    for level in (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    ):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], qmodel.apply(qvars, x), rtol=0, atol=1e-6)
