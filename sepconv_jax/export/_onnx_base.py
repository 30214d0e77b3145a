"""The pieces of the ONNX emitter (:mod:`sepconv_jax.export._emit`): the layout-tracked
tensor record, the primitive tables and the node writer its converter builds on."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

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
