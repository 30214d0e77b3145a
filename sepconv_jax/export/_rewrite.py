"""Rewrites a traced function so that every depthwise step is a grouped convolution.

The depthwise convolution is a JAX primitive of ours (:mod:`sepconv_jax.kernels.op`),
lowered per platform: on CPU to shifted multiply-adds (slices), elsewhere to
``lax.conv_general_dilated`` with one feature group per channel. An exporter that
reads jaxprs (our ONNX emitter) does not know our primitive, and one that reads lowered
StableHLO (jax2tf) would see the CPU loop of slices. For export we evaluate the
function's jaxpr with each of our three primitives replaced by the reference
kernel's map (:mod:`sepconv_jax.kernels.xla`), so the exporter sees one
``conv_general_dilated(feature_group_count=C)`` per depthwise layer: an ONNX
``Conv`` with ``group = C``, a TFLite ``DEPTHWISE_CONV_2D``. The separable
primitive (:mod:`sepconv_jax.kernels.separable`, both steps in one operation) is
written as its unfused pair: that grouped convolution, then the 1x1 step.

Everything else is bound again unchanged. Sub-jaxprs that hold one of our
primitives are inlined (``jit``, ``closed_call``, ``remat``, ``custom_jvp_call``,
``custom_vjp_call``: export only needs the forward computation) or rebuilt with the
rewritten body (``cond``, ``while``, ``scan`` and any other primitive whose
sub-jaxprs are closed); anything else raises a :class:`NotImplementedError` that
names the primitive.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore

from sepconv_jax.kernels import op as _op
from sepconv_jax.kernels import separable as _separable
from sepconv_jax.kernels import xla as _xla

__all__ = ["contains_depthwise", "depthwise_equations", "reference_kernels"]

_MAPS = {prim: name for name, prim in _op.PRIMITIVES.items()}
_OURS = (*_MAPS, _separable.separable_p)

# Primitives whose body is inlined: a call boundary, or a custom derivative rule
# that an exported forward pass does not need. Parameter holding the body.
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


def _subjaxprs(jaxpr: jcore.Jaxpr) -> list[jcore.Jaxpr]:
    return [sub for eqn in jaxpr.eqns for sub in jcore.jaxprs_in_params(eqn.params)]


def contains_depthwise(jaxpr: jcore.Jaxpr | jcore.ClosedJaxpr) -> bool:
    """Whether ``jaxpr`` or any of its sub-jaxprs binds one of our depthwise primitives."""
    inner = jaxpr.jaxpr if isinstance(jaxpr, jcore.ClosedJaxpr) else jaxpr
    if any(eqn.primitive in _OURS for eqn in inner.eqns):
        return True
    return any(contains_depthwise(sub) for sub in _subjaxprs(inner))


def depthwise_equations(jaxpr: jcore.Jaxpr | jcore.ClosedJaxpr) -> list[jcore.JaxprEqn]:
    """Every equation binding one of our depthwise primitives, sub-jaxprs included."""
    inner = jaxpr.jaxpr if isinstance(jaxpr, jcore.ClosedJaxpr) else jaxpr
    found = [eqn for eqn in inner.eqns if eqn.primitive in _OURS]
    for sub in _subjaxprs(inner):
        found.extend(depthwise_equations(sub))
    return found


def _reference(eqn: jcore.JaxprEqn, a: Any, b: Any) -> jax.Array:
    """One of our primitives, computed by the reference kernel's map of the same name."""
    params = eqn.params
    compute = getattr(_xla, _MAPS[eqn.primitive])
    return compute(
        a,
        b,
        params["spec"],
        platform=None,
        precision=params["precision"],
        preferred_element_type=params["preferred_element_type"],
        out_dtype=params["out_dtype"],
    )


def _separable_reference(eqn: jcore.JaxprEqn, x: Any, dk: Any, pk: Any) -> jax.Array:
    """The separable primitive as its unfused pair: the grouped convolution (the
    intermediate rounded to ``x``'s dtype, as the unfused lowering has it), then the
    1x1 step as :func:`sepconv_jax.pointwise_conv` computes it."""
    params = eqn.params
    preferred = params["preferred_element_type"]
    mid = _xla.forward(
        x,
        dk,
        params["spec"],
        platform=None,
        precision=params["precision"],
        preferred_element_type=preferred,
        out_dtype=preferred or x.dtype,
    ).astype(x.dtype)
    y = _separable.pointwise(
        mid, pk, params["spec"], precision=params["precision"], preferred_element_type=preferred
    )
    return y.astype(params["out_dtype"])


