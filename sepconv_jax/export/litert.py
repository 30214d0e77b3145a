"""Export to LiteRT (TFLite) through ``jax2tf`` and the TFLite converter.

:func:`to_tflite` traces the model as :func:`sepconv_jax.export.to_onnx` does
(inference mode, batch norm folded, every depthwise primitive of ours replaced by
the grouped convolution), writes each channels-last 1x1 step as a 2-D convolution
over the image and each spatial mean as an average pooling (:func:`lean_pointwise`),
wraps the function with :func:`jax.experimental.jax2tf.convert` and converts the ``tf.function`` with
``tf.lite.TFLiteConverter`` to builtin ops only. The converter turns a grouped
convolution with one group per channel into ``DEPTHWISE_CONV_2D`` and the 1x1 step
into ``CONV_2D``, with the bias and a following ReLU6 fused into it, as it does for
a Keras model; :func:`tflite_ops` reads the operator list back from the flatbuffer.

With ``calibration_batches`` the converter quantizes the model after training to
full integer arithmetic, as it does a Keras model: int8 weights (per output channel
for the convolutions), int8 activations whose ranges come from running the float
model on the calibration inputs, and only int8 builtin kernels (``QUANTIZE`` at the
float input, ``DEQUANTIZE`` at the float output).

Needs the ``litert`` extra: ``pip install "sepconv-jax[litert]"``
(``tensorflow-cpu``, ``ai-edge-litert``).
"""

from __future__ import annotations

import collections
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.extend import core as jcore

from sepconv_jax.export import _rewrite
from sepconv_jax.export.onnx import _check_path, require, traced_function

__all__ = [
    "convert",
    "full_integer",
    "interpreter",
    "lean_pointwise",
    "run_tflite",
    "tflite_ops",
    "to_tflite",
]


# ----------------------------------------------------------------------------- 1x1 steps


class _View:
    """A value that is ``image`` reshaped to ``shape``, with ``image`` channels-last.

    :func:`sepconv_jax.pointwise_conv` flattens ``(batch, height, width, C)`` to
    ``(positions, 1, C)`` and convolves it with a window of one; the TFLite
    converter keeps both reshapes around the ``CONV_2D``. While a value stays in
    this form (the 1x1 step, its bias), :func:`lean_pointwise` computes it on the
    image instead and reshapes only where another operation reads it.
    """

    def __init__(self, image: jax.Array, shape: tuple[int, ...]) -> None:
        self.image, self.shape = image, shape

    def value(self) -> jax.Array:
        return self.image if self.shape == self.image.shape else self.image.reshape(self.shape)


class _Sum:
    """``x`` summed over its two spatial dims, reshaped to ``shape``: half of a mean.

    ``jnp.mean`` over the spatial dims is a ``reduce_sum`` and a division; converted,
    ``SUM`` then ``MUL``, and a ``RESHAPE`` where the 1x1 step that follows flattens
    it. Divided by the number of positions, it becomes one average pooling over the
    whole image (``AVERAGE_POOL_2D``, as Keras' global pooling converts to ``MEAN``),
    channels-last at ``(batch, 1, 1, C)``.
    """

    def __init__(self, x: jax.Array, shape: tuple[int, ...]) -> None:
        self.x, self.shape = x, shape

    def value(self) -> jax.Array:
        return lax.reduce_sum(self.x, (1, 2)).reshape(self.shape)

    def mean(self, count: Any) -> jax.Array:
        window = (1, *self.x.shape[1:3], 1)
        total = lax.reduce_window(
            self.x, np.array(0, self.x.dtype), lax.add, window, (1,) * 4, "VALID"
        )
        return total / count


def _image_conv(eqn: jcore.JaxprEqn, image: jax.Array, kernel: jax.Array) -> jax.Array:
    """The window-1 convolution ``eqn`` computed on the ``(batch, h, w, C)`` image."""
    params = eqn.params
    return lax.conv_general_dilated(
        image,
        kernel.reshape(1, 1, *kernel.shape[1:]),
        window_strides=(1, 1),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=params["precision"],
        preferred_element_type=params["preferred_element_type"],
    )


