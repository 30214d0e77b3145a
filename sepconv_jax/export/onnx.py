"""Export to ONNX, and reading the exported graph back.

:func:`to_onnx` traces the model in inference mode (batch norm folded by default,
:mod:`sepconv_jax.export.fold`), replaces every depthwise primitive of ours by the
reference grouped convolution (:mod:`sepconv_jax.export._rewrite`) and writes the
jaxpr as ONNX with ``onnx.helper`` (:mod:`sepconv_jax.export._emit`). The graph has
the shape of the standard PyTorch export of the same network: NCHW from the input
on (one ``Transpose`` at the input of a channels-last model, none with
``layout="NCHW"``), each depthwise step a ``Conv`` with ``group = C`` and an OIHW
weight, each pointwise step and each dense layer over the channels a 1x1 ``Conv``,
biases and folded batch norms in the ``Conv``'s third input, ReLU6 a ``Clip``
reading the ``Conv``, and the head ``GlobalAveragePool``, ``Flatten``, ``Gemm``.
onnxruntime fuses the bias, the ``Clip`` and a residual ``Add`` into its NCHWc
convolutions there. A model from :func:`sepconv_jax.export.quantize` becomes a QDQ
graph in onnxruntime's node-unit form (each ``Conv`` reads ``DequantizeLinear`` of
a uint8 activation, of int8 per-channel weights and of an int32 bias, and writes
one ``QuantizeLinear``), which onnxruntime runs as ``QLinearConv``; its sigmoids,
products with a gate and spatial means become ``QLinearSigmoid``, ``QLinearMul`` and
``QLinearGlobalAveragePool`` the same way.

Needs the ``export`` extra: ``pip install "sepconv-jax[export]"`` (``onnx``,
``onnxruntime``).
"""

from __future__ import annotations

import collections
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sepconv_jax.export import _emit, _model, _rewrite

__all__ = ["conv_groups", "op_counts", "run_onnx", "to_onnx", "traced_function"]

#: The ONNX opset the exported models use.
OPSET = _emit.OPSET


