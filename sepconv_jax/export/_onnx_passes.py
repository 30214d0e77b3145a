"""The peephole passes of the ONNX emitter (:mod:`sepconv_jax.export._emit`): bias into
``Conv`` input 3, ``Clip``/``Relu``, ``GlobalAveragePool``, hard activations, and QDQ node
units as onnxruntime fuses them."""

from __future__ import annotations

import collections
import itertools
import math
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- passes


class _Graph:
    """The emitted nodes with their initializers, for the peephole passes."""

    def __init__(self, onnx: Any, nodes: list[Any], initializers: list[Any], outputs: list[str]):
        self.onnx = onnx
        self.input = "input"
        self.nodes = nodes
        self.inits = {i.name: onnx.numpy_helper.to_array(i) for i in initializers}
        self.outputs = outputs
        self.count = itertools.count()

    def fresh(self, hint: str) -> str:
        return f"{hint}_p{next(self.count)}"

    def const(self, array: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.inits[name] = np.asarray(array)
        return name

    def producers(self) -> dict[str, Any]:
        return {out: node for node in self.nodes for out in node.output}

    def consumers(self) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = collections.defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                found[name].append(node)
        return found

    def sole(self, name: str, consumers: dict[str, list[Any]]) -> Any:
        users = consumers.get(name, [])
        if len(users) == 1 and name not in self.outputs:
            return users[0]
        return None

    def scalar(self, name: str) -> float | None:
        array = self.inits.get(name)
        if array is None or array.size != 1:
            return None
        return float(array.reshape(()))

    def rename(self, old: str, new: str) -> None:
        """Every reader of ``old`` reads ``new`` instead."""
        for node in self.nodes:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
        self.outputs = [new if o == old else o for o in self.outputs]

    def prune(self) -> None:
        needed = set(self.outputs)
        kept = []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                kept.append(node)
                needed.update(n for n in node.input if n)
        self.nodes = kept[::-1]
        self.inits = {k: v for k, v in self.inits.items() if k in needed}

    def make(self, op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> Any:
        return self.onnx.helper.make_node(op, inputs, outputs, name=self.fresh(op), **attrs)


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _clip_pass(g: _Graph) -> None:
    """``Min(Max(x, a), b)`` -> ``Clip(x, a, b)``; ``Max(x, 0)`` -> ``Relu``."""
    consumers = g.consumers()
    replace: dict[int, Any] = {}
    drop: set[int] = set()
    for node in g.nodes:
        if node.op_type not in ("Max", "Min") or len(node.input) != 2 or id(node) in drop:
            continue
        bound = g.scalar(node.input[1])
        if bound is None:
            continue
        x = node.input[0]
        nxt = g.sole(node.output[0], consumers)
        other = "Min" if node.op_type == "Max" else "Max"
        if nxt is not None and nxt.op_type == other and len(nxt.input) == 2:
            second = g.scalar(nxt.input[1])
            if second is not None and nxt.input[0] == node.output[0]:
                lo, hi = (bound, second) if node.op_type == "Max" else (second, bound)
                if lo <= hi:
                    dtype = g.inits[node.input[1]].dtype
                    lo_name = g.const(np.asarray(lo, dtype), "clip_min")
                    hi_name = g.const(np.asarray(hi, dtype), "clip_max")
                    replace[id(node)] = g.make("Clip", [x, lo_name, hi_name], list(nxt.output))
                    drop.add(id(nxt))
                    continue
        if node.op_type == "Max" and bound == 0.0:
            replace[id(node)] = g.make("Relu", [x], list(node.output))
    g.nodes = [replace.get(id(n), n) for n in g.nodes if id(n) not in drop]


def _weight_channels(g: _Graph, name: str, producers: dict[str, Any]) -> int | None:
    if name in g.inits:
        return int(g.inits[name].shape[0])
    node = producers.get(name)
    if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in g.inits:
        return int(g.inits[node.input[0]].shape[0])
    return None


def _dq_scale(g: _Graph, name: str, producers: dict[str, Any]) -> np.ndarray | None:
    node = producers.get(name)
    if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in g.inits:
        return None
    return np.asarray(g.inits[node.input[1]], np.float64)


def _bias_pass(g: _Graph) -> None:
    """A constant ``Add`` over the channels after a ``Conv`` or ``Gemm``: its bias input."""
    consumers = g.consumers()
    producers = g.producers()
    drop: set[int] = set()
    for node in g.nodes:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) != 2:
            continue
        if node.op_type == "Gemm" and _attr(node, "transA", 0):
            continue
        add = g.sole(node.output[0], consumers)
        if add is None or add.op_type != "Add":
            continue
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if other not in g.inits or other == node.output[0]:
            continue
        channels = _weight_channels(g, node.input[1], producers)
        bias = g.inits[other]
        if node.op_type == "Gemm":
            channels = None
            w = node.input[1]
            wnode = producers.get(w)
            if w in g.inits:
                channels = g.inits[w].shape[0 if _attr(node, "transB", 0) else 1]
            elif wnode is not None and wnode.input[0] in g.inits:
                channels = g.inits[wnode.input[0]].shape[0 if _attr(node, "transB", 0) else 1]
            ok = bias.ndim <= 2 and bias.shape[-1:] == (channels,) and bias.size == channels
        else:
            shape = bias.shape
            while len(shape) > 1 and shape[0] == 1:
                shape = shape[1:]
            ok = (
                channels is not None
                and len(shape) >= 1
                and shape[0] == channels
                and all(d == 1 for d in shape[1:])
            )
        if not ok and bias.size == 1 and channels is not None:
            ok = bias.ndim <= (
                2
                if node.op_type == "Gemm"
                else len(g.inits.get(node.input[1], np.zeros((1,) * 4)).shape)
            )
            bias = np.full((channels,), bias.reshape(()), bias.dtype)
        if not ok:
            continue
        vector = bias.reshape(-1).astype(np.float32)
        x_scale = _dq_scale(g, node.input[0], producers)
        w_scale = _dq_scale(g, node.input[1], producers)
        if x_scale is not None and w_scale is not None and x_scale.size == 1:
            scale = (x_scale.reshape(()) * w_scale.reshape(-1)).astype(np.float32)
            if scale.size == 1:
                scale = np.broadcast_to(scale, vector.shape).copy()
            q = np.clip(np.round(vector / scale), -(2**31), 2**31 - 1).astype(np.int32)
            bias_name = g.fresh("bias")
            g.nodes.append(
                g.make(
                    "DequantizeLinear",
                    [
                        g.const(q, "bias_q"),
                        g.const(scale, "bias_scale"),
                        g.const(np.zeros(q.shape, np.int32), "bias_zero_point"),
                    ],
                    [bias_name],
                    axis=0,
                )
            )
        else:
            bias_name = g.const(vector, "bias")
        node.input.append(bias_name)
        node.output[0] = add.output[0]
        drop.add(id(add))
    g.nodes = [n for n in g.nodes if id(n) not in drop]
    _toposort(g)


def _toposort(g: _Graph) -> None:
    known = set(g.inits) | {g.input}
    ordered, pending = [], list(g.nodes)
    while pending:
        rest = []
        for node in pending:
            if all((not i) or i in known for i in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # pragma: no cover - a cycle cannot be built here
            raise AssertionError("ONNX export: the graph has a cycle")
        pending = rest
    g.nodes = ordered


def _mean_pass(g: _Graph) -> None:
    """``Mul(GlobalAveragePool..., n)`` then ``Div(..., n)`` (a Reshape between them
    allowed): the mean itself; and ``Flatten`` then a Reshape back to the pooled
    shape (a squeeze-excite block's ``(N, C, 1, 1)``): the pooled tensor itself."""
    consumers = g.consumers()
    for node in list(g.nodes):
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        n = g.scalar(node.input[1])
        if n is None or not getattr(node, "doc_string", "") == "mean_count":
            continue
        nxt = g.sole(node.output[0], consumers)
        reshape = None
        if nxt is not None and nxt.op_type == "Reshape":
            reshape, nxt = nxt, g.sole(nxt.output[0], consumers)
        inv = None if nxt is None or len(nxt.input) != 2 else g.scalar(nxt.input[1])
        if nxt is None or inv is None:
            continue
        if not (
            (nxt.op_type == "Div" and math.isclose(inv, n, rel_tol=1e-6))
            or (nxt.op_type == "Mul" and math.isclose(inv * n, 1.0, rel_tol=1e-6))
        ):
            continue
        if reshape is None:
            g.rename(nxt.output[0], node.input[0])
        else:
            reshape.input[0] = node.input[0]
            g.rename(nxt.output[0], reshape.output[0])
        consumers = g.consumers()
    g.prune()
    producers = g.producers()
    for node in list(g.nodes):
        if node.op_type != "Reshape" or node.input[1] not in g.inits:
            continue
        flatten = producers.get(node.input[0])
        if flatten is None or flatten.op_type != "Flatten":
            continue
        pool = producers.get(flatten.input[0])
        if pool is None or pool.op_type != "GlobalAveragePool":
            continue
        target = g.inits[node.input[1]].tolist()
        rank = int(pool.doc_string.removeprefix("rank=")) if pool.doc_string else -1
        if len(target) == rank and all(d == 1 for d in target[2:]):
            g.rename(node.output[0], pool.output[0])
    g.prune()


def _hard_pass(g: _Graph) -> None:
    """``Clip(x + 3, 0, 6) / 6`` -> ``HardSigmoid``; ``x * HardSigmoid(x)`` -> ``HardSwish``
    (MobileNetV3's activations, as the standard export writes them)."""
    consumers = g.consumers()
    producers = g.producers()
    for div in list(g.nodes):
        if div.op_type != "Div" or len(div.input) != 2 or g.scalar(div.input[1]) != 6.0:
            continue
        clip = producers.get(div.input[0])
        if clip is None or clip.op_type != "Clip" or g.sole(clip.output[0], consumers) is not div:
            continue
        if (g.scalar(clip.input[1]), g.scalar(clip.input[2])) != (0.0, 6.0):
            continue
        add = producers.get(clip.input[0])
        if add is None or add.op_type != "Add" or g.sole(add.output[0], consumers) is not clip:
            continue
        if g.scalar(add.input[1]) != 3.0:
            continue
        x = add.input[0]
        hs = g.make("HardSigmoid", [x], list(div.output), alpha=1.0 / 6.0, beta=0.5)
        g.nodes[g.nodes.index(div)] = hs
        users = consumers.get(div.output[0], [])
        if len(users) == 1 and users[0].op_type == "Mul" and div.output[0] not in g.outputs:
            mul = users[0]
            if sorted(mul.input) == sorted([x, div.output[0]]):
                g.nodes[g.nodes.index(mul)] = g.make("HardSwish", [x], list(mul.output))
    g.prune()


def _quant_params(g: _Graph, node: Any) -> tuple | None:
    scale = g.inits.get(node.input[1])
    zero = g.inits.get(node.input[2]) if len(node.input) > 2 else None
    if scale is None:
        return None
    zero_key = None if zero is None else (zero.dtype.str, zero.tobytes())
    return (scale.tobytes(), zero_key, _attr(node, "axis", 1))


def _qdq_pass(g: _Graph) -> None:
    """One ``QuantizeLinear`` per tensor that all its readers share, then no
    re-quantization with the same parameters, none in front of a Clip/Relu whose
    output is quantized, and a ``Flatten`` in front of one moved after it."""
    # 1. Merge equal Q nodes of one tensor, and equal DQ nodes of one Q.
    for op in ("QuantizeLinear", "DequantizeLinear"):
        seen: dict[tuple, str] = {}
        for node in g.nodes:
            if node.op_type != op:
                continue
            params = _quant_params(g, node)
            if params is None:
                continue
            key = (node.input[0], params)
            if key in seen:
                g.rename(node.output[0], seen[key])
            else:
                seen[key] = node.output[0]
        g.prune()
    # 2. Readers of a quantized tensor read its dequantized value.
    consumers = g.consumers()
    for node in list(g.nodes):
        if node.op_type != "QuantizeLinear":
            continue
        users = consumers.get(node.output[0], [])
        dqs = [u for u in users if u.op_type == "DequantizeLinear"]
        if not dqs or node.input[0] in g.outputs:
            continue
        dq = dqs[0].output[0]
        others = [
            u
            for u in consumers.get(node.input[0], [])
            if u.op_type != "QuantizeLinear" and u.output[0] != dq
        ]
        qs = [u for u in consumers.get(node.input[0], []) if u.op_type == "QuantizeLinear"]
        if len(qs) != 1:
            continue
        for user in others:
            for i, name in enumerate(user.input):
                if name == node.input[0]:
                    user.input[i] = dq
    _toposort(g)
    # 3. DQ(Q(x)) -> Q -> DQ with the same parameters: the second pair is the identity.
    producers = g.producers()
    for node in list(g.nodes):
        if node.op_type != "QuantizeLinear":
            continue
        source = producers.get(node.input[0])
        if source is None or source.op_type != "DequantizeLinear":
            continue
        if _quant_params(g, source) != _quant_params(g, node):
            continue
        for user in [u for u in g.nodes if node.output[0] in u.input]:
            if user.op_type == "DequantizeLinear" and _quant_params(g, user) == _quant_params(
                g, node
            ):
                g.rename(user.output[0], node.input[0])
    g.prune()
    # 4. Q -> DQ -> Clip/Relu -> (only) Q: the activation reads the unquantized value.
    consumers = g.consumers()
    producers = g.producers()
    for node in list(g.nodes):
        if node.op_type not in ("Clip", "Relu"):
            continue
        dq = producers.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        if g.sole(dq.output[0], consumers) is not node or g.sole(q.output[0], consumers) is not dq:
            continue
        users = consumers.get(node.output[0], [])
        if not users or node.output[0] in g.outputs:
            continue
        if not all(u.op_type == "QuantizeLinear" for u in users):
            continue
        node.input[0] = q.input[0]
    g.prune()
    # 5. Flatten -> (only) per-tensor Q: the Flatten moves onto the integers, so that
    #    what it flattens (a pooled head) writes the QuantizeLinear itself.
    consumers = g.consumers()
    producers = g.producers()
    for node in list(g.nodes):
        if node.op_type != "QuantizeLinear" or g.inits[node.input[1]].size != 1:
            continue
        flatten = producers.get(node.input[0])
        if flatten is None or flatten.op_type != "Flatten":
            continue
        if g.sole(flatten.output[0], consumers) is not node:
            continue
        quantized = g.fresh("flatten_q")
        node.input[0], flatten.input[0] = flatten.input[0], quantized
        flatten.output[0], node.output[0] = node.output[0], quantized
    _toposort(g)