def _scalar(value: Any) -> float | None:
    """``value`` as a Python float when it is a concrete scalar, else ``None``."""
    if np.size(value) != 1 or isinstance(value, jax.core.Tracer):
        return None
    return float(np.asarray(value).reshape(()))


def _lean_eqn(eqn: jcore.JaxprEqn, ins: list[Any]) -> list[Any] | None:
    """``eqn`` computed on the image form of its inputs, or ``None`` to bind it as is."""
    name = eqn.primitive.name
    out_aval: Any = eqn.outvars[0].aval if len(eqn.outvars) == 1 else None
    out_shape = tuple(getattr(out_aval, "shape", ()))
    x: Any = ins[0] if ins else None
    params = eqn.params
    reshapes = name == "reshape" and params.get("dimensions") is None
    if name == "broadcast_in_dim" and isinstance(x, _View | _Sum):
        dims = tuple(params["broadcast_dimensions"])
        reshapes = math.prod(out_shape) == math.prod(x.shape) and dims == tuple(sorted(dims))
    if reshapes:
        if isinstance(x, _View):
            return [x.image if out_shape == tuple(x.image.shape) else _View(x.image, out_shape)]
        if isinstance(x, _Sum):
            return [_Sum(x.x, out_shape)]
        shape = tuple(np.shape(x))
        if len(shape) == 4 and out_shape == (math.prod(shape[:-1]), 1, shape[-1]):
            return [_View(x, out_shape)]
        return None
    if name == "reduce_sum" and np.ndim(x) == 4 and tuple(params["axes"]) == (1, 2):
        return [_Sum(x, out_shape)]
    if name == "div" and isinstance(x, _Sum) and not isinstance(ins[1], _View | _Sum):
        if _scalar(ins[1]) == math.prod(x.x.shape[1:3]):
            return [_View(x.mean(ins[1]), out_shape)]
        return None
    image = x.image if isinstance(x, _View) and x.image.ndim == 4 else None
    if image is None or x.shape != (math.prod(image.shape[:-1]), 1, image.shape[-1]):
        return None
    if name == "conv_general_dilated" and not isinstance(ins[1], _View | _Sum):
        if _rewrite.is_window1_conv(eqn):
            return [_View(_image_conv(eqn, image, ins[1]), out_shape)]
    if name == "add" and not isinstance(ins[1], _View | _Sum):
        channels = image.shape[-1]
        if tuple(np.shape(ins[1])) in ((1, 1, channels), (channels,)):
            bias = jax.numpy.reshape(ins[1], (1, 1, 1, channels))
            return [_View(image + bias, out_shape)]
    return None


