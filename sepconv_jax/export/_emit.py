"""A jaxpr to ONNX emitter that keeps every activation in NCHW.

The exported function (inference mode, batch norm folded, each depthwise step the
reference grouped convolution, :mod:`sepconv_jax.export._rewrite`) is traced to a
jaxpr, and each equation becomes ONNX nodes written with ``onnx.helper``. Every
array keeps its logical (JAX) shape, and the emitter tracks how it is held
physically: a permutation ``perm`` of its axes (physical axis ``i`` holds logical
axis ``perm[i]``). A convolution asks for its input in the order of its dimension
numbers (batch, features, spatial: NCHW for our channels-last models) and leaves its
output in that order, so a channels-last model is held channels-first from its
first convolution to its head, and a logical transpose costs nothing. Constants are
folded in NumPy and given in the layout of the tensor they meet, shrunk along the
axes they are constant on: a bias over channels is a ``(C, 1, 1)`` initializer.

The pointwise step of ours flattens ``(N, *spatial, C)`` to ``(positions, 1, C)``,
convolves with a window of one and restores the shape. The emitter holds such a
flattened array as a view of the unflattened one and writes the step as a 1x1
``Conv`` on the NCHW tensor; a dense layer over the channel axis of an image is the
same 1x1 ``Conv``, one over a ``(N, C)`` array a ``Gemm``.

Peephole passes then write the graph as the standard export has it: a bias add after
a ``Conv`` or ``Gemm`` goes into its bias input (an int32 ``DequantizeLinear`` at
scale ``x_scale * w_scale`` in a QDQ graph), ``min(max(x, 0), 6)`` is a ``Clip`` with
constant bounds, ``max(x, 0)`` a ``Relu``, a mean over all spatial positions
``GlobalAveragePool`` then ``Flatten``. In a QDQ graph each quantized tensor gets one
``QuantizeLinear`` that all its readers share, and a quantization in front of a
``Clip``/``Relu`` whose output is quantized again is dropped, so that every
convolution sits between dequantized inputs and one ``QuantizeLinear`` (the node
unit onnxruntime runs as ``QLinearConv``). The quantized sigmoids, gated products
and spatial means (:mod:`sepconv_jax.export._elementwise`) form the same units
(``QLinearSigmoid``, ``QLinearMul``, ``QLinearGlobalAveragePool``); for the last, a
``Flatten`` between a pooled head and its ``QuantizeLinear`` moves onto the integers.

An equation with a primitive the emitter does not know raises a
:class:`NotImplementedError` that names it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax.extend import core as jcore

from sepconv_jax.export._onnx_base import _T, OPSET, _channels_first, _identity
from sepconv_jax.export._onnx_convert import _Converter
from sepconv_jax.export._onnx_passes import (
    _bias_pass,
    _clip_pass,
    _Graph,
    _hard_pass,
    _mean_pass,
    _qdq_pass,
)

__all__ = ["OPSET", "emit"]


# ----------------------------------------------------------------------------- entry


def _first_conv_input(jaxpr: jcore.Jaxpr) -> tuple[int, ...] | None:
    """The input layout (``lhs_spec``) of the first convolution, sub-jaxprs included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            spec = tuple(eqn.params["dimension_numbers"].lhs_spec)
            shape = tuple(getattr(eqn.invars[0].aval, "shape", ()))
            return None if spec == (0, 2, 1) and shape[1:2] == (1,) else spec
        for sub in jcore.jaxprs_in_params(eqn.params):
            found = _first_conv_input(sub)
            if found is not None:
                return found
    return None


def emit(
    closed: jcore.ClosedJaxpr,
    *,
    layout: str | None = None,
    model_name: str = "sepconv_jax_model",
) -> Any:
    """The ``onnx.ModelProto`` of a one-input, one-output jaxpr.

    Args:
      closed: the jaxpr (inference mode, reference kernels).
      layout: ``None``: the graph's input and output are the function's own arrays;
        ``"NCHW"``: arrays of rank 3 or more are given and returned with their last
        axis second (channels-last data as NCHW, no Transpose at the input).
      model_name: the graph's name.
    """
    import onnx

    (in_var,) = closed.jaxpr.invars
    in_aval: Any = in_var.aval
    rank = len(in_aval.shape)
    nchw = layout == "NCHW" and rank >= 3
    conv = _Converter(onnx)
    in_perm = _channels_first(rank) if nchw else _identity(rank)
    x = _T("input", tuple(in_aval.shape), np.dtype(in_aval.dtype), in_perm)
    if not nchw and rank >= 3 and _first_conv_input(closed.jaxpr) == _channels_first(rank):
        # Channels-last data meets its first convolution as NCHW: transpose it once,
        # at the input, so that any preprocessing before it runs in NCHW too.
        x = _T(conv.physical(x, _channels_first(rank)), x.shape, x.dtype, _channels_first(rank))
    outs = conv.run(closed.jaxpr, closed.consts, [x])
    if len(outs) != 1:
        raise ValueError(f"ONNX export: the function must return one array, got {len(outs)}")
    (y,) = outs
    out_aval: Any = closed.jaxpr.outvars[0].aval
    t = conv.materialize(y)
    out_rank = len(t.shape)
    out_perm = (
        _channels_first(out_rank) if (layout == "NCHW" and out_rank >= 3) else _identity(out_rank)
    )
    name = conv.node("Identity", [conv.physical(t, out_perm)], "output")
    g = _Graph(onnx, conv.nodes, conv.initializers, [name])
    g.prune()
    _clip_pass(g)
    g.prune()
    _bias_pass(g)
    _mean_pass(g)
    _hard_pass(g)
    if any(n.op_type == "QuantizeLinear" for n in g.nodes):
        _qdq_pass(g)
    g.prune()
    # The output: the node before the final Identity writes "output" itself.
    producers = g.producers()
    last = producers[name]
    src = producers.get(last.input[0])
    if src is not None and len(g.consumers().get(last.input[0], [])) == 1:
        old = last.input[0]
        g.nodes.remove(last)
        g.rename(old, "output")
        src.output[list(src.output).index(old)] = "output"
    else:
        last.output[0] = "output"
    elem = onnx.helper.np_dtype_to_tensor_dtype
    in_shape = [in_aval.shape[p] for p in in_perm]
    out_shape = [out_aval.shape[p] for p in out_perm]
    graph = onnx.helper.make_graph(
        g.nodes,
        model_name,
        [onnx.helper.make_tensor_value_info("input", elem(np.dtype(in_aval.dtype)), in_shape)],
        [onnx.helper.make_tensor_value_info("output", elem(np.dtype(out_aval.dtype)), out_shape)],
        [onnx.numpy_helper.from_array(v, k) for k, v in g.inits.items()],
    )
    model = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
        producer_name="sepconv_jax",
    )
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model
