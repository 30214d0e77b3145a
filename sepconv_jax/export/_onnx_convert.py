"""The equation-by-equation converter of the ONNX emitter (:mod:`sepconv_jax.export._emit`):
each jaxpr primitive written as ONNX nodes, activations kept in NCHW."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

from sepconv_jax.export._onnx_base import (
    _BINARY,
    _IDENTITY,
    _T,
    _UNARY,
    _channels_first,
    _Emitter,
    _Flat,
    _identity,
    _inverse,
    _is_const,
    _QConst,
    _squeeze,
    _value,
)
from sepconv_jax.export._rewrite import _INLINE, bind


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
        return [np.asarray(o) for o in bind(eqn.primitive, eqn.params, values)]

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
