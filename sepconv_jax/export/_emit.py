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
unit onnxruntime runs as ``QLinearConv``).

An equation with a primitive the emitter does not know raises a
:class:`NotImplementedError` that names it.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

__all__ = ["emit"]

OPSET = 21


@dataclasses.dataclass(frozen=True)
class _T:
    """An array in the graph: ONNX name, logical shape and dtype, physical order.

    ``broadcast``: the physical tensor may have size 1 where the logical shape has
    more (a ``broadcast_in_dim`` left to the elementwise op that reads it).
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    perm: tuple[int, ...]
    broadcast: bool = False


@dataclasses.dataclass(frozen=True)
class _Flat:
    """``reshape(base, (positions, 1, C))``, not written to the graph."""

    base: _T
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _QConst:
    """A fake-quantized constant: integer values, scale along ``axis`` (or one)."""

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    dtype: np.dtype

    def value(self) -> np.ndarray:
        scale, zero = self.scale, self.zero_point.astype(np.float64)
        if self.axis is not None:
            shape = [1] * self.q.ndim
            shape[self.axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return ((self.q.astype(np.float64) - zero) * scale).astype(self.dtype)


def _channels_first(rank: int) -> tuple[int, ...]:
    if rank < 3:
        return tuple(range(rank))
    return (0, rank - 1, *range(1, rank - 1))


def _inverse(perm: Sequence[int]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


_UNARY = {
    "neg": "Neg",
    "exp": "Exp",
    "log": "Log",
    "tanh": "Tanh",
    "logistic": "Sigmoid",
    "sqrt": "Sqrt",
    "abs": "Abs",
    "erf": "Erf",
    "sign": "Sign",
    "floor": "Floor",
    "ceil": "Ceil",
    "sin": "Sin",
    "cos": "Cos",
    "not": "Not",
}
_BINARY = {
    "add": "Add",
    "sub": "Sub",
    "mul": "Mul",
    "div": "Div",
    "max": "Max",
    "min": "Min",
    "pow": "Pow",
    "gt": "Greater",
    "lt": "Less",
    "ge": "GreaterOrEqual",
    "le": "LessOrEqual",
    "eq": "Equal",
    "and": "And",
    "or": "Or",
}
_IDENTITY = ("copy", "copy_p", "sepconv_export_tag", "optimization_barrier")
_INLINE = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
}
_REDUCE = {
    "reduce_sum": "ReduceSum",
    "reduce_max": "ReduceMax",
    "reduce_min": "ReduceMin",
    "reduce_prod": "ReduceProd",
}


class _Emitter:
    def __init__(self, onnx: Any) -> None:
        self.onnx = onnx
        self.helper = onnx.helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.count = itertools.count()
        self.transposed: dict[tuple[str, tuple[int, ...]], str] = {}

    # ------------------------------------------------------------------ basics

    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self.count)}"

    def node(self, op: str, inputs: Sequence[str], hint: str | None = None, **attrs: Any) -> str:
        out = self.fresh(hint or op.lower())
        self.nodes.append(
            self.helper.make_node(op, list(inputs), [out], name=self.fresh(op), **attrs)
        )
        return out

    def const(self, value: Any, hint: str = "c") -> str:
        name = self.fresh(hint)
        array = np.asarray(value)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def ints(self, values: Sequence[int], hint: str = "axes") -> str:
        return self.const(np.asarray(list(values), np.int64), hint)

    def physical(self, t: _T, perm: tuple[int, ...]) -> str:
        """``t``'s name, transposed so that physical axis ``i`` is logical ``perm[i]``."""
        if t.perm == perm:
            return t.name
        key = (t.name, perm)
        if key not in self.transposed:
            order = [t.perm.index(p) for p in perm]
            self.transposed[key] = self.node("Transpose", [t.name], perm=order)
        return self.transposed[key]

    def physical_shape(self, t: _T) -> tuple[int, ...]:
        return tuple(t.shape[p] for p in t.perm)

    def solid(self, t: _T) -> _T:
        """``t`` with every broadcast dimension expanded."""
        if not t.broadcast:
            return t
        shape = self.ints(self.physical_shape(t), "shape")
        return _T(self.node("Expand", [t.name, shape]), t.shape, t.dtype, t.perm)

    def materialize(self, value: Any, aval: Any = None) -> _T:
        """Any value as a graph tensor (constants become initializers)."""
        if isinstance(value, _T):
            return self.solid(value)
        if isinstance(value, _Flat):
            base = self.solid(value.base)
            logical = self.physical(base, _identity(len(base.shape)))
            shape = self.ints(value.shape, "shape")
            return _T(
                self.node("Reshape", [logical, shape]),
                value.shape,
                value.dtype,
                _identity(len(value.shape)),
            )
        if isinstance(value, _QConst):
            value = value.value()
        array = np.asarray(value)
        return _T(self.const(array), array.shape, array.dtype, _identity(array.ndim))

    # ------------------------------------------------------------------ constants in a layout

    @staticmethod
    def shrink(array: np.ndarray) -> np.ndarray:
        """``array`` reduced to size 1 along every axis it is constant on."""
        for axis in range(array.ndim):
            if array.shape[axis] > 1:
                first = np.take(array, [0], axis=axis)
                if np.array_equal(np.broadcast_to(first, array.shape), array):
                    array = first
        return array

    def const_in(self, array: np.ndarray, perm: tuple[int, ...], dtype: np.dtype) -> str:
        """A constant operand of an elementwise op on a tensor held in ``perm``."""
        array = np.asarray(array, dtype)
        if array.ndim == 0:
            return self.const(array)
        array = self.shrink(array).transpose(perm)
        while array.ndim > 1 and array.shape[0] == 1:
            array = array[0]
        return self.const(array)

    # ------------------------------------------------------------------ elementwise

    def elementwise(self, op: str, args: Sequence[Any], aval: Any, **attrs: Any) -> Any:
        rank = len(aval.shape)
        flats = [a for a in args if isinstance(a, _Flat)]
        tensors = [a for a in args if isinstance(a, _T)]
        consts = [a for a in args if not isinstance(a, _T | _Flat)]
        if flats and not tensors and all(f.base.shape == flats[0].base.shape for f in flats):
            ok = all(self._flat_const(np.asarray(_value(c)), flats[0]) is not None for c in consts)
            if ok:
                base = flats[0].base
                inputs = []
                for a in args:
                    if isinstance(a, _Flat):
                        inputs.append(self.physical(a.base, base.perm))
                    else:
                        c = self._flat_const(np.asarray(_value(a)), flats[0])
                        assert c is not None  # checked above
                        inputs.append(self.const_in(c, base.perm, c.dtype))
                out = self.node(op, inputs, **attrs)
                shape = (*base.shape[:-1], aval.shape[-1])
                return _Flat(
                    _T(out, shape, aval.dtype, base.perm, any(f.base.broadcast for f in flats)),
                    tuple(aval.shape),
                    aval.dtype,
                )
        args = [self.materialize(a) if isinstance(a, _Flat) else a for a in args]
        tensors = [a for a in args if isinstance(a, _T)]
        full = [t for t in tensors if len(t.shape) == rank]
        perm = _identity(rank)
        for t in full:
            if t.perm != _identity(rank):
                perm = t.perm
                break
        inputs = []
        for a in args:
            if isinstance(a, _T):
                if len(a.shape) == 0:
                    inputs.append(a.name)
                else:
                    inputs.append(self.physical(a, perm))
            else:
                array = np.asarray(_value(a))
                inputs.append(self.const_in(array, perm, array.dtype))
        out = self.node(op, inputs, **attrs)
        broadcast = bool(full) and all(t.broadcast for t in full)
        return _T(out, tuple(aval.shape), aval.dtype, perm, broadcast)

    def _flat_const(self, array: np.ndarray, flat: _Flat) -> np.ndarray | None:
        """A constant over ``(positions, 1, C)`` as one over the base's shape, when it
        varies along the channels only."""
        if array.ndim == 0:
            return array
        array = self.shrink(array)
        if any(d != 1 for d in array.shape[:-1]):
            return None
        channels = array.shape[-1]
        shape = (1,) * (len(flat.base.shape) - 1) + (channels,)
        return array.reshape(shape)