def _rewrite_closed(closed: jcore.ClosedJaxpr) -> jcore.ClosedJaxpr:
    """``closed`` with its depthwise primitives replaced, same signature."""
    if not contains_depthwise(closed):
        return closed
    avals = [v.aval for v in closed.jaxpr.invars]
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type) for a in avals]
    return jax.make_jaxpr(lambda *args: _eval(closed.jaxpr, closed.consts, args))(*specs)


def _rewrite_param(value: Any, prim_name: str) -> Any:
    if isinstance(value, jcore.ClosedJaxpr):
        return _rewrite_closed(value)
    if isinstance(value, tuple | list) and any(isinstance(v, jcore.ClosedJaxpr) for v in value):
        return type(value)(_rewrite_param(v, prim_name) for v in value)
    if isinstance(value, jcore.Jaxpr) and contains_depthwise(value):
        raise NotImplementedError(
            f"cannot rewrite the depthwise convolution inside `{prim_name}` (an open "
            f"sub-jaxpr) for export; export the function without this transformation, or "
            f"trace it with impl='xla' on a platform that lowers to the grouped convolution"
        )
    return value


_POOL_AS_SLICES: list[bool] = [False]


@contextlib.contextmanager
def _options(pool_as_slices: bool) -> Iterator[None]:
    _POOL_AS_SLICES.append(pool_as_slices)
    try:
        yield
    finally:
        _POOL_AS_SLICES.pop()


def _is_channels_last_pool(eqn: jcore.JaxprEqn) -> bool:
    params = eqn.params
    window = params["window_dimensions"]
    return (
        eqn.primitive.name == "reduce_window_max"
        and len(window) >= 3
        and window[0] == 1
        and window[-1] == 1
        and params["window_strides"][0] == 1
        and params["window_strides"][-1] == 1
        and all(d == 1 for d in params["base_dilation"])
        and all(d == 1 for d in params["window_dilation"])
    )


def _pool_as_slices(eqn: jcore.JaxprEqn, x: jax.Array) -> jax.Array:
    """``reduce_window_max`` as the maximum of strided slices of the padded input."""
    params = eqn.params
    window, strides = params["window_dimensions"], params["window_strides"]
    x = lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(lo, hi, 0) for lo, hi in params["padding"]])
    out_aval: Any = eqn.outvars[0].aval
    parts = []
    for offsets in itertools.product(*(range(w) for w in window)):
        start = list(offsets)
        limit = [
            o + (n - 1) * s + 1 for o, n, s in zip(offsets, out_aval.shape, strides, strict=True)
        ]
        parts.append(lax.slice(x, start, limit, strides))
    return functools.reduce(jnp.maximum, parts)


def is_window1_conv(eqn: jcore.JaxprEqn) -> bool:
    """A 1x1 step as :func:`sepconv_jax.pointwise_conv` writes it: a window-1 1-D
    convolution of ``(positions, 1, C)`` with ``(1, C, N)``, channels last."""
    if eqn.primitive.name != "conv_general_dilated":
        return False
    params = eqn.params
    lhs: Any = eqn.invars[0].aval
    rhs: Any = eqn.invars[1].aval
    numbers = params["dimension_numbers"]
    return (
        len(lhs.shape) == 3
        and lhs.shape[1] == 1
        and tuple(rhs.shape[:1]) == (1,)
        and tuple(numbers.lhs_spec) == (0, 2, 1)
        and tuple(numbers.rhs_spec) == (2, 1, 0)
        and tuple(numbers.out_spec) == (0, 2, 1)
        and params["feature_group_count"] == 1
        and params["batch_group_count"] == 1
        and tuple(params["window_strides"]) == (1,)
        and tuple(params["padding"]) == ((0, 0),)
        and tuple(params["lhs_dilation"]) == (1,)
        and tuple(params["rhs_dilation"]) == (1,)
    )


def _is_pointwise_over_batch(eqn: jcore.JaxprEqn) -> bool:
    """A 1x1 step written as a window-1 convolution whose batch dim holds the positions.

    :func:`sepconv_jax.pointwise_conv` (channels-last) flattens ``(*batch, *spatial, C)``
    to ``(positions, 1, C)``: one batch element per position, a length-1 window. An
    ONNX runtime runs such a ``Conv`` one batch element at a time (a matrix-vector
    product per position), far slower than one matrix product.
    """
    lhs: Any = eqn.invars[0].aval
    return is_window1_conv(eqn) and lhs.shape[0] > 1


def _pointwise_over_positions(eqn: jcore.JaxprEqn, x: Any, kernel: Any) -> jax.Array:
    """The same 1x1 step with the positions as its spatial dim: ``(1, positions, C)``."""
    params = eqn.params
    y = lax.conv_general_dilated(
        x.reshape(1, x.shape[0], x.shape[2]),
        kernel,
        window_strides=(1,),
        padding=((0, 0),),
        dimension_numbers=("NWC", "WIO", "NWC"),
        precision=params["precision"],
        preferred_element_type=params["preferred_element_type"],
    )
    return y.reshape(x.shape[0], 1, y.shape[-1])


