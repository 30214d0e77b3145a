"""int8 post-training quantization, simulated in JAX (fake quantization).

:func:`quantize` takes a trained linen model and a few calibration batches and
returns a model that computes what an int8 runtime computes, in float arithmetic:

* batch norms are folded into the convolution before them first
  (:mod:`sepconv_jax.export.fold`), as a deployed model has them;
* **weights**: symmetric int8 in ``[-127, 127]``, ``scale = max|W| / 127``, one
  scale per output channel (``per_channel=True``) or one per tensor;
* **activations**: the input and the output of every convolution and dense layer
  (for a separable convolution also the tensor between its two steps) are
  asymmetric 8-bit, one scale and zero point per tensor, from
  the minimum and maximum seen on the calibration batches (widened to contain 0,
  so that zero padding and ReLU zeros are exact). They are stored as ``uint8`` in
  ``[0, 255]`` with the zero point, the activation type onnxruntime recommends on
  x86 (its "U8S8" kernels); an ``int8`` zero point in ``[-128, 127]`` holds the same
  256 levels, and onnxruntime 1.32 rejects that form when it propagates QDQ
  nodes through transposes;
* **between the layers** (``elementwise=True``): the inputs and outputs of the
  gates (sigmoid, hard sigmoid), of the products of an activation with a gate
  (SiLU, hard swish, squeeze-and-excitation) and of the spatial means, the same
  asymmetric 8-bit kind (:mod:`sepconv_jax.export._elementwise`), so that
  onnxruntime runs them on integers too;
* biases, additions and the other activations and pooling stay in float, as a QDQ
  graph leaves them to the runtime.

Quantizing is ``q = clip(round(x / scale) + zero_point, qmin, qmax)``, with
round-half-to-even as ONNX ``QuantizeLinear``; dequantizing is ``(q - zero_point)
* scale``. The returned :class:`QuantizedModel` carries one :data:`fake_quant_p`
per quantized tensor, which the ONNX exporter writes as a ``QuantizeLinear`` /
``DequantizeLinear`` pair (a QDQ model that onnxruntime runs with integer kernels).

The depthwise failure mode: a depthwise kernel has one filter per channel, and
after batch-norm folding the channels' ranges differ by orders of magnitude in
trained MobileNets. One scale per tensor is set by the largest channel and rounds
the others to a few levels or to zero. Krishnamoorthi (2018), "Quantizing deep
convolutional networks for efficient inference: A whitepaper", Table 2: MobileNet
v1 1.0 224 reaches top-1 0.001 with per-layer (per-tensor) 8-bit weights, 0.704
with per-channel weights and 0.709 in float; MobileNet v2 1.0 224 0.001, 0.698 and
0.719. Sheng et al. (2018), "A Quantization-Friendly Separable Convolution for
MobileNets", trace it to the folded depthwise weights.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore
from jax.interpreters import ad, batching, mlir

from sepconv_jax.export import _apply, _elementwise, _layers, _model

__all__ = [
    "QuantizedModel",
    "accuracy",
    "fake_quant",
    "fake_quant_p",
    "layer_sqnr_table",
    "quantize",
    "sqnr_by_kind",
    "weight_scales",
]

Path = tuple[str, ...]

WEIGHT_RANGE = (-127, 127)
#: The weight range with ``reduce_range=True``: 7 bits, as onnxruntime's option of that name.
REDUCED_WEIGHT_RANGE = (-63, 63)
ACTIVATION_RANGE = (0, 255)
#: The key of the elementwise points in the ``"quantization"`` collection (no layer
#: path can be it).
ELEMENTWISE = "<elementwise>"

# ----------------------------------------------------------------------------- fake quant

#: ``fake_quant(x, scale, zero_point; axis, qmin, qmax)``: quantize then dequantize.
fake_quant_p = jcore.Primitive("sepconv_fake_quant")


def _fake_quant_impl(x, scale, zero_point, *, axis, qmin, qmax):
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero_point = zero_point.reshape(shape)
    zp = zero_point.astype(x.dtype)
    q = jnp.clip(jnp.round(x / scale) + zp, qmin, qmax)
    return ((q - zp) * scale).astype(x.dtype)


fake_quant_p.def_impl(
    functools.partial(jax.jit, static_argnames=("axis", "qmin", "qmax"))(_fake_quant_impl)
)
fake_quant_p.def_abstract_eval(lambda x, scale, zero_point, **_: x.update(weak_type=False))
mlir.register_lowering(fake_quant_p, mlir.lower_fun(_fake_quant_impl, multiple_results=False))


def _fake_quant_jvp(primals, tangents, **params):
    # The straight-through estimator: the tangent passes where x is inside the range.
    x, scale, zero_point = primals
    dx = tangents[0]
    y = fake_quant_p.bind(x, scale, zero_point, **params)
    dx = ad.instantiate_zeros(dx)
    return y, dx


ad.primitive_jvps[fake_quant_p] = _fake_quant_jvp


def _fake_quant_batch(args, dims, **params):
    x, scale, zero_point = args
    if dims[1] is not None or dims[2] is not None:  # pragma: no cover - scales are constants
        raise NotImplementedError("fake_quant: batching over the scale is not supported")
    x = jnp.moveaxis(x, dims[0], 0)
    axis = params["axis"]
    params = dict(params, axis=None if axis is None else axis + 1)
    return fake_quant_p.bind(x, scale, zero_point, **params), 0


batching.primitive_batchers[fake_quant_p] = _fake_quant_batch


def fake_quant(
    x: jax.Array,
    scale: Any,
    zero_point: Any,
    *,
    axis: int | None,
    qmin: int,
    qmax: int,
) -> jax.Array:
    """Quantizes ``x`` to integers in ``[qmin, qmax]`` and back.

    Args:
      x: a float array.
      scale: a scalar, or one value per slice along ``axis``.
      zero_point: int8 or uint8 values of the same shape as ``scale``.
      axis: the axis ``scale`` runs along, or ``None`` for one scale.
      qmin, qmax: the integer range (``-127, 127`` for int8 weights, ``0, 255``
        for uint8 activations).

    Returns:
      ``(clip(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale``.

    Example:
      >>> import jax.numpy as jnp
      >>> fake_quant(jnp.array([0.26, -1.0, 9.0]), jnp.float32(0.5), jnp.int8(0),
      ...     axis=None, qmin=-127, qmax=127).tolist()
      [0.5, -1.0, 9.0]
    """
    scale = jnp.asarray(scale, x.dtype)
    zero_point = jnp.asarray(zero_point)
    if zero_point.dtype not in (jnp.int8, jnp.uint8):
        raise TypeError(f"`zero_point` must be int8 or uint8, got {zero_point.dtype}")
    if axis is not None:
        axis = axis % x.ndim
    return fake_quant_p.bind(x, scale, zero_point, axis=axis, qmin=int(qmin), qmax=int(qmax))


# ----------------------------------------------------------------------------- scales


def weight_scales(kernel: Any, *, per_channel: bool, qmax: int = WEIGHT_RANGE[1]) -> np.ndarray:
    """Symmetric int8 scales of a kernel with output channels last.

    ``max|W| / 127`` over each output channel (shape ``(C_out,)``) or the whole
    tensor (a scalar). An all-zero channel gets scale 1 (its values stay 0).

    Example:
      >>> import numpy as np
      >>> w = np.array([[1.27, -0.254], [0.0, 0.127]])
      >>> [round(float(s), 6) for s in weight_scales(w, per_channel=True)]
      [0.01, 0.002]
      >>> round(float(weight_scales(w, per_channel=False)), 6)
      0.01
    """
    w = np.abs(np.asarray(kernel, np.float64))
    if per_channel:
        peak = w.reshape(-1, w.shape[-1]).max(axis=0)
    else:
        peak = np.asarray(w.max())
    scale = peak / qmax
    return np.where(scale > 0, scale, 1.0).astype(np.float32)


def activation_params(low: float, high: float) -> tuple[np.float32, np.uint8]:
    """Asymmetric 8-bit scale and uint8 zero point for ``[low, high]`` (0 included).

    Example:
      >>> scale, zero_point = activation_params(-1.0, 3.0)
      >>> round(float(scale) * 255, 6), int(zero_point)
      (4.0, 64)
    """
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    qmin, qmax = ACTIVATION_RANGE
    scale = (high - low) / (qmax - qmin)
    if scale == 0.0:
        return np.float32(1.0), np.uint8(0)
    zero_point = int(np.clip(round(qmin - low / scale), qmin, qmax))
    return np.float32(scale), np.uint8(zero_point)


# ----------------------------------------------------------------------------- the model


def _key(path: Path) -> str:
    return "/".join(path) if path else "<root>"


@dataclasses.dataclass(frozen=True)
class QuantizedModel(_apply.InferenceModel):
    """A linen model with folded batch norms and fake-quantized layers.

    Used like a linen model: ``qmodel.apply(qvariables, x)`` (inference only).
    ``qvariables`` holds the model's variables with folded kernels and biases, and
    a ``"quantization"`` collection of scales and zero points per layer and unit.

    Attributes:
      model: the float model.
      layers: the paths of the quantized layers.
      folded: the paths of the batch norms folded away (identities here).
      per_channel: one weight scale per output channel, or one per tensor.
      kinds: the unit kinds whose weights are quantized.
      activations: whether activations are quantized.
      weight_range: the integer range of the weights.
      elementwise: the kinds of the elementwise points
        (:data:`sepconv_jax.export._elementwise.KINDS`), in the order the model
        computes them; their scales and zero points are
        ``qvariables["quantization"]["<elementwise>"][str(index)]``.
    """

    model: nn.Module
    layers: tuple[Path, ...]
    folded: tuple[Path, ...]
    per_channel: bool
    kinds: tuple[str, ...] = _layers.KINDS
    activations: bool = True
    weight_range: tuple[int, int] = WEIGHT_RANGE
    elementwise: tuple[str, ...] = ()

    def apply(self, variables: Mapping[str, Any], x: Any, train: bool = False) -> jax.Array:
        """Runs the quantized model in inference mode (``train`` must be False)."""
        if train:
            raise ValueError("a QuantizedModel runs in inference mode only; pass train=False")
        return self._function(variables, record=False)(x)

    def _function(self, variables: Mapping[str, Any], record: bool):
        """``x -> y``, or with ``record`` ``x -> (y, {(path, unit): output})``."""
        q = variables["quantization"]
        inner = {k: v for k, v in variables.items() if k != "quantization"}
        params = {path: dict(_apply.subtree(inner["params"], path)) for path in self.layers}
        per_channel, kinds, activations = self.per_channel, self.kinds, self.activations
        weight_range = self.weight_range
        outputs: dict[tuple[Path, int], jax.Array] = {}

        def hooks(path: Path, module: nn.Module):
            if path not in params:
                return None
            qp = q[_key(path)]
            units = _layers.layer_units(module, params[path]) or ()

            def hook(stage: str, i: int, value: jax.Array) -> jax.Array:
                unit = qp[f"unit{i}"]
                if stage == "kernel":
                    if units[i].kind not in kinds:
                        return value
                    scale = unit["kernel_scale"]
                    return fake_quant(
                        value,
                        scale,
                        jnp.zeros(scale.shape, jnp.int8),
                        axis=-1 if per_channel else None,
                        qmin=weight_range[0],
                        qmax=weight_range[1],
                    )
                if not activations:
                    if stage == "output":
                        outputs[(path, i)] = value
                    return value
                out = _quantize_activation(
                    value, unit[f"{stage}_scale"], unit[f"{stage}_zero_point"]
                )
                if stage == "output":
                    outputs[(path, i)] = out
                return out

            return hook

        call = _apply.linen_call(self.model, inner)
        rewrite = _apply.Rewrite(params, set(self.folded), hooks)

        def layers_only(x):
            outputs.clear()
            with nn.intercept_methods(rewrite):
                y = call(x)
            return (y, dict(outputs)) if record else y

        if not self.elementwise:
            return layers_only
        points = q[ELEMENTWISE]

        def point(index: int, kind: str, value: jax.Array) -> jax.Array:
            if index >= len(self.elementwise) or kind != self.elementwise[index]:
                raise ValueError(
                    f"elementwise point {index} of this call is a {kind!r}, not what the "
                    f"model was calibrated with ({len(self.elementwise)} points); quantize "
                    f"it again with inputs of this kind"
                )
            entry = points[str(index)]
            return _quantize_activation(value, entry["scale"], entry["zero_point"])

        def run(x):
            y, count = _elementwise.run(layers_only, x, point, _is_fake_quant)
            if count != len(self.elementwise):
                raise ValueError(
                    f"this call has {count} elementwise points, the model was calibrated with "
                    f"{len(self.elementwise)}; quantize it again with inputs of this kind"
                )
            return y

        return run


def _quantize_activation(value: jax.Array, scale: Any, zero_point: Any) -> jax.Array:
    """An activation's fake quantization: per tensor, uint8 (:data:`ACTIVATION_RANGE`)."""
    return fake_quant(
        value, scale, zero_point, axis=None, qmin=ACTIVATION_RANGE[0], qmax=ACTIVATION_RANGE[1]
    )


def _is_fake_quant(eqn: jcore.JaxprEqn) -> bool:
    return eqn.primitive is fake_quant_p


def _batches(calibration_batches: Any) -> list[jax.Array]:
    if isinstance(calibration_batches, jax.Array | np.ndarray):
        batches = [calibration_batches]
    elif isinstance(calibration_batches, Iterable):
        batches = list(calibration_batches)
    else:
        raise TypeError(
            f"`calibration_batches` must be an array or an iterable of arrays (model inputs), "
            f"got {type(calibration_batches).__name__}"
        )
    if not batches:
        raise ValueError("`calibration_batches` is empty; pass at least one batch of inputs")
    return [jnp.asarray(b) for b in batches]


def _float_recorder(module, variables, discovery, example, elementwise: bool, kinds: list[str]):
    """A jitted ``x -> (y, {name: value})`` over the folded float model: every layer
    unit's input and output (``"path|stage|unit"``) and, with ``elementwise``, every
    elementwise point (``"<elementwise>|index"``, their kinds appended to ``kinds``
    when traced)."""
    layer_paths = {info.path for info in discovery.layers}

    def layers(x):
        record: dict[tuple[Path, str, int], jax.Array] = {}

        def hooks(path, layer):
            if path not in layer_paths:
                return None

            def hook(stage, i, value):
                if stage == "kernel":
                    return value
                record[(path, stage, i)] = value
                # Marks the value as one the quantized model quantizes here.
                return _model._tag(value, (_QUANTIZED, path)) if elementwise else value

            return hook

        fn = _model.inference_function(module, variables, example, hooks=hooks, discovery=discovery)
        y = fn(x)
        return y, {"|".join((_key(p), s, str(i))): v for (p, s, i), v in record.items()}

    def run(x):
        if not elementwise:
            return layers(x)
        points: dict[str, jax.Array] = {}
        kinds.clear()

        def point(index: int, kind: str, value: jax.Array) -> jax.Array:
            kinds.append(kind)
            points[f"{ELEMENTWISE}|{index}"] = value
            return value

        (y, values), _ = _elementwise.run(layers, x, point, _is_quantized_tag)
        return y, {**values, **points}

    return jax.jit(run)


_QUANTIZED = "quantized"


def _is_quantized_tag(eqn: jcore.JaxprEqn) -> bool:
    return eqn.primitive is _model._tag_p and eqn.params["tag"][0] == _QUANTIZED


def quantize(
    module: nn.Module,
    variables: Mapping[str, Any],
    calibration_batches: Any,
    *,
    per_channel: bool = True,
    kinds: tuple[str, ...] = _layers.KINDS,
    activations: bool = True,
    reduce_range: bool = False,
    elementwise: bool = True,
) -> tuple[QuantizedModel, dict[str, Any]]:
    """Post-training int8 quantization of a linen model, simulated in JAX.

    Args:
      module: a linen model (or layer); models are called with ``train=False``.
      variables: its variables.
      calibration_batches: an array, or an iterable of arrays, of model inputs; the
        activation ranges are their minimum and maximum.
      per_channel: one weight scale per output channel (True) or per tensor.
      kinds: the kinds of unit whose weights are quantized (all by default); with
        ``("depthwise",)`` only depthwise kernels are, which isolates their failure
        mode.
      activations: quantize activations (True) or leave them in float.
      reduce_range: weights in 7 bits, ``[-63, 63]`` (onnxruntime's option of that
        name). On x86 CPUs without VNNI, onnxruntime's uint8 x int8 kernels add pairs
        of products in 16 bits, which saturate when both weights of a pair are near
        +-127 and the activations near 255; 7-bit weights cannot overflow there.
      elementwise: with ``activations``, also quantize the inputs and outputs of the
        gates, gated products and spatial means between the layers
        (:mod:`sepconv_jax.export._elementwise`), so that onnxruntime runs them on
        integers (``QLinearSigmoid``, ``QLinearMul``, ``QLinearGlobalAveragePool``);
        ``False`` leaves them in float.

    Returns:
      ``(qmodel, qvariables)``: run with ``qmodel.apply(qvariables, x)``; export with
      :func:`sepconv_jax.export.to_onnx` (a QDQ model).

    Raises:
      TypeError, ValueError: for a module that is not linen, bad variables or
        empty calibration data.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.linen import SeparableConv
      >>> layer = SeparableConv(features=4, kernel_size=(3, 3))
      >>> x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
      >>> variables = layer.init(jax.random.key(1), x)
      >>> qmodel, qvariables = quantize(layer, variables, [x])
      >>> sorted(qvariables["quantization"]["<root>"])
      ['unit0', 'unit1']
      >>> y, yq = layer.apply(variables, x), qmodel.apply(qvariables, x)
      >>> bool(jnp.abs(y - yq).max() < 0.05 * jnp.abs(y).max())
      True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"`module` must be a flax.linen Module (quantize simulates int8 in linen models), "
            f"got {type(module).__name__}"
        )
    _model.kind_of_model(module, variables)
    flags = {"per_channel": per_channel, "activations": activations}
    flags |= {"reduce_range": reduce_range, "elementwise": elementwise}
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be a bool, got {type(flag).__name__}")
    elementwise = elementwise and activations
    weight_range = REDUCED_WEIGHT_RANGE if reduce_range else WEIGHT_RANGE
    if isinstance(kinds, str) or not all(k in _layers.KINDS for k in kinds):
        raise ValueError(f"`kinds` must be a tuple of names from {_layers.KINDS}, got {kinds!r}")
    batches = _batches(calibration_batches)
    example = jax.ShapeDtypeStruct(batches[0].shape, batches[0].dtype)
    discovery = _model.discover(module, variables, example)
    point_kinds: list[str] = []
    recorder = _float_recorder(module, variables, discovery, example, elementwise, point_kinds)
    low, high = _ranges(recorder, batches)
    params, quant = _quantization_tree(
        variables, discovery, low, high, per_channel=per_channel, qmax=weight_range[1]
    )
    if point_kinds:
        quant[ELEMENTWISE] = {}
        for i in range(len(point_kinds)):
            name = f"{ELEMENTWISE}|{i}"
            scale, zero_point = activation_params(low[name], high[name])
            quant[ELEMENTWISE][str(i)] = {"scale": scale, "zero_point": zero_point}
    qvariables = dict(variables, params=params, quantization=quant)
    qmodel = QuantizedModel(
        model=module,
        layers=tuple(info.path for info in discovery.layers),
        folded=tuple(discovery.folds.values()),
        per_channel=per_channel,
        kinds=tuple(kinds),
        activations=activations,
        weight_range=weight_range,
        elementwise=tuple(point_kinds),
    )
    return qmodel, qvariables


def _ranges(recorder: Any, batches: list[jax.Array]) -> tuple[dict[str, float], dict[str, float]]:
    """The minimum and maximum of each recorded value over the calibration batches."""
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    for batch in batches:
        _, values = recorder(batch)
        for name, value in values.items():
            low[name] = min(low.get(name, math.inf), float(jnp.min(value)))
            high[name] = max(high.get(name, -math.inf), float(jnp.max(value)))
    return low, high


def _quantization_tree(
    variables: Mapping[str, Any],
    discovery: _model.Discovery,
    low: Mapping[str, float],
    high: Mapping[str, float],
    *,
    per_channel: bool,
    qmax: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The folded parameters, and per layer and unit its weight scales and the scale
    and zero point of its calibrated input and output ranges."""
    folded = _model.folded_parameters(variables, discovery)
    params = _unfreeze(jax.tree.map(lambda a: a, dict(variables["params"])))
    quant: dict[str, Any] = {}
    for info in discovery.layers:
        layer_params = folded.get(info.path, dict(_apply.subtree(variables["params"], info.path)))
        _set_subtree(params, info.path, dict(layer_params))
        units = {}
        for i, unit in enumerate(info.units):
            entry: dict[str, Any] = {
                "kernel_scale": weight_scales(
                    layer_params[unit.kernel], per_channel=per_channel, qmax=qmax
                )
            }
            for stage in ("input", "output"):
                name = "|".join((_key(info.path), stage, str(i)))
                scale, zero_point = activation_params(low[name], high[name])
                entry[f"{stage}_scale"] = scale
                entry[f"{stage}_zero_point"] = zero_point
            units[f"unit{i}"] = entry
        quant[_key(info.path)] = units
    return params, quant


def _unfreeze(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _unfreeze(v) for k, v in tree.items()}
    return tree


def _set_subtree(tree: dict, path: Path, value: dict) -> None:
    if not path:
        tree.clear()
        tree.update(value)
        return
    for name in path[:-1]:
        tree = tree[name]
    tree[path[-1]] = value


# ----------------------------------------------------------------------------- reports


def accuracy(predict: Any, images: Any, labels: Any, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``predict(images) -> logits`` against integer ``labels``."""
    labels = np.asarray(labels)
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = np.asarray(predict(images[start : start + batch_size]))
        correct += int((logits.argmax(-1) == labels[start : start + batch_size]).sum())
    return correct / len(labels)


def _sqnr_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def layer_sqnr_table(
    module: nn.Module,
    variables: Mapping[str, Any],
    calibration_batches: Any,
    eval_batches: Any,
) -> list[dict[str, Any]]:
    """Per-unit signal-to-quantization-noise ratios (dB), per-tensor vs per-channel.

    For every unit (a separable convolution has a depthwise and a pointwise unit),
    in the order the model runs them:

    * ``weight_sqnr_per_tensor`` / ``weight_sqnr_per_channel``: the median over output
      channels ``c`` of ``10 log10(sum W_c^2 / sum (W_c - Q(W_c))^2)``, the folded
      kernel's SQNR per channel under each weight scheme (a median, because the
      SQNR of the whole tensor is set by its largest channels and hides the small
      ones that per-tensor scales lose);
    * ``output_sqnr_per_tensor`` / ``output_sqnr_per_channel``: the same ratio for the
      unit's output in the fully quantized model against the float model, summed
      over ``eval_batches`` (the error accumulated up to that unit).

    Args:
      module, variables: the float linen model.
      calibration_batches: inputs the activation ranges are calibrated on.
      eval_batches: inputs the output SQNR is measured on.

    Returns:
      One dict per unit: ``layer`` (path), ``unit``, ``kind``, ``channels`` and the
      four SQNR columns.
    """
    tables = {}
    eval_batches = _batches(eval_batches)
    example = jax.ShapeDtypeStruct(eval_batches[0].shape, eval_batches[0].dtype)
    discovery = _model.discover(module, variables, example)
    recorder = _float_recorder(module, variables, discovery, example, False, [])
    for per_channel in (False, True):
        qmodel, qvars = quantize(module, variables, calibration_batches, per_channel=per_channel)

        def run(x, qmodel=qmodel, qvars=qvars):
            y, record = qmodel._function(qvars, record=True)(x)
            return y, {"|".join((_key(p), str(i))): v for (p, i), v in record.items()}

        run = jax.jit(run)
        signal: dict[str, float] = {}
        noise: dict[str, float] = {}
        for batch in eval_batches:
            _, floats = recorder(batch)
            _, quants = run(batch)
            for name, value in quants.items():
                layer, unit = name.rsplit("|", 1)
                ref = floats["|".join((layer, "output", unit))]
                signal[name] = signal.get(name, 0.0) + float(
                    np.sum(np.asarray(ref, np.float64) ** 2)
                )
                noise[name] = noise.get(name, 0.0) + float(
                    np.sum((np.asarray(ref, np.float64) - np.asarray(value, np.float64)) ** 2)
                )
        tables[per_channel] = (qvars, signal, noise)
    rows = []
    for info in discovery.layers:
        for i, unit in enumerate(info.units):
            name = f"{_key(info.path)}|{i}"
            row: dict[str, Any] = {"layer": _key(info.path), "unit": i, "kind": unit.kind}
            for per_channel, label in ((False, "per_tensor"), (True, "per_channel")):
                qvars, signal, noise = tables[per_channel]
                kernel = np.asarray(_apply.subtree(qvars["params"], info.path)[unit.kernel])
                scale = qvars["quantization"][_key(info.path)][f"unit{i}"]["kernel_scale"]
                q = np.asarray(
                    fake_quant(
                        jnp.asarray(kernel),
                        scale,
                        np.zeros(np.shape(scale), np.int8),
                        axis=-1 if per_channel else None,
                        qmin=WEIGHT_RANGE[0],
                        qmax=WEIGHT_RANGE[1],
                    )
                )
                row["channels"] = kernel.shape[-1]
                w = kernel.astype(np.float64).reshape(-1, kernel.shape[-1])
                err = w - q.astype(np.float64).reshape(w.shape)
                per_channel_db = [
                    _sqnr_db(float(np.sum(w[:, c] ** 2)), float(np.sum(err[:, c] ** 2)))
                    for c in range(w.shape[1])
                ]
                row[f"weight_sqnr_{label}"] = float(np.median(per_channel_db))
                row[f"output_sqnr_{label}"] = _sqnr_db(signal[name], noise[name])
            rows.append(row)
    return rows


def sqnr_by_kind(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The median of each SQNR column of :func:`layer_sqnr_table` per kind of unit."""
    out = []
    columns = [c for c in rows[0] if c.endswith(("per_tensor", "per_channel"))] if rows else []
    for kind in _layers.KINDS:
        group = [r for r in rows if r["kind"] == kind]
        if not group:
            continue
        entry: dict[str, Any] = {"kind": kind, "units": len(group)}
        for column in columns:
            entry[column] = float(np.median([r[column] for r in group]))
        out.append(entry)
    return out