def _squeeze(kernel: Any, axes: tuple[int, ...]) -> Any:
    if isinstance(kernel, _QConst):
        axis = kernel.axis
        if axis is not None:
            axis -= sum(a < axis for a in axes)
        return dataclasses.replace(kernel, q=kernel.q.squeeze(axes), axis=axis)
    return np.asarray(kernel).squeeze(axes)


def _value(a: Any) -> Any:
    if isinstance(a, _QConst):
        return a.value()
    return a


def _is_const(a: Any) -> bool:
    return not isinstance(a, _T | _Flat)


class _Converter(_Emitter):
    # ------------------------------------------------------------------ driving

    def run(self, jaxpr: jcore.Jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
        env: dict[Any, Any] = {}

        def read(v: Any) -> Any:
            if isinstance(v, jcore.Literal):
                return np.asarray(v.val, getattr(v.aval, "dtype", None))
            return env[v]

        for var, value in zip(jaxpr.constvars, consts, strict=True):
            env[var] = np.asarray(value) if not isinstance(value, _T | _Flat | _QConst) else value
        for var, value in zip(jaxpr.invars, args, strict=True):
            env[var] = value
        for eqn in jaxpr.eqns:
            outs = self.equation(eqn, [read(v) for v in eqn.invars])
            for var, value in zip(eqn.outvars, outs, strict=True):
                if not isinstance(var, jcore.DropVar):
                    env[var] = value
        return [read(v) for v in jaxpr.outvars]

    def equation(self, eqn: jcore.JaxprEqn, args: list[Any]) -> list[Any]:
        name = eqn.primitive.name
        if name == "sepconv_fake_quant":
            return [self.fake_quant(eqn, *args)]
        if name in _INLINE and _INLINE[name] in eqn.params:
            body = eqn.params[_INLINE[name]]
            if all(_is_const(a) for a in args):
                return self.fold(eqn, args)
            if isinstance(body, jcore.ClosedJaxpr):
                return self.run(body.jaxpr, body.consts, args)
            return self.run(body, (), args)
        if name in ("reshape", "transpose", "convert_element_type") and isinstance(
            args[0], _QConst
        ):
            kept = self.quantized_view(eqn, args[0])
            if kept is not None:
                return [kept]
        if all(_is_const(a) for a in args):
            return self.fold(eqn, args)
        method = getattr(self, f"p_{name}", None)
        aval = eqn.outvars[0].aval
        if name in _IDENTITY:
            return list(args[: len(eqn.outvars)])
        if method is not None:
            return [method(eqn, aval, *args)]
        if name in _BINARY:
            return [self.elementwise(_BINARY[name], args, aval)]
        unary = _UNARY.get(name)
        if unary:
            return [self.elementwise(unary, args, aval)]
        raise NotImplementedError(
            f"ONNX export: the primitive `{name}` has no ONNX form here (the model's jaxpr "
            f"holds it); write the model with the operations the exporter knows, see "
            f"sepconv_jax.export.onnx"
        )

    def quantized_view(self, eqn: jcore.JaxprEqn, k: _QConst) -> _QConst | None:
        """A reshape, transpose or same-type cast of a fake-quantized kernel that keeps
        its integers and its scale axis (``None`` when it cannot)."""
        name = eqn.primitive.name
        if name == "convert_element_type":
            dtype = np.dtype(eqn.params["new_dtype"])
            return dataclasses.replace(k, dtype=dtype) if dtype == k.dtype else None
        if name == "transpose":
            permutation = tuple(eqn.params["permutation"])
            axis = None if k.axis is None else permutation.index(k.axis)
            return dataclasses.replace(k, q=k.q.transpose(permutation), axis=axis)
        new = tuple(eqn.params["new_sizes"])
        if k.axis is None:
            return dataclasses.replace(k, q=k.q.reshape(new))
        # The scale axis must stay one axis of the same size, with what is before it
        # and after it reshaped separately.
        before, size = math.prod(k.q.shape[: k.axis]), k.q.shape[k.axis]
        for axis in range(len(new)):
            if new[axis] == size and math.prod(new[:axis]) == before:
                return dataclasses.replace(k, q=k.q.reshape(new), axis=axis)
        return None

    def fold(self, eqn: jcore.JaxprEqn, args: list[Any]) -> list[Any]:
        values = [jax.numpy.asarray(_value(a)) for a in args]
        prim = eqn.primitive
        bind_params = prim.get_bind_params(eqn.params)
        if isinstance(bind_params, tuple):  # pragma: no cover - JAX before 0.7
            subfuns, bind_params = bind_params
            out = prim.bind(*subfuns, *values, **bind_params)
        else:
            out = prim.bind(*values, **bind_params)
        outs = list(out) if prim.multiple_results else [out]
        return [np.asarray(o) for o in outs]

    # ------------------------------------------------------------------ elementwise extras

    def p_rsqrt(self, eqn, aval, x):
        return self.elementwise("Reciprocal", [self.elementwise("Sqrt", [x], aval)], aval)

    def p_erfc(self, eqn, aval, x):
        erf = self.elementwise("Erf", [x], aval)
        return self.elementwise("Sub", [np.asarray(1.0, aval.dtype), erf], aval)

    def p_square(self, eqn, aval, x):
        return self.elementwise("Mul", [x, x], aval)

    def p_integer_pow(self, eqn, aval, x):
        n = int(eqn.params["y"])
        if n == 2:
            return self.elementwise("Mul", [x, x], aval)
        return self.elementwise("Pow", [x, np.asarray(float(n), aval.dtype)], aval)

    def p_ne(self, eqn, aval, a, b):
        return self.elementwise("Not", [self.elementwise("Equal", [a, b], aval)], aval)

    def p_log1p(self, eqn, aval, x):
        return self.elementwise("Log", [self.p_add1(aval, x)], aval)

    def p_expm1(self, eqn, aval, x):
        exp = self.elementwise("Exp", [x], aval)
        return self.elementwise("Sub", [exp, np.asarray(1.0, aval.dtype)], aval)

    def p_add1(self, aval, x):
        return self.elementwise("Add", [x, np.asarray(1.0, aval.dtype)], aval)

    def p_select_n(self, eqn, aval, pred, *cases):
        if len(cases) != 2:
            raise NotImplementedError("ONNX export: `select_n` with more than two cases")
        if _is_const(pred):
            pred = np.asarray(pred).astype(bool)
        return self.elementwise("Where", [pred, cases[1], cases[0]], aval)

    def p_clamp(self, eqn, aval, lo, x, hi):
        if _is_const(lo) and _is_const(hi) and np.ndim(lo) == 0 and np.ndim(hi) == 0:
            x = self.materialize(x) if isinstance(x, _Flat) else x
            return self.elementwise(
                "Clip",
                [x, np.asarray(lo, aval.dtype), np.asarray(hi, aval.dtype)],
                aval,
            )
        return self.elementwise("Min", [self.elementwise("Max", [x, lo], aval), hi], aval)

    def p_convert_element_type(self, eqn, aval, x):
        dtype = np.dtype(eqn.params["new_dtype"])
        if isinstance(x, _T | _Flat) and np.dtype(x.dtype) == dtype:
            return x
        to = self.helper.np_dtype_to_tensor_dtype(dtype)
        return self.elementwise("Cast", [x], aval, to=to)

    # ------------------------------------------------------------------ shapes

    def p_reshape(self, eqn, aval, x):
        new = tuple(eqn.params["new_sizes"])
        if isinstance(x, _Flat):
            if new == x.base.shape:
                return x.base
            if new == x.shape:
                return x
            x = self.materialize(x)
        x = self.solid(x)
        rank = len(x.shape)
        if rank >= 2 and len(new) == 3 and new == (math.prod(x.shape[:-1]), 1, x.shape[-1]):
            return _Flat(x, new, x.dtype)
        if new == x.shape:
            return x
        # Only size-1 axes inserted or removed: keep the physical order.
        kept_in = [a for a in x.perm if x.shape[a] != 1]
        sizes_in = [x.shape[a] for a in kept_in]
        if [d for d in x.shape if d != 1] == [d for d in new if d != 1]:
            for perm in (_channels_first(len(new)), _identity(len(new))):
                kept_out = [a for a in perm if new[a] != 1]
                if [new[a] for a in kept_out] == sizes_in and self._order_kept(
                    x, kept_in, new, kept_out
                ):
                    shape = self.ints([new[a] for a in perm], "shape")
                    return _T(self.node("Reshape", [x.name, shape]), new, x.dtype, perm)
        logical = self.physical(x, _identity(rank))
        shape = self.ints(new, "shape")
        return _T(self.node("Reshape", [logical, shape]), new, x.dtype, _identity(len(new)))

    @staticmethod
    def _order_kept(x: _T, kept_in: list[int], new: tuple[int, ...], kept_out: list[int]) -> bool:
        """Whether the non-unit axes keep their logical order (so positions agree)."""
        logical_in = [a for a in range(len(x.shape)) if x.shape[a] != 1]
        logical_out = [a for a in range(len(new)) if new[a] != 1]
        rank_in = [logical_in.index(a) for a in kept_in]
        rank_out = [logical_out.index(a) for a in kept_out]
        return rank_in == rank_out

    def p_squeeze(self, eqn, aval, x):
        return self.p_reshape(_Params(new_sizes=tuple(aval.shape)), aval, x)

    def p_expand_dims(self, eqn, aval, x):  # pragma: no cover - not a primitive in jax 0.10
        return self.p_reshape(_Params(new_sizes=tuple(aval.shape)), aval, x)

    def p_broadcast_in_dim(self, eqn, aval, x):
        if isinstance(x, _Flat):
            x = self.materialize(x)
        shape = tuple(eqn.params["shape"])
        dims = tuple(eqn.params["broadcast_dimensions"])
        rank = len(shape)
        # Unit axes first, then a broadcast the elementwise readers do themselves.
        unit = tuple(
            shape[d] if x.shape[i] != 1 else 1 for d, i in zip(dims, range(len(dims)), strict=False)
        )
        ones = [1] * rank
        for i, d in enumerate(dims):
            ones[d] = unit[i]
        y = self.p_reshape(_Params(new_sizes=tuple(ones)), None, x) if tuple(ones) != x.shape else x
        if tuple(ones) == shape:
            return y
        return _T(y.name, shape, y.dtype, y.perm, True)

    def p_transpose(self, eqn, aval, x):
        if isinstance(x, _Flat):
            x = self.materialize(x)
        permutation = tuple(eqn.params["permutation"])
        inv = _inverse(permutation)
        perm = tuple(inv[p] for p in x.perm)
        return _T(x.name, tuple(aval.shape), x.dtype, perm, x.broadcast)

    def p_concatenate(self, eqn, aval, *args):
        axis = int(eqn.params["dimension"])
        tensors = [self.materialize(a) for a in args if not _is_const(a)]
        perm = next((t.perm for t in tensors if t.perm != _identity(len(aval.shape))), None)
        perm = perm or _identity(len(aval.shape))
        inputs = []
        for a in args:
            if _is_const(a):
                inputs.append(self.const(np.asarray(_value(a)).transpose(perm)))
            else:
                inputs.append(self.physical(self.materialize(a), perm))
        out = self.node("Concat", inputs, axis=perm.index(axis))
        return _T(out, tuple(aval.shape), aval.dtype, perm)

    def p_pad(self, eqn, aval, x, value):
        x = self.materialize(x)
        config = eqn.params["padding_config"]
        if any(interior != 0 for _, _, interior in config):
            raise NotImplementedError("ONNX export: `pad` with interior padding")
        if not _is_const(value):
            raise NotImplementedError("ONNX export: `pad` with a non-constant padding value")
        lows = [max(config[p][0], 0) for p in x.perm]
        highs = [max(config[p][1], 0) for p in x.perm]
        out = x.name
        if any(lows) or any(highs):
            fill = self.const(np.asarray(value, x.dtype))
            out = self.node("Pad", [x.name, self.ints(lows + highs, "pads"), fill], mode="constant")
        if any(lo < 0 or hi < 0 for lo, hi, _ in config):
            padded = [
                d + max(lo, 0) + max(hi, 0) for d, (lo, hi, _) in zip(x.shape, config, strict=False)
            ]
            starts = [-min(config[p][0], 0) for p in x.perm]
            ends = [padded[p] + min(config[p][1], 0) for p in x.perm]
            out = self.node("Slice", [out, self.ints(starts), self.ints(ends)])
        return _T(out, tuple(aval.shape), aval.dtype, x.perm)

    def p_slice(self, eqn, aval, x):
        x = self.materialize(x)
        start = eqn.params["start_indices"]
        limit = eqn.params["limit_indices"]
        strides = eqn.params["strides"] or (1,) * len(start)
        axes = [
            i
            for i, p in enumerate(x.perm)
            if (start[p], limit[p], strides[p]) != (0, x.shape[p], 1)
        ]
        if not axes:
            return x
        out = self.node(
            "Slice",
            [
                x.name,
                self.ints([start[x.perm[i]] for i in axes], "starts"),
                self.ints([limit[x.perm[i]] for i in axes], "ends"),
                self.ints(axes, "axes"),
                self.ints([strides[x.perm[i]] for i in axes], "steps"),
            ],
        )
        return _T(out, tuple(aval.shape), aval.dtype, x.perm)

    def p_rev(self, eqn, aval, x):
        x = self.materialize(x)
        axes = [x.perm.index(d) for d in eqn.params["dimensions"]]
        big = np.iinfo(np.int64).max
        out = self.node(
            "Slice",
            [
                x.name,
                self.ints([-1] * len(axes), "starts"),
                self.ints([-big] * len(axes), "ends"),
                self.ints(axes, "axes"),
                self.ints([-1] * len(axes), "steps"),
            ],
        )
        return _T(out, tuple(aval.shape), aval.dtype, x.perm)

    # ------------------------------------------------------------------ reductions

    def _reduce(self, op: str, eqn, aval, x):
        x = self.materialize(x)
        axes = tuple(eqn.params["axes"])
        phys = sorted(x.perm.index(a) for a in axes)
        remaining = [p for p in x.perm if p not in axes]
        perm = tuple(p - sum(a < p for a in axes) for p in remaining)
        rank = len(x.shape)
        if op == "ReduceSum" and rank >= 3 and phys == list(range(2, rank)):
            # A sum over every spatial position: the global average pool, times the
            # count (which the division after it cancels, see _mean_pass).
            pooled = self.node("Flatten", [self.node("GlobalAveragePool", [x.name])], axis=1)
            self.nodes[-2].doc_string = f"rank={rank}"
            count = math.prod(x.shape[p] for p in axes)
            out = self.fresh("sum")
            self.nodes.append(
                self.helper.make_node(
                    "Mul",
                    [pooled, self.const(np.asarray(float(count), aval.dtype), "count")],
                    [out],
                    name=self.fresh("Mul"),
                    doc_string="mean_count",
                )
            )
            return _T(out, tuple(aval.shape), aval.dtype, perm)
        out = self.node(op, [x.name, self.ints(phys)], keepdims=0)
        return _T(out, tuple(aval.shape), aval.dtype, perm)

    def p_reduce_sum(self, eqn, aval, x):
        return self._reduce("ReduceSum", eqn, aval, x)

    def p_reduce_max(self, eqn, aval, x):
        return self._reduce("ReduceMax", eqn, aval, x)

    def p_reduce_min(self, eqn, aval, x):
        return self._reduce("ReduceMin", eqn, aval, x)

    def p_reduce_prod(self, eqn, aval, x):
        return self._reduce("ReduceProd", eqn, aval, x)

    def p_argmax(self, eqn, aval, x):
        x = self.materialize(x)
        (axis,) = eqn.params["axes"]
        out = self.node("ArgMax", [x.name], axis=x.perm.index(axis), keepdims=0)
        remaining = [p for p in x.perm if p != axis]
        perm = tuple(p - (p > axis) for p in remaining)
        dtype = np.dtype(eqn.params["index_dtype"])
        if dtype != np.int64:
            out = self.node("Cast", [out], to=self.helper.np_dtype_to_tensor_dtype(dtype))
        return _T(out, tuple(aval.shape), dtype, perm)

    def _pool(self, op: str, eqn, aval, x, **extra):
        x = self.materialize(x)
        rank = len(x.shape)
        params = eqn.params
        window, strides = params["window_dimensions"], params["window_strides"]
        padding = params["padding"]
        if any(d != 1 for d in (*params["base_dilation"], *params["window_dilation"])):
            raise NotImplementedError(f"ONNX export: dilated `{eqn.primitive.name}`")
        pooled = [
            a for a in range(rank) if window[a] != 1 or strides[a] != 1 or padding[a] != (0, 0)
        ]
        if rank < 3 or len(pooled) > rank - 2:
            raise NotImplementedError(
                f"ONNX export: `{eqn.primitive.name}` over axes {pooled} of a rank-{rank} array"
            )
        others = [a for a in range(rank) if a not in pooled]
        spatial = [a for a in range(rank) if a not in others[:2]] if len(others) >= 2 else []
        batch, channel = others[0], others[-1] if len(others) == 2 else others[1]
        spatial = [a for a in range(rank) if a not in (batch, channel)]
        perm = (batch, channel, *spatial)
        name = self.physical(x, perm)
        out = self.node(
            op,
            [name],
            kernel_shape=[window[a] for a in spatial],
            strides=[strides[a] for a in spatial],
            pads=[padding[a][0] for a in spatial] + [padding[a][1] for a in spatial],
            **extra,
        )
        return _T(out, tuple(aval.shape), aval.dtype, perm)

    def p_reduce_window_max(self, eqn, aval, x):
        return self._pool("MaxPool", eqn, aval, x)

    def p_reduce_window_sum(self, eqn, aval, x):
        y = self._pool("AveragePool", eqn, aval, x, count_include_pad=1)
        count = math.prod(eqn.params["window_dimensions"])
        return self.elementwise("Mul", [y, np.asarray(float(count), aval.dtype)], aval)

    # ------------------------------------------------------------------ convolutions

    def weight(self, kernel: Any, order: Sequence[int], out_axis_after: int = 0) -> str:
        """A kernel as an initializer in ``order`` (a ``DequantizeLinear`` of int8 values
        for a fake-quantized one, its scale along the output axis)."""
        if isinstance(kernel, _QConst):
            q = kernel.q.transpose(order)
            if kernel.axis is None:
                scale = self.const(np.asarray(kernel.scale, np.float32), "w_scale")
                zero = self.const(np.asarray(kernel.zero_point), "w_zero_point")
                return self.node("DequantizeLinear", [self.const(q, "w_q"), scale, zero], "w")
            axis = list(order).index(kernel.axis)
            scale = self.const(np.asarray(kernel.scale, np.float32).reshape(-1), "w_scale")
            zero = self.const(np.asarray(kernel.zero_point).reshape(-1), "w_zero_point")
            return self.node(
                "DequantizeLinear", [self.const(q, "w_q"), scale, zero], "w", axis=axis
            )
        return self.const(np.asarray(kernel).transpose(order), "w")

    def p_conv_general_dilated(self, eqn, aval, lhs, rhs):
        params = eqn.params
        if not _is_const(rhs):
            raise NotImplementedError("ONNX export: a convolution with a non-constant kernel")
        if params["batch_group_count"] != 1:
            raise NotImplementedError("ONNX export: a convolution with `batch_group_count` > 1")
        if any(d != 1 for d in params["lhs_dilation"]):
            raise NotImplementedError("ONNX export: a transposed (input-dilated) convolution")
        numbers = params["dimension_numbers"]
        lhs_spec, rhs_spec, out_spec = (
            tuple(numbers.lhs_spec),
            tuple(numbers.rhs_spec),
            tuple(numbers.out_spec),
        )
        if isinstance(lhs, _Flat):
            window_one = (
                lhs_spec == (0, 2, 1)
                and rhs_spec == (2, 1, 0)
                and out_spec == (0, 2, 1)
                and np.shape(_value(rhs))[0] == 1
                and params["feature_group_count"] == 1
                and tuple(params["window_strides"]) == (1,)
                and tuple(map(tuple, params["padding"])) == ((0, 0),)
            )
            if window_one:
                return self.pointwise(lhs, rhs, aval)
            lhs = self.materialize(lhs)
        lhs = self.solid(lhs)
        pads = [lo for lo, _ in params["padding"]] + [hi for _, hi in params["padding"]]
        if any(p < 0 for p in pads):
            raise NotImplementedError("ONNX export: a convolution with negative padding")
        spatial = len(lhs_spec) - 2
        kernel_shape = np.shape(_value(rhs))
        out = self.node(
            "Conv",
            [self.physical(lhs, lhs_spec), self.weight(rhs, rhs_spec)],
            group=int(params["feature_group_count"]),
            strides=list(params["window_strides"]),
            dilations=list(params["rhs_dilation"]),
            pads=pads,
            kernel_shape=[kernel_shape[d] for d in rhs_spec[2:]],
        )
        del spatial
        return _T(out, tuple(aval.shape), aval.dtype, out_spec)

    def pointwise(self, flat: _Flat, rhs: Any, aval: Any) -> _Flat:
        """A window-one convolution over ``(positions, 1, C)``: a 1x1 Conv on the base."""
        base = self.solid(flat.base)
        rank = len(base.shape)
        cout = aval.shape[-1]
        shape = (*base.shape[:-1], cout)
        if rank == 2:
            y = self.gemm(base, rhs, kernel_axes=(1, 2))
        else:
            perm = _channels_first(rank)
            # kernel (1, C_in, C_out) -> (C_out, C_in, 1, ...)
            order = (2, 1, 0)
            name = self.weight(rhs, order)
            if rank - 2 > 1:
                name = self.unsqueeze_weight(name, rank - 3)
            out = self.node(
                "Conv",
                [self.physical(base, perm), name],
                kernel_shape=[1] * (rank - 2),
            )
            y = _T(out, shape, aval.dtype, perm)
        return _Flat(y, tuple(aval.shape), aval.dtype)

    def unsqueeze_weight(self, name: str, extra: int) -> str:
        """A ``(O, I, 1)`` weight with ``extra`` more unit window axes (initializer edit)."""
        for init in self.initializers:
            if init.name == name:
                array = self.onnx.numpy_helper.to_array(init)
                array = array.reshape(array.shape + (1,) * extra)
                init.CopyFrom(self.onnx.numpy_helper.from_array(array, name))
                return name
        # a DequantizeLinear of an initializer
        for node in self.nodes:
            if node.output[0] == name:
                self.unsqueeze_weight(node.input[0], extra)
                return name
        raise AssertionError(name)  # pragma: no cover

    def gemm(self, x: _T, kernel: Any, kernel_axes: tuple[int, int]) -> _T:
        """``x (N, K) @ kernel`` with the kernel's contracted and output axes given."""
        k_axis, m_axis = kernel_axes
        value = _value(kernel)
        others = [a for a in range(np.ndim(value)) if a not in kernel_axes]
        if any(np.shape(value)[a] != 1 for a in others):
            raise NotImplementedError("ONNX export: a dense kernel with more than two axes")
        if others:  # unit axes: squeezed from the constant itself
            kernel = _squeeze(kernel, tuple(others))
            k_axis, m_axis = (a - sum(o < a for o in others) for a in (k_axis, m_axis))
            value = _value(kernel)
        name = self.weight(kernel, (m_axis, k_axis))
        out = self.node("Gemm", [self.physical(x, (0, 1)), name], transB=1)
        return _T(out, (x.shape[0], np.shape(value)[m_axis]), x.dtype, (0, 1))

    def p_dot_general(self, eqn, aval, lhs, rhs):
        (lc, rc), (lb, _rb) = eqn.params["dimension_numbers"]
        if isinstance(lhs, _Flat):
            lhs = self.materialize(lhs)
        if (
            not _is_const(lhs)
            and _is_const(rhs)
            and not lb
            and len(lc) == 1
            and np.ndim(_value(rhs)) == 2
        ):
            lhs = self.solid(lhs)
            (c,) = lc
            (k,) = rc
            m = 1 - k
            rank = len(lhs.shape)
            if rank == 2:
                if c == 1:
                    return self.gemm(lhs, rhs, (k, m))
                return self.gemm(
                    _T(lhs.name, lhs.shape[::-1], lhs.dtype, lhs.perm[::-1]), rhs, (k, m)
                )
            if c == rank - 1 and rank >= 3:
                perm = _channels_first(rank)
                name = self.weight(rhs, (m, k))
                name = self.unsqueeze_weight(name, rank - 2)
                out = self.node(
                    "Conv", [self.physical(lhs, perm), name], kernel_shape=[1] * (rank - 2)
                )
                return _T(out, tuple(aval.shape), aval.dtype, perm)
        return self.einsum(eqn, aval, lhs, rhs)

    def einsum(self, eqn, aval, lhs, rhs):
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        lhs, rhs = self.materialize(lhs), self.materialize(rhs)
        letters = iter("abcdefghijklmnopqrstuvwxyz")
        left = [""] * len(lhs.shape)
        right = [""] * len(rhs.shape)
        batch = []
        for a, b in zip(lb, rb, strict=True):
            left[a] = right[b] = next(letters)
            batch.append(left[a])
        for a, b in zip(lc, rc, strict=True):
            left[a] = right[b] = next(letters)
        free_l = [a for a in range(len(left)) if not left[a]]
        free_r = [b for b in range(len(right)) if not right[b]]
        for a in free_l:
            left[a] = next(letters)
        for b in free_r:
            right[b] = next(letters)
        out = batch + [left[a] for a in free_l] + [right[b] for b in free_r]
        equation = (
            "".join(left[p] for p in lhs.perm)
            + ","
            + "".join(right[p] for p in rhs.perm)
            + "->"
            + "".join(out)
        )
        name = self.node("Einsum", [lhs.name, rhs.name], equation=equation)
        return _T(name, tuple(aval.shape), aval.dtype, _identity(len(aval.shape)))

    # ------------------------------------------------------------------ quantization

    def fake_quant(self, eqn, x, scale, zero_point):
        params = eqn.params
        axis, qmin, qmax = params["axis"], params["qmin"], params["qmax"]
        if not (_is_const(scale) and _is_const(zero_point)):
            raise NotImplementedError("ONNX export: a fake quantization with traced scales")
        scale = np.asarray(scale, np.float32)
        zero_point = np.asarray(zero_point)
        if _is_const(x):
            value = np.asarray(_value(x), np.float32)
            shape = [1] * value.ndim
            if axis is not None:
                shape[axis] = -1
            s, z = scale.reshape(shape), zero_point.astype(np.float32).reshape(shape)
            q = np.clip(np.round(value / s) + z, qmin, qmax).astype(zero_point.dtype)
            return _QConst(q, scale, zero_point, axis, value.dtype)
        aval = eqn.outvars[0].aval
        if isinstance(x, _Flat) and axis is None:
            base = x.base
            q = self.node(
                "QuantizeLinear",
                [base.name, self.const(scale, "scale"), self.const(zero_point, "zero_point")],
            )
            dq = self.node(
                "DequantizeLinear",
                [q, self.const(scale, "scale"), self.const(zero_point, "zero_point")],
            )
            return _Flat(
                _T(dq, base.shape, base.dtype, base.perm, base.broadcast), x.shape, x.dtype
            )
        x = self.materialize(x)
        attrs = {} if axis is None else {"axis": x.perm.index(axis)}
        q = self.node(
            "QuantizeLinear",
            [x.name, self.const(scale, "scale"), self.const(zero_point, "zero_point")],
            **attrs,
        )
        dq = self.node(
            "DequantizeLinear",
            [q, self.const(scale, "scale"), self.const(zero_point, "zero_point")],
            **attrs,
        )
        return _T(dq, tuple(aval.shape), aval.dtype, x.perm, x.broadcast)


@dataclasses.dataclass
class _Params:
    new_sizes: tuple[int, ...]

    @property
    def params(self) -> dict[str, Any]:
        return {"new_sizes": self.new_sizes}


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
    re-quantization with the same parameters, and none in front of a Clip/Relu whose
    output is quantized."""
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