def lean_pointwise(fn: Callable[..., Any], *example_args: Any) -> Callable[..., Any]:
    """``fn`` with each channels-last 1x1 step written as a 2-D 1x1 convolution.

    :func:`sepconv_jax.pointwise_conv` computes a 1x1 step on ``(batch, h, w, C)`` as
    a window-1 convolution over the flattened ``(batch * h * w, 1, C)`` and reshapes
    back; converted to TFLite that is ``RESHAPE``, ``CONV_2D`` over a batch of
    ``batch * h * w`` one-pixel images, ``RESHAPE``, and the bias ``ADD`` stays
    apart. Here the same step, and a bias added to it, is computed on the image
    itself, as ``lax.conv_general_dilated`` with a ``1 x 1`` window: one ``CONV_2D``
    with its bias, as Keras' ``Conv2D(kernel_size=1)`` converts. A mean over the two
    spatial dims (global pooling, squeeze-and-excitation) becomes one average pooling
    over the whole image, kept at ``(batch, 1, 1, C)``: ``AVERAGE_POOL_2D`` instead of
    ``SUM``, ``MUL`` and the ``RESHAPE`` before the 1x1 step that reads it. Only the
    top level of ``fn``'s jaxpr is rewritten; every other operation is bound again
    unchanged.

    Args:
      fn: a function of arrays (positional) returning an array or a pytree of arrays.
      *example_args: arrays or :class:`jax.ShapeDtypeStruct` fixing the shapes.

    Returns:
      A function of the same arguments computing the same values.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax import pointwise_conv
      >>> from sepconv_jax.export.litert import lean_pointwise
      >>> f = lambda x: pointwise_conv(x, jnp.ones((4, 6)), bias=jnp.ones(6))
      >>> x = jnp.ones((1, 5, 5, 4))
      >>> g = lean_pointwise(f, x)
      >>> def inputs_of(h, name):
      ...     return [e.invars[0].aval.shape for e in jax.make_jaxpr(h)(x).jaxpr.eqns
      ...             if e.primitive.name == name]
      >>> inputs_of(f, "conv_general_dilated"), inputs_of(g, "conv_general_dilated")
      ([(25, 1, 4)], [(1, 5, 5, 4)])
      >>> inputs_of(g, "reshape")  # of the kernel and the bias only, folded by the converter
      [(4, 6), (1, 4, 6), (6,), (1, 1, 6)]
      >>> bool(jnp.allclose(g(x), f(x)))
      True
    """
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*example_args)
    out_tree = jax.tree.structure(out_shape)
    jaxpr = closed.jaxpr

    def rewritten(*args: Any) -> Any:
        env: dict[jcore.Var, Any] = {}

        def read(v: Any, *, keep_flat: bool = False) -> Any:
            value = v.val if isinstance(v, jcore.Literal) else env[v]
            return value if keep_flat or not isinstance(value, _View | _Sum) else value.value()

        for var, value in zip(jaxpr.constvars, closed.consts, strict=True):
            env[var] = value
        for var, value in zip(jaxpr.invars, jax.tree.leaves(args), strict=True):
            env[var] = value
        for eqn in jaxpr.eqns:
            outs = _lean_eqn(eqn, [read(v, keep_flat=True) for v in eqn.invars])
            if outs is None:
                outs = _rewrite.bind(eqn.primitive, eqn.params, [read(v) for v in eqn.invars])
            for var, value in zip(eqn.outvars, outs, strict=True):
                if not isinstance(var, jcore.DropVar):
                    env[var] = value
        return jax.tree.unflatten(out_tree, [read(v) for v in jaxpr.outvars])

    return rewritten


# ----------------------------------------------------------------------------- export