def _eval_eqn(eqn: jcore.JaxprEqn, invals: list[Any]) -> list[Any]:
    prim = eqn.primitive
    if _POOL_AS_SLICES[-1] and _is_pointwise_over_batch(eqn):
        return [_pointwise_over_positions(eqn, *invals)]
    if prim in _MAPS:
        return [_reference(eqn, *invals)]
    if prim is _separable.separable_p:
        return [_separable_reference(eqn, *invals)]
    if _POOL_AS_SLICES[-1] and prim.name == "reduce_window_max" and _is_channels_last_pool(eqn):
        return [_pool_as_slices(eqn, *invals)]
    subs = jcore.jaxprs_in_params(eqn.params)
    if subs and any(contains_depthwise(sub) for sub in subs):
        body_name = _INLINE.get(prim.name)
        if body_name is not None and body_name in eqn.params:
            body = eqn.params[body_name]
            if isinstance(body, jcore.ClosedJaxpr):
                return _eval(body.jaxpr, body.consts, invals)
            return _eval(body, (), invals)
        params = {k: _rewrite_param(v, prim.name) for k, v in eqn.params.items()}
    else:
        params = eqn.params
    return bind(prim, params, invals)


def bind(prim: Any, params: dict[str, Any], invals: Sequence[Any]) -> list[Any]:
    """``prim`` bound to ``invals`` with an equation's ``params``; its outputs as a list."""
    bind_params = prim.get_bind_params(params)
    if isinstance(bind_params, tuple):  # JAX before 0.7: (subfuns, params)
        subfuns, bind_params = bind_params
        out = prim.bind(*subfuns, *invals, **bind_params)
    else:
        out = prim.bind(*invals, **bind_params)
    return list(out) if prim.multiple_results else [out]


def _eval(jaxpr: jcore.Jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    env: dict[jcore.Var, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        outs = _eval_eqn(eqn, [read(v) for v in eqn.invars])
        for var, value in zip(eqn.outvars, outs, strict=True):
            if not isinstance(var, jcore.DropVar):
                env[var] = value
    return [read(v) for v in jaxpr.outvars]


def reference_kernels(
    fn: Callable[..., Any], *example_args: Any, pool_as_slices: bool = False
) -> Callable[..., Any]:
    """``fn`` traced at ``example_args`` and rewritten to use the reference kernel.

    Args:
      fn: a function of arrays (positional) returning an array or a pytree of arrays.
      *example_args: arrays or :class:`jax.ShapeDtypeStruct` fixing the shapes and
        dtypes ``fn`` is traced at.
      pool_as_slices: also write each channels-last max pooling (``reduce_window_max``
        with a window of 1 over the first and last dims) as the maximum of its
        strided window slices, in ops every runtime has (no exporter of ours
        needs it now; kept for converters that cannot write a pooling). The same
        flag also writes each channels-last 1x1 step, a window-1 convolution over
        ``(positions, 1, C)``, over ``(1, positions, C)`` instead: the same 1x1
        ``Conv``, with the positions as its spatial dim rather than its batch, which
        onnxruntime runs as one matrix product instead of one per position.

    Returns:
      A function of the same arguments computing the same values, in which every
      depthwise primitive of ours is ``lax.conv_general_dilated`` with
      ``feature_group_count`` (its transposes: the reference transposes).

    Raises:
      NotImplementedError: when a depthwise step sits in a sub-jaxpr that cannot be
        rewritten (named in the message).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax import depthwise_conv
      >>> from sepconv_jax.export._rewrite import reference_kernels
      >>> f = lambda x: depthwise_conv(x, jnp.ones((3, 3, 1, 4)))
      >>> x = jnp.ones((1, 6, 6, 4))
      >>> g = reference_kernels(f, x)
      >>> [(e.primitive.name, e.params["feature_group_count"])
      ...  for e in jax.make_jaxpr(g)(x).jaxpr.eqns if "conv" in e.primitive.name]
      [('conv_general_dilated', 4)]
      >>> bool(jnp.allclose(g(x), f(x)))
      True
    """
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*example_args)
    out_tree = jax.tree.structure(out_shape)

    def rewritten(*args: Any) -> Any:
        with _options(pool_as_slices):
            outs = _eval(closed.jaxpr, closed.consts, jax.tree.leaves(args))
        return jax.tree.unflatten(out_tree, outs)

    return rewritten
