"""The depthwise convolution as a first-class JAX operation.

A depthwise convolution ``y = f(x, k)`` is bilinear: linear in the input ``x`` for a
fixed kernel ``k``, and in ``k`` for a fixed ``x``. Three primitives carry it and
its two transposes, so that every JAX transformation sees one named operation
instead of the loops or convolutions that implement it:

=============================== ================ ===================================
primitive                       computes         transposes (w.r.t. 1st, 2nd arg)
=============================== ================ ===================================
``depthwise_conv``              ``f(x, k) -> y`` ``depthwise_conv_input_transpose``,
                                                 ``depthwise_conv_kernel_transpose``
``depthwise_conv_input_         ``g, k -> dx``   ``depthwise_conv``,
transpose``                                      ``depthwise_conv_kernel_transpose``
``depthwise_conv_kernel_        ``x, g -> dk``   ``depthwise_conv_input_transpose``,
transpose``                                      ``depthwise_conv``
=============================== ================ ===================================

* **Forward mode** (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``, ``jax.linearize``):
  the tangent of a bilinear map is the map itself, ``f(dx, k) + f(x, dk)``
  (:func:`jax.interpreters.ad.defbilinear`), so forward mode runs the same kernel as
  the primal, whichever it is.
* **Reverse mode**: each primitive transposes into the other two (the table), and
  each of those is again bilinear, so every order of differentiation stays inside
  the three primitives.
* **vmap**: a batch of inputs is folded into the convolution's batch dim; a batch
  of kernels (per-example weights) into its channels, which gives one depthwise
  convolution over ``B * C`` channels rather than a loop or a dense convolution.
* **Lowering**: each primitive has one lowering rule per platform (``cpu``,
  ``cuda``, ``rocm``, ``tpu``). The rule asks :mod:`sepconv_jax.kernels.dispatch`
  which kernel to run for that platform, so one traced function, jitted or
  exported for several platforms, carries each platform's best kernel.

Every primitive takes the same static parameters:

* ``spec``: the :class:`~sepconv_jax._spec.ConvSpec` of the flattened problem (one
  batch dim, zero padding; ``ops`` has applied any other ``padding_mode``);
* ``impl``: a kernel name from :data:`sepconv_jax.kernels.dispatch.KERNELS`, or
  ``"auto"`` to choose per platform when lowering;
* ``precision`` and ``preferred_element_type``: as given to the public function;
* ``out_dtype``: the result's dtype (the primal's dtype for a transpose).

A new kernel plugs in as a :class:`sepconv_jax.kernels.dispatch.Kernel` with its
three maps; nothing here changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore
from jax.interpreters import ad, batching, mlir

from sepconv_jax._spec import ConvSpec
from sepconv_jax.kernels import dispatch
from sepconv_jax.kernels._jax_compat import (
    lower_with_devices,
    lowering_for_export,
    match_manual_axes,
)

__all__ = [
    "PLATFORMS",
    "PRIMITIVES",
    "depthwise",
    "forward_p",
    "input_transpose_p",
    "kernel_transpose_p",
]

#: The platforms that get a lowering rule of their own. Any other platform uses the
#: default rule, which runs the ``"xla"`` kernel (or an explicit ``impl``).
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")

forward_p = jcore.Primitive("depthwise_conv")
input_transpose_p = jcore.Primitive("depthwise_conv_input_transpose")
kernel_transpose_p = jcore.Primitive("depthwise_conv_kernel_transpose")

#: The three primitives by the name of the map each computes.
PRIMITIVES = {
    "forward": forward_p,
    "input_transpose": input_transpose_p,
    "kernel_transpose": kernel_transpose_p,
}


# ----------------------------------------------------------------------------- shapes


def _x_shape(spec: ConvSpec) -> tuple[int, ...]:
    return spec.flat_shape(spec.in_spatial, spec.in_channels)


def _y_shape(spec: ConvSpec) -> tuple[int, ...]:
    return spec.flat_shape(spec.out_spatial, spec.out_channels)


def _kernel_shape(spec: ConvSpec) -> tuple[int, ...]:
    return (*spec.window, 1, spec.out_channels)


_RESULT_SHAPE = {
    forward_p: _y_shape,
    input_transpose_p: _x_shape,
    kernel_transpose_p: _kernel_shape,
}
# The shapes each primitive's two operands must have.
_OPERAND_SHAPES = {
    forward_p: (_x_shape, _kernel_shape),
    input_transpose_p: (_y_shape, _kernel_shape),
    kernel_transpose_p: (_x_shape, _y_shape),
}


def _abstract_eval(a, b, *, prim, spec, impl, precision, preferred_element_type, out_dtype):
    del impl, precision, preferred_element_type
    for operand, shape_of in zip((a, b), _OPERAND_SHAPES[prim], strict=True):
        if tuple(operand.shape) != shape_of(spec):  # pragma: no cover - a bug, not user input
            raise ValueError(
                f"{prim.name}: operand shape {operand.shape} does not fit the spec "
                f"(expected {shape_of(spec)})"
            )
    # The result is laid out like the first operand (an activation), except the
    # kernel transpose's, which is a kernel: replicated. Deriving it from the
    # operand's aval keeps what the aval carries besides shape and dtype (the mesh,
    # and under shard_map the manual axes the value varies over; `_bind` has made
    # both operands vary over the same ones).
    sharding = a.sharding
    if prim is kernel_transpose_p:
        sharding = sharding.update(spec=jax.sharding.PartitionSpec())
    return a.update(
        shape=_RESULT_SHAPE[prim](spec), dtype=out_dtype, weak_type=False, sharding=sharding
    )


for _prim in PRIMITIVES.values():
    _prim.def_abstract_eval(functools.partial(_abstract_eval, prim=_prim))


# ----------------------------------------------------------------------------- binding


def _bind(prim: jcore.Primitive, a, b, **params) -> jax.Array:
    """Binds ``prim`` with both operands varying over the same ``shard_map`` axes."""
    return prim.bind(*match_manual_axes(a, b), **params)


def _canonical_precision(precision: Any) -> Any:
    """A hashable form of ``precision`` (lists become tuples)."""
    if isinstance(precision, list):
        return tuple(precision)
    return precision


def depthwise(
    x: jax.Array,
    kernel: jax.Array,
    spec: ConvSpec,
    *,
    impl: str,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """Binds the forward primitive on flattened, promoted, zero-padded-or-not input.

    Args:
      x: ``spec.flat_shape(spec.in_spatial, spec.in_channels)``.
      kernel: ``(*spec.window, 1, spec.out_channels)``, the same dtype as ``x``.
      spec: the resolved convolution; its ``padding`` is zero padding.
      impl: ``"auto"`` or a kernel name; overrides of ``"auto"``
        (:func:`~sepconv_jax.kernels.dispatch.default_impl`) are applied here.
      precision, preferred_element_type: as in :func:`sepconv_jax.depthwise_conv`.

    Returns:
      ``spec.flat_shape(spec.out_spatial, spec.out_channels)``, of dtype
      ``preferred_element_type`` or ``x.dtype``.
    """
    spec = dataclasses.replace(spec, batch_shape=(x.shape[0],), padding_mode="zeros")
    preferred = None if preferred_element_type is None else np.dtype(preferred_element_type)
    return _bind(
        forward_p,
        x,
        kernel,
        spec=spec,
        impl=dispatch.resolve_override(impl),
        precision=_canonical_precision(precision),
        preferred_element_type=preferred,
        out_dtype=preferred or np.dtype(x.dtype),
    )


# ----------------------------------------------------------------------------- autodiff


def _transposes(first, second):
    """The two transpose rules of a bilinear primitive: ``first`` w.r.t. its first
    operand and ``second`` w.r.t. its second, each a function of
    ``(cotangent, the other operand)`` binding another primitive."""

    def lhs(ct, a, b, **params):
        return first(ct, b, dict(params, out_dtype=np.dtype(a.aval.dtype)))

    def rhs(ct, a, b, **params):
        return second(ct, a, dict(params, out_dtype=np.dtype(b.aval.dtype)))

    return lhs, rhs


# forward(x, k) -> y.  dx = input_transpose(ct, k);  dk = kernel_transpose(x, ct).
ad.defbilinear(
    forward_p,
    *_transposes(
        lambda ct, k, p: _bind(input_transpose_p, ct, k, **p),
        lambda ct, x, p: _bind(kernel_transpose_p, x, ct, **p),
    ),
)
# input_transpose(g, k) -> dx.  dg = forward(ct, k);  dk = kernel_transpose(ct, g).
ad.defbilinear(
    input_transpose_p,
    *_transposes(
        lambda ct, k, p: _bind(forward_p, ct, k, **p),
        lambda ct, g, p: _bind(kernel_transpose_p, ct, g, **p),
    ),
)
# kernel_transpose(x, g) -> dk.  dx = input_transpose(g, ct);  dg = forward(x, ct).
ad.defbilinear(
    kernel_transpose_p,
    *_transposes(
        lambda ct, g, p: _bind(input_transpose_p, g, ct, **p),
        lambda ct, x, p: _bind(forward_p, x, ct, **p),
    ),
)


# ----------------------------------------------------------------------------- vmap

# Which operands are activations (batch, spatial, channel dims) and which are kernels.
_ROLES = {
    forward_p: ("activation", "kernel"),
    input_transpose_p: ("activation", "kernel"),
    kernel_transpose_p: ("activation", "activation"),
}


def _fold_channels(a: jax.Array, role: str, spec: ConvSpec) -> jax.Array:
    """``(B, ...)`` -> the same operand with ``B`` folded into its channel dim.

    Channel ``b * C + c`` of the folded input is channel ``c`` of example ``b``, so
    output channel ``(b * C + c) * M + m`` is channel ``c * M + m`` of example ``b``.
    """
    if role == "kernel":  # (B, *window, 1, C*M) -> (*window, 1, B*C*M)
        a = jnp.moveaxis(a, 0, -2)
        return a.reshape(*a.shape[:-2], a.shape[-2] * a.shape[-1])
    if spec.channels_last:  # (B, N, *spatial, C) -> (N, *spatial, B*C)
        a = jnp.moveaxis(a, 0, -2)
        return a.reshape(*a.shape[:-2], a.shape[-2] * a.shape[-1])
    a = jnp.moveaxis(a, 0, 1)  # (B, N, C, *spatial) -> (N, B*C, *spatial)
    return a.reshape(a.shape[0], a.shape[1] * a.shape[2], *a.shape[3:])


def _batch_rule(args, dims, *, prim, spec, **params):
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    args = [a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims, strict=True)]
    mapped = [d is not None for d in dims]
    roles = _ROLES[prim]
    if prim is not kernel_transpose_p and mapped == [True, False]:
        # A batch of inputs under one kernel: fold the batch into the conv's batch dim.
        a, b = args
        folded = dataclasses.replace(spec, batch_shape=(size * a.shape[1],))
        out = prim.bind(a.reshape(size * a.shape[1], *a.shape[2:]), b, spec=folded, **params)
        return out.reshape(size, -1, *out.shape[1:]), 0
    # Per-example kernels (or a kernel transpose, whose result is per example): fold
    # the batch into the channels, broadcasting an unbatched operand.
    args = [
        a if m else jnp.broadcast_to(a, (size, *a.shape)) for a, m in zip(args, mapped, strict=True)
    ]
    folded = dataclasses.replace(
        spec,
        in_channels=size * spec.in_channels,
        out_channels=size * spec.out_channels,
        groups=size * spec.groups,
    )
    out = prim.bind(
        *(_fold_channels(a, role, spec) for a, role in zip(args, roles, strict=True)),
        spec=folded,
        **params,
    )
    # Unfold: the result's channel dim C'*M splits into (B, C*M); B is the batch dim.
    if prim is kernel_transpose_p or spec.channels_last:
        axis = out.ndim - 1
    else:
        axis = 1
    shape = list(out.shape)
    shape[axis : axis + 1] = [size, out.shape[axis] // size]
    return out.reshape(shape), axis


for _prim in PRIMITIVES.values():
    batching.primitive_batchers[_prim] = functools.partial(_batch_rule, prim=_prim)


# ----------------------------------------------------------------------------- lowering


def _lowering(map_name: str, platform: str | None):
    # The primitive's name becomes a name scope of the operations it lowers to, so
    # that a profile (benchmarks/gpu_profile.py) tells the three maps apart.
    scope = PRIMITIVES[map_name].name

    def rule(ctx, a, b, *, spec, impl, precision, preferred_element_type, out_dtype):
        kernel = dispatch.kernel_for(impl, spec, platform, for_export=lowering_for_export(ctx))
        compute = functools.partial(
            getattr(kernel, map_name),
            spec=spec,
            platform=platform,
            precision=precision,
            preferred_element_type=preferred_element_type,
            out_dtype=out_dtype,
        )

        def scoped(a, b):
            with jax.named_scope(scope):
                return compute(a, b)

        context = kernel.lowering_context
        with contextlib.nullcontext() if context is None else context(platform):
            return mlir.lower_fun(scoped, multiple_results=False)(ctx, a, b)

    return rule


# The Pallas maps are partitioned per device (see pallas._partitioned), which needs
# the devices known when lowering.
lower_with_devices(*PRIMITIVES.values())
for _name, _prim in PRIMITIVES.items():
    mlir.register_lowering(_prim, _lowering(_name, None))
    for _platform in PLATFORMS:
        mlir.register_lowering(_prim, _lowering(_name, _platform), platform=_platform)


# ----------------------------------------------------------------------------- eager


@functools.lru_cache(maxsize=256)
def _compiled(prim: jcore.Primitive, params: tuple[tuple[str, Any], ...]):
    return jax.jit(functools.partial(prim.bind, **dict(params)))


def _eager(a, b, *, prim, **params):
    return _compiled(prim, tuple(sorted(params.items())))(a, b)


for _prim in PRIMITIVES.values():
    _prim.def_impl(functools.partial(_eager, prim=_prim))
