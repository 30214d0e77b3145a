"""Export to LiteRT (TFLite) through ``jax2tf`` and the TFLite converter.

:func:`to_tflite` traces the model as :func:`sepconv_jax.export.to_onnx` does
(inference mode, batch norm folded, every depthwise primitive of ours replaced by
the grouped convolution), wraps it with :func:`jax.experimental.jax2tf.convert`
and converts the ``tf.function`` with ``tf.lite.TFLiteConverter`` to builtin ops
only. The converter turns a grouped convolution with one group per channel into
``DEPTHWISE_CONV_2D`` and our pointwise 1x1 convolution into ``CONV_2D``;
:func:`tflite_ops` reads the operator list back from the flatbuffer.

Needs the ``litert`` extra: ``pip install "sepconv-jax[litert]"``
(``tensorflow-cpu``, ``ai-edge-litert``).
"""

from __future__ import annotations

import collections
import os
from typing import Any

import numpy as np

from sepconv_jax.export.onnx import _check_path, require, traced_function

__all__ = ["interpreter", "run_tflite", "tflite_ops", "to_tflite"]


def to_tflite(
    module: Any,
    variables: Any,
    example_input: Any,
    path: str | os.PathLike,
    *,
    fold_batch_norm: bool = True,
) -> str:
    """Exports a model to a ``.tflite`` file that the LiteRT interpreter runs.

    Args:
      module, variables, example_input, fold_batch_norm: as in
        :func:`sepconv_jax.export.to_onnx` (linen, NNX or a function; the input
        shape is fixed by ``example_input``, float32).
      path: the ``.tflite`` file to write.

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
    tf_fn = tf.function(
        jax2tf.convert(fn, with_gradient=False),
        input_signature=[tf.TensorSpec(spec.shape, tf.float32, name="x")],
        autograph=False,
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [tf_fn.get_concrete_function()], tf_fn
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with open(path, "wb") as f:
        f.write(converter.convert())
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


def interpreter(path: str | os.PathLike) -> Any:
    """A LiteRT interpreter for ``path``, tensors allocated."""
    litert = require("ai_edge_litert.interpreter", "litert")
    it = litert.Interpreter(model_path=os.fspath(path))
    it.allocate_tensors()
    return it


def run_tflite(path: str | os.PathLike | Any, x: Any) -> np.ndarray:
    """Runs a single-input, single-output ``.tflite`` model in the LiteRT interpreter."""
    it = path if hasattr(path, "invoke") else interpreter(path)
    it.set_tensor(it.get_input_details()[0]["index"], np.asarray(x, np.float32))
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])