def _representative(calibration_batches: Any, shape: tuple[int, ...]) -> list[np.ndarray]:
    """The calibration inputs cut into ``shape``-sized float32 samples."""
    if isinstance(calibration_batches, np.ndarray | jax.Array):
        calibration_batches = [calibration_batches]
    if (
        isinstance(calibration_batches, str | bytes)
        or not isinstance(calibration_batches, Sequence)
        or not calibration_batches
    ):
        raise TypeError(
            "`calibration_batches` must be an array or a non-empty sequence of arrays shaped "
            f"(n, {', '.join(map(str, shape[1:]))}), got {type(calibration_batches).__name__}"
        )
    samples = []
    for i, batch in enumerate(calibration_batches):
        batch = np.asarray(batch, np.float32)
        if batch.ndim != len(shape) or batch.shape[1:] != shape[1:] or batch.shape[0] % shape[0]:
            raise ValueError(
                f"`calibration_batches[{i}]` has shape {batch.shape}; each must be "
                f"(n, {', '.join(map(str, shape[1:]))}) with n a multiple of the example "
                f"input's batch {shape[0]}"
            )
        samples.extend(np.split(batch, batch.shape[0] // shape[0]))
    return samples


def full_integer(converter: Any, samples: Sequence[np.ndarray]) -> Any:
    """Sets ``converter`` (a ``tf.lite.TFLiteConverter``) to full-integer post-training
    quantization calibrated on ``samples``: int8 builtin kernels only, float32 input
    and output. The same settings serve our models and a Keras model."""
    tf = require("tensorflow", "litert")

    def dataset() -> Iterator[list[np.ndarray]]:
        for sample in samples:
            yield [sample]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter


def convert(converter: Any) -> bytes:
    """``converter.convert()``, without the converter's notice that a full-integer
    model with float input has no input statistics (it needs none: its first op
    quantizes the input with the calibrated range)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()


def to_tflite(
    module: Any,
    variables: Any,
    example_input: Any,
    path: str | os.PathLike,
    *,
    fold_batch_norm: bool = True,
    calibration_batches: Any = None,
) -> str:
    """Exports a model to a ``.tflite`` file that the LiteRT interpreter runs.

    Args:
      module, variables, example_input, fold_batch_norm: as in
        :func:`sepconv_jax.export.to_onnx` (linen, NNX or a function; the input
        shape is fixed by ``example_input``, float32).
      path: the ``.tflite`` file to write.
      calibration_batches: ``None`` for a float32 model; or an array or a sequence
        of arrays ``(n, *example_input.shape[1:])`` for a full-integer model (int8
        weights and activations, int8 kernels, float32 input and output), the
        activation ranges calibrated on these inputs.

    Returns:
      ``path``, as a string.

    Raises:
      TypeError, ValueError: for an argument of the wrong type or value.
      ImportError: without the ``litert`` extra.
    """
    path = _check_path(path)
    tf = require("tensorflow", "litert")
    from jax.experimental import jax2tf

    fn, spec = traced_function(module, variables, example_input, fold_batch_norm=fold_batch_norm)
    if np.dtype(spec.dtype) != np.float32:
        raise TypeError(f"`example_input` must be float32 for LiteRT export, got {spec.dtype}")
    samples = None
    if calibration_batches is not None:
        samples = _representative(calibration_batches, tuple(spec.shape))
    tf_fn = tf.function(
        jax2tf.convert(lean_pointwise(fn, spec), with_gradient=False),
        input_signature=[tf.TensorSpec(spec.shape, tf.float32, name="x")],
        autograph=False,
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [tf_fn.get_concrete_function()], tf_fn
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if samples is not None:
        full_integer(converter, samples)
    with open(path, "wb") as f:
        f.write(convert(converter))
    return path


def tflite_ops(path: str | os.PathLike | bytes) -> dict[str, int]:
    """How many operators of each builtin kind the flatbuffer's subgraphs hold."""
    require("tensorflow", "litert")
    from tensorflow.lite.python import schema_py_generated as schema

    if isinstance(path, bytes):
        data = path
    else:
        with open(os.fspath(path), "rb") as f:
            data = f.read()
    model = schema.Model.GetRootAsModel(data, 0)
    names = {
        value: name
        for name, value in vars(schema.BuiltinOperator).items()
        if not name.startswith("_") and isinstance(value, int)
    }
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        codes.append(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
    counts: collections.Counter[str] = collections.Counter()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            counts[names.get(codes[graph.Operators(o).OpcodeIndex()], "CUSTOM")] += 1
    return dict(counts)


def interpreter(path: str | os.PathLike, *, num_threads: int | None = None) -> Any:
    """A LiteRT interpreter for ``path`` (XNNPACK, ``num_threads`` threads or the
    runtime's default), tensors allocated."""
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise ValueError(f"`num_threads` must be a positive int or None, got {num_threads!r}")
    litert = require("ai_edge_litert.interpreter", "litert")
    it = litert.Interpreter(model_path=os.fspath(path), num_threads=num_threads)
    it.allocate_tensors()
    return it


def run_tflite(path: str | os.PathLike | Any, x: Any) -> np.ndarray:
    """Runs a single-input, single-output ``.tflite`` model in the LiteRT interpreter."""
    it: Any = path if hasattr(path, "invoke") else interpreter(path)
    it.set_tensor(it.get_input_details()[0]["index"], np.asarray(x, np.float32))
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])