def require(module_name: str, extra: str = "export") -> Any:
    """Imports ``module_name`` or raises an ``ImportError`` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(
            f"{module_name} is needed here and could not be imported ({e}); install it with "
            f'`pip install "sepconv-jax[{extra}]"`'
        ) from None


def _example_spec(example_input: Any) -> jax.ShapeDtypeStruct:
    if isinstance(example_input, jax.ShapeDtypeStruct):
        return example_input
    if hasattr(example_input, "shape") and hasattr(example_input, "dtype"):
        dtype = np.dtype(example_input.dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"`example_input` must be a floating array (the model's input), got dtype {dtype}"
            )
        return jax.ShapeDtypeStruct(tuple(example_input.shape), dtype)
    raise TypeError(
        f"`example_input` must be an array or a jax.ShapeDtypeStruct with the model's input "
        f"shape and dtype, got {type(example_input).__name__}"
    )


def traced_function(
    module: Any,
    variables: Any,
    example_input: Any,
    *,
    fold_batch_norm: bool = True,
    hooks: Any = None,
    pool_as_slices: bool = False,
) -> tuple[Any, jax.ShapeDtypeStruct]:
    """The model as an exportable ``f(x)``: inference mode, folded, reference kernels.

    Args:
      module, variables, example_input, fold_batch_norm: as in :func:`to_onnx`.
      hooks: per-layer unit hooks (the int8 simulation), see ``_model``.
      pool_as_slices: write max pooling as slices (see
        :func:`sepconv_jax.export._rewrite.reference_kernels`).

    Returns:
      ``(f, spec)``: the function, whose jaxpr holds no depthwise primitive of ours,
      and the input's :class:`jax.ShapeDtypeStruct`.
    """
    spec = _example_spec(example_input)
    if not isinstance(fold_batch_norm, bool):
        raise TypeError(f"`fold_batch_norm` must be a bool, got {type(fold_batch_norm).__name__}")
    kwargs = {} if hooks is None else {"hooks": hooks}
    fn = _model.inference_function(
        module, variables, spec, fold_batch_norm=fold_batch_norm, **kwargs
    )
    return _rewrite.reference_kernels(fn, spec, pool_as_slices=pool_as_slices), spec


def _check_path(path: Any) -> str:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"`path` {path!r}: the folder {parent!r} does not exist")
    return path


def to_onnx(
    module: Any,
    variables: Any,
    example_input: Any,
    path: str | os.PathLike,
    *,
    fold_batch_norm: bool = True,
    layout: str | None = None,
) -> str:
    """Exports a model to an ONNX file that ``onnxruntime`` runs.

    Args:
      module: a ``flax.linen`` model or layer (called as ``module.apply(variables,
        x, train=False)``, or without ``train`` when its ``__call__`` has none), a
        ``flax.nnx`` module (called as ``module(x)`` on a copy in ``.eval()`` mode),
        or a function of one array.
      variables: the linen variables (``{"params": ..., "batch_stats": ...}``), or
        ``None`` for an NNX module or a function.
      example_input: an array or :class:`jax.ShapeDtypeStruct` with the input's shape
        and dtype, e.g. ``(1, 224, 224, 3)`` float32; the graph has that shape.
      path: the ``.onnx`` file to write.
      fold_batch_norm: fold each inference-mode batch norm into the convolution
        before it (:func:`sepconv_jax.export.fold.fold_batch_norm`), so the graph has
        no ``BatchNormalization``. Applies to linen models; NNX modules and functions
        are exported as they compute (an NNX batch norm as its elementwise steps).
      layout: ``None`` (default): the graph's input and output are the model's
        own arrays, e.g. ``(1, 224, 224, 3)``, and a channels-last model transposes
        its input to NCHW once. ``"NCHW"``: inputs and outputs of rank 3 or more are
        given and returned with their last axis second, e.g. ``(1, 3, 224, 224)``,
        and the graph has no ``Transpose`` (for a channels-last model).

    Returns:
      ``path``, as a string.

    Raises:
      TypeError, ValueError: for an argument of the wrong type or value.
      NotImplementedError: for an operation with no ONNX form here (named).
      ImportError: without the ``export`` extra.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, tempfile, os
      >>> from sepconv_jax.linen import SeparableConv
      >>> from sepconv_jax.export import to_onnx, run_onnx, conv_groups, op_counts
      >>> layer = SeparableConv(features=8, kernel_size=(3, 3))
      >>> x = jnp.ones((1, 8, 8, 4))
      >>> variables = layer.init(jax.random.key(0), x)
      >>> path = to_onnx(layer, variables, x, os.path.join(tempfile.mkdtemp(), "layer.onnx"))
      >>> conv_groups(path)
      [4, 1]
      >>> bool(np.allclose(run_onnx(path, x), layer.apply(variables, x), rtol=1e-5, atol=1e-5))
      True
      >>> path = to_onnx(layer, variables, x, path, layout="NCHW")
      >>> sorted(op_counts(path).items())
      [('Conv', 2)]
    """
    path = _check_path(path)
    onnx = require("onnx")
    if layout not in (None, "NCHW"):
        raise ValueError(
            f"`layout` must be None (the graph takes the model's own input) or 'NCHW' (a "
            f"channels-last input given with its channels second), got {layout!r}"
        )
    fn, spec = traced_function(module, variables, example_input, fold_batch_norm=fold_batch_norm)
    if layout == "NCHW" and len(spec.shape) < 3:
        raise ValueError(
            f"`layout='NCHW'` needs an input of rank 3 or more (batch, spatial..., "
            f"channels), got shape {spec.shape}"
        )
    closed = jax.make_jaxpr(fn)(spec)
    model = _emit.emit(closed, layout=layout)
    onnx.save(model, path)
    return path


def _load(model: Any) -> Any:
    onnx = require("onnx")
    if isinstance(model, str | os.PathLike):
        return onnx.load(os.fspath(model))
    return model


def op_counts(model: Any) -> dict[str, int]:
    """How many nodes of each ONNX op type the graph has (path or ``ModelProto``)."""
    graph = _load(model).graph
    return dict(collections.Counter(node.op_type for node in graph.node))


def conv_groups(model: Any) -> list[int]:
    """The ``group`` attribute of every ``Conv`` node, in graph order."""
    onnx = require("onnx")
    groups = []
    for node in _load(model).graph.node:
        if node.op_type in ("Conv", "QLinearConv", "ConvInteger"):
            group = 1
            for attr in node.attribute:
                if attr.name == "group":
                    group = int(onnx.helper.get_attribute_value(attr))
            groups.append(group)
    return groups


def session(
    path: str | os.PathLike,
    *,
    optimized_path: str | None = None,
    threads: int | None = None,
    spinning: bool = True,
) -> Any:
    """An ``onnxruntime`` CPU session for ``path``.

    Args:
      path: the ``.onnx`` file.
      optimized_path: where to save the graph onnxruntime runs after its optimizations.
      threads: intra-op threads (one inter-op thread then); ``None`` keeps onnxruntime's
        default.
      spinning: whether the intra-op threads busy-wait for work after a run
        (onnxruntime's default, ``session.intra_op.allow_spinning``); ``False`` lets
        them sleep, so that they leave the cores to whatever runs next.
    """
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_path is not None:
        options.optimized_model_filepath = os.fspath(optimized_path)
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: str | os.PathLike | Any, x: Any) -> np.ndarray:
    """Runs an exported single-input, single-output model in ``onnxruntime`` on CPU."""
    sess: Any = path if hasattr(path, "run") else session(path)
    name = sess.get_inputs()[0].name
    (y,) = sess.run(None, {name: np.asarray(x, dtype=np.float32)})
    return y
