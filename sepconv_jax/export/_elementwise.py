"""The activations an int8 graph quantizes between its layers: around gates, gated
products and spatial means.

onnxruntime runs an operation of a QDQ graph on integers when it forms a *node
unit*: each activation input read from a ``DequantizeLinear``, the output written
into exactly one ``QuantizeLinear``. The layers' own fake quantization
(:mod:`sepconv_jax.export.quantization`) makes that unit of every convolution and
dense layer. Between layers, the operations onnxruntime has integer kernels for
(its unary and binary QDQ rules) and that our models use are:

* a **gate**: the logistic sigmoid (``lax.logistic``, ONNX ``Sigmoid``, run as
  ``QLinearSigmoid``), and the hard sigmoid ``relu6(x + 3) / 6`` as
  :func:`jax.nn.hard_sigmoid` traces it (a ``jit`` of that name, ONNX
  ``HardSigmoid``; onnxruntime has no integer kernel for it and runs it in float
  between the two, as it does in the standard export);
* a **gated product** ``x * g``, ``g`` a gate's output and ``x`` an activation
  (both computed from the model's input): SiLU (swish) ``x * sigmoid(x)``, hard
  swish ``x * hard_sigmoid(x)`` and the squeeze-and-excitation gating, ONNX ``Mul``,
  run as ``QLinearMul``;
* a **spatial mean**: a sum over every axis but the first and the last (or but the
  first two) of an array of rank 3 or more, divided by the number of positions, as
  :func:`jax.numpy.mean` traces it: squeeze-and-excitation's squeeze and the head's
  pooling, ONNX ``GlobalAveragePool``, run as ``QLinearGlobalAveragePool``.

Each such operation gets a fake quantization on every activation input that is
not quantized already (a layer's output is) and on its output: a *point*. Other
products and sums (GELU, layer norm, a residual ``Add``) stay as they are.

:func:`run` evaluates a function's jaxpr with the points inserted, in the order
the jaxpr computes them, calling ``point(index, kind, value)`` at each: the
calibration records the float values there, the quantized model fake-quantizes
them. Call boundaries (``jit``, custom derivatives) are evaluated inline, so a
point inside :func:`jax.nn.silu` is found; the hard sigmoid's ``jit`` is kept
whole, as one gate. A later reader of a tensor that has a point reads the
quantized value, as every reader of a quantized tensor in the ONNX graph does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

from sepconv_jax.export._rewrite import _INLINE, bind

__all__ = ["KINDS", "Point", "run"]

#: The kinds of point: an operation's activation input, or its output.
KINDS: tuple[str, ...] = (
    "gate_input",
    "gate",
    "product_input",
    "product",
    "mean_input",
    "mean",
)

#: ``point(index, kind, value) -> value``: what happens at each point.
Point = Callable[[int, str, jax.Array], jax.Array]

_HARD_SIGMOID = "hard_sigmoid"
# Operations that move elements without changing them: a quantized or gate value
# stays one through them (per-tensor quantization commutes with them).
_LAYOUT = ("reshape", "broadcast_in_dim", "squeeze", "expand_dims", "transpose")


class _Flags:
    """What is known of a value: computed from the input, quantized, a gate output."""

    __slots__ = ("depends", "gate", "quantized")

    def __init__(self, depends: bool, quantized: bool = False, gate: bool = False):
        self.depends = depends
        self.quantized = quantized
        self.gate = gate


_CONST = _Flags(False)


def _literal_scalar(v: Any) -> float | None:
    if isinstance(v, jcore.Literal) and np.ndim(v.val) == 0:
        return float(v.val)
    return None


def _spatial_sum(eqn: jcore.JaxprEqn) -> int | None:
    """The count of positions of a ``reduce_sum`` over the spatial axes, else None."""
    if eqn.primitive.name != "reduce_sum":
        return None
    shape = tuple(getattr(eqn.invars[0].aval, "shape", ()))
    axes = tuple(sorted(eqn.params["axes"]))
    rank = len(shape)
    if rank < 3 or axes not in (tuple(range(1, rank - 1)), tuple(range(2, rank))):
        return None
    return math.prod(shape[a] for a in axes)


def _divides(eqn: jcore.JaxprEqn, var: Any, count: int) -> bool:
    """Whether ``eqn`` is ``var / count`` or ``var * (1 / count)``."""
    if len(eqn.invars) != 2 or eqn.invars[0] is not var:
        return False
    by = _literal_scalar(eqn.invars[1])
    if by is None:
        return False
    if eqn.primitive.name == "div":
        return math.isclose(by, count, rel_tol=1e-6)
    return eqn.primitive.name == "mul" and math.isclose(by * count, 1.0, rel_tol=1e-6)


def _means(jaxpr: jcore.Jaxpr) -> dict[int, int]:
    """``{id(sum equation): id(division equation)}`` for each spatial mean: a spatial
    ``reduce_sum`` whose result reaches, through layout operations and nothing else,
    a division by its count (or a product with its inverse)."""
    uses: dict[Any, list[jcore.JaxprEqn]] = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if isinstance(v, jcore.Var):
                uses.setdefault(v, []).append(eqn)
    found: dict[int, int] = {}
    for eqn in jaxpr.eqns:
        count = _spatial_sum(eqn)
        if count is None:
            continue
        var = eqn.outvars[0]
        while True:
            users = uses.get(var, [])
            if len(users) != 1 or var in jaxpr.outvars:
                break
            (user,) = users
            if user.primitive.name in _LAYOUT:
                var = user.outvars[0]
                continue
            if _divides(user, var, count):
                found[id(eqn)] = id(user)
            break
    return found


class _Interpreter:
    def __init__(self, point: Point, quantizes: Callable[[jcore.JaxprEqn], bool]):
        self.point = point
        self.quantizes = quantizes
        self.index = 0

    def mark(self, kind: str, value: Any) -> Any:
        out = self.point(self.index, kind, value)
        self.index += 1
        return out

    def eval(
        self,
        jaxpr: jcore.Jaxpr,
        consts: Sequence[Any],
        args: Sequence[Any],
        flags: Sequence[_Flags],
    ) -> tuple[list[Any], list[_Flags]]:
        env: dict[Any, tuple[Any, _Flags]] = {}

        def read(v: Any) -> tuple[Any, _Flags]:
            if isinstance(v, jcore.Literal):
                return v.val, _CONST
            return env[v]

        for var, value in zip(jaxpr.constvars, consts, strict=True):
            env[var] = (value, _CONST)
        for var, value, flag in zip(jaxpr.invars, args, flags, strict=True):
            env[var] = (value, flag)
        means = _means(jaxpr)
        mean_ends = set(means.values())

        def quantize_input(i: int, kind: str, eqn: jcore.JaxprEqn, vals: list[Any]) -> None:
            var = eqn.invars[i]
            value, flag = read(var)  # quantized already when an earlier input was it
            if flag.depends and not flag.quantized:
                value = self.mark(kind, value)
                if isinstance(var, jcore.Var):
                    env[var] = (value, _Flags(True, quantized=True, gate=flag.gate))
            vals[i] = value

        for eqn in jaxpr.eqns:
            vals = [read(v)[0] for v in eqn.invars]
            fl = [read(v)[1] for v in eqn.invars]
            depends = any(f.depends for f in fl)
            name = eqn.primitive.name
            body_name = _INLINE.get(name)
            gate = depends and (
                name == "logistic"
                or (name in ("jit", "pjit") and eqn.params.get("name") == _HARD_SIGMOID)
            )
            product = (
                name == "mul"
                and len(fl) == 2
                and all(f.depends for f in fl)
                and any(f.gate for f in fl)
            )
            if gate:
                quantize_input(0, "gate_input", eqn, vals)
                outs = bind(eqn.primitive, eqn.params, vals)
                outs = [self.mark("gate", outs[0])]
                out_flags = [_Flags(True, quantized=True, gate=True)]
            elif product:
                quantize_input(0, "product_input", eqn, vals)
                quantize_input(1, "product_input", eqn, vals)
                outs = [self.mark("product", bind(eqn.primitive, eqn.params, vals)[0])]
                out_flags = [_Flags(True, quantized=True)]
            elif id(eqn) in mean_ends and depends:
                outs = [self.mark("mean", bind(eqn.primitive, eqn.params, vals)[0])]
                out_flags = [_Flags(True, quantized=True)]
            elif body_name is not None and body_name in eqn.params:
                body = eqn.params[body_name]
                if isinstance(body, jcore.ClosedJaxpr):
                    outs, out_flags = self.eval(body.jaxpr, body.consts, vals, fl)
                else:
                    outs, out_flags = self.eval(body, (), vals, fl)
            else:
                if id(eqn) in means and depends:
                    quantize_input(0, "mean_input", eqn, vals)
                outs = bind(eqn.primitive, eqn.params, vals)
                if name in _LAYOUT and len(fl) == 1:
                    out_flags = [_Flags(depends, fl[0].quantized, fl[0].gate)] * len(outs)
                else:
                    quantized = depends and self.quantizes(eqn)
                    out_flags = [_Flags(depends, quantized)] * len(outs)
            for var, value, flag in zip(eqn.outvars, outs, out_flags, strict=True):
                if not isinstance(var, jcore.DropVar):
                    env[var] = (value, flag)
        results = [read(v) for v in jaxpr.outvars]
        return [r[0] for r in results], [r[1] for r in results]


def run(
    fn: Callable[[Any], Any],
    x: Any,
    point: Point,
    quantizes: Callable[[jcore.JaxprEqn], bool],
) -> tuple[Any, int]:
    """``fn(x)`` with ``point`` applied at each point, and the number of points.

    Args:
      fn: a function of one array (inference mode) returning a pytree of arrays.
      x: its input (an array or a tracer).
      point: ``point(index, kind, value)``, called at each point in order; what it
        returns replaces the value.
      quantizes: whether an equation's output is a quantized value already (the
        layers' fake quantization, or the calibration's tag of a layer output).

    Returns:
      ``(fn(x) with the points, number of points)``.
    """
    closed, shape = jax.make_jaxpr(fn, return_shape=True)(x)
    interpreter = _Interpreter(point, quantizes)
    outs, _ = interpreter.eval(closed.jaxpr, closed.consts, [x], [_Flags(True)])
    return jax.tree.unflatten(jax.tree.structure(shape), outs), interpreter.index
