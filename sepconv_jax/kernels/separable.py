"""The depthwise separable convolution as one JAX operation.

``z = separable(x, dk, pk) = pointwise(depthwise(x, dk), pk)`` is linear in each of
its three operands (trilinear). One primitive, ``separable_conv``, carries it, so
that the layer can be lowered either as the unfused pair or as one fused kernel,
chosen per platform **when lowered** (:func:`sepconv_jax.kernels.dispatch.separable_is_fused`):

* unfused: the platform's depthwise kernel (:mod:`sepconv_jax.kernels.dispatch`),
  the intermediate rounded to the inputs' dtype, then the 1x1 step as
  :func:`sepconv_jax.pointwise_conv` computes it, exactly what the two calls do;
* fused: :mod:`sepconv_jax.kernels.pallas_fused`, which keeps the ``C * M``
  intermediate on chip in float32 and never writes it to memory.

Transformations:

* **Forward mode**: the tangent of a trilinear map is the sum of three terms, each
  the same primitive with one operand replaced by its tangent (symbolic zeros
  skipped), so ``jax.jvp``, ``jacfwd`` and ``hessian`` run the same kernel as the
  primal.
* **Reverse mode**: each transpose (exactly one operand unknown) is written with
  the depthwise primitives of :mod:`sepconv_jax.kernels.op` and a 1x1 contraction::

      dx  = depthwise_input_transpose(ct @ pk^T, dk)
      ddk = depthwise_kernel_transpose(x, ct @ pk^T)
      dpk = depthwise(x, dk)^T ct

  with the intermediate ``depthwise(x, dk)`` recomputed rather than stored. Those
  are again primitives with transposes, so every order of differentiation works.
* **vmap**: a batch of inputs folds into the batch dim and stays one (fused)
  primitive; per-example kernels run the unfused pair under ``jax.vmap``, where the
  depthwise primitive folds them into its channels and the 1x1 step into feature
  groups (no Python loop).
* **shard_map**: operands are made to vary over the same manual axes before binding,
  as for the depthwise primitives.

Static parameters: ``spec`` (the depthwise step of the flattened problem: one batch
dim, zero padding), ``impl`` (a name of
:data:`sepconv_jax.kernels.dispatch.IMPLS`, the override in force already applied),
``precision``, ``preferred_element_type``, ``out_dtype`` and ``blocks`` (the fused
kernel's tiles, ``None`` for the default).

Operands: ``x`` and ``dk`` share one dtype (the intermediate's in the unfused
path); ``pk`` has the pointwise step's compute dtype, which the output has unless
``preferred_element_type`` is given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore
from jax.interpreters import ad, batching, mlir

from sepconv_jax._spec import ConvSpec
from sepconv_jax.kernels import dispatch, op, pallas_fused
from sepconv_jax.kernels._jax_compat import (
    lower_with_devices,
    lowering_for_export,
    match_manual_axes,
    quiet_triton_deprecation,
    varies_over_manual_axes,
)

__all__ = ["PLATFORMS", "pointwise", "separable", "separable_p"]

#: The platforms that get a lowering rule of their own (as for the depthwise op).
PLATFORMS = op.PLATFORMS

separable_p = jcore.Primitive("separable_conv")


# ----------------------------------------------------------------------------- shapes


def _shapes(spec: ConvSpec, pk_shape: tuple[int, ...]):
    out_channels = pk_shape[1]
    return {
        "x": spec.flat_shape(spec.in_spatial, spec.in_channels),
        "depthwise_kernel": (*spec.window, 1, spec.out_channels),
        "pointwise_kernel": (spec.out_channels, out_channels),
        "out": spec.flat_shape(spec.out_spatial, out_channels),
    }


def _abstract_eval(x, dk, pk, *, spec, impl, precision, preferred_element_type, out_dtype, blocks):
    del impl, precision, preferred_element_type, blocks
    shapes = _shapes(spec, pk.shape)
    for name, aval in (("x", x), ("depthwise_kernel", dk), ("pointwise_kernel", pk)):
        if tuple(aval.shape) != shapes[name]:  # pragma: no cover - a bug, not user input
            raise ValueError(
                f"separable_conv: `{name}` has shape {aval.shape}, the spec needs {shapes[name]}"
            )
    if dk.dtype != x.dtype:  # pragma: no cover - ops promotes both to one dtype
        raise ValueError(f"separable_conv: `x` is {x.dtype} but `depthwise_kernel` {dk.dtype}")
    return x.update(shape=shapes["out"], dtype=out_dtype, weak_type=False, sharding=x.sharding)


separable_p.def_abstract_eval(_abstract_eval)


# ----------------------------------------------------------------------------- binding


def _bind(x, dk, pk, **params) -> jax.Array:
    return separable_p.bind(*match_manual_axes(x, dk, pk), **params)


def _canonical_precision(precision: Any) -> Any:
    return tuple(precision) if isinstance(precision, list) else precision


def separable(
    x: jax.Array,
    depthwise_kernel: jax.Array,
    pointwise_kernel: jax.Array,
    spec: ConvSpec,
    *,
    impl: str,
    precision: Any = None,
    preferred_element_type: Any = None,
    blocks: pallas_fused.Blocks | None = None,
) -> jax.Array:
    """Binds the separable primitive on flattened, promoted, zero-padded-or-not input.

    Args:
      x: ``spec.flat_shape(spec.in_spatial, spec.in_channels)``.
      depthwise_kernel: ``(*spec.window, 1, spec.out_channels)``, ``x``'s dtype.
      pointwise_kernel: ``(spec.out_channels, out_channels)``, of the pointwise
        step's compute dtype (``x``'s or wider).
      spec: the depthwise step; its ``padding`` is zero padding.
      impl: ``"auto"`` or a name of :data:`~sepconv_jax.kernels.dispatch.IMPLS`;
        overrides of ``"auto"`` are applied here.
      precision, preferred_element_type: as in :func:`sepconv_jax.separable_conv`.
      blocks: tiles of the fused kernel (``None``: its defaults).

    Returns:
      ``spec.flat_shape(spec.out_spatial, out_channels)``, of dtype
      ``preferred_element_type`` or ``pointwise_kernel.dtype``.
    """
    spec = dataclasses.replace(spec, batch_shape=(x.shape[0],), padding_mode="zeros")
    preferred = None if preferred_element_type is None else np.dtype(preferred_element_type)
    return _bind(
        x,
        depthwise_kernel,
        pointwise_kernel,
        spec=spec,
        impl=dispatch.resolve_override(impl),
        precision=_canonical_precision(precision),
        preferred_element_type=preferred,
        out_dtype=preferred or np.dtype(pointwise_kernel.dtype),
        blocks=blocks,
    )


# ----------------------------------------------------------------------------- the two steps


def pointwise(
    mid: jax.Array, kernel: jax.Array, spec: ConvSpec, *, precision, preferred_element_type
) -> jax.Array:
    """The 1x1 step on the flattened intermediate, as :func:`sepconv_jax.pointwise_conv`
    computes it: ``mid`` promoted to ``kernel``'s dtype, then a window-1 convolution
    over the positions (which the cost model counts as a pointwise op)."""
    mid = mid.astype(kernel.dtype)
    channels, out_channels = kernel.shape
    batch = mid.shape[0]
    if spec.channels_last:
        spatial = mid.shape[1:-1]
        flat = mid.reshape(-1, 1, channels)
        dims = ("NWC", "WIO", "NWC")
    else:
        spatial = mid.shape[2:]
        flat = mid.reshape(batch, channels, -1)
        dims = ("NCW", "WIO", "NCW")
    y = lax.conv_general_dilated(
        flat,
        kernel.reshape(1, channels, out_channels),
        window_strides=(1,),
        padding=((0, 0),),
        dimension_numbers=dims,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return y.reshape(spec.flat_shape(spatial, out_channels))


def _depthwise(x, dk, *, spec, impl, precision, preferred_element_type):
    """The intermediate of the unfused pair: the depthwise primitive, rounded to
    ``x``'s dtype (what two stacked layers hand each other)."""
    out = op.forward_p.bind(
        *match_manual_axes(x, dk),
        spec=spec,
        impl=impl,
        precision=precision,
        preferred_element_type=preferred_element_type,
        out_dtype=preferred_element_type or np.dtype(x.dtype),
    )
    return out.astype(x.dtype)


def _unfused(x, dk, pk, *, spec, impl, precision, preferred_element_type, out_dtype, blocks):
    """The unfused pair with the primitives of :mod:`~sepconv_jax.kernels.op` (for vmap)."""
    del blocks
    mid = _depthwise(
        x,
        dk,
        spec=spec,
        impl=impl,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    y = pointwise(mid, pk, spec, precision=precision, preferred_element_type=preferred_element_type)
    return y.astype(out_dtype)


# ----------------------------------------------------------------------------- autodiff


def _jvp(primals, tangents, **params):
    out = _bind(*primals, **params)
    terms = []
    for i, tangent in enumerate(tangents):
        if type(tangent) is ad.Zero:
            continue
        operands = list(primals)
        operands[i] = tangent
        terms.append(_bind(*operands, **params))
    tangent_out = functools.reduce(jnp.add, terms) if terms else jnp.zeros_like(out)
    return out, tangent_out


ad.primitive_jvps[separable_p] = _jvp


def _pointwise_kernel_transpose(
    mid: jax.Array, ct: jax.Array, spec: ConvSpec, *, precision, preferred_element_type
) -> jax.Array:
    """``mid^T ct``: the 1x1 step's transpose in its kernel, a contraction over every
    position, written as a window-1 convolution whose input features are the
    positions (as JAX transposes the 1x1 convolution, and counted as a pointwise op)."""
    channels, out_channels = mid.shape[spec.channel_axis], ct.shape[spec.channel_axis]
    if not spec.channels_last:  # (N, C, *spatial) -> (N, *spatial, C)
        mid, ct = jnp.moveaxis(mid, 1, -1), jnp.moveaxis(ct, 1, -1)
    mid = mid.reshape(-1, channels).astype(ct.dtype)
    y = lax.conv_general_dilated(
        mid.T.reshape(channels, 1, -1),
        ct.reshape(1, -1, out_channels),
        window_strides=(1,),
        padding=((0, 0),),
        dimension_numbers=("NWC", "WIO", "NWC"),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return y.reshape(channels, out_channels)


def _transpose(ct, x, dk, pk, *, spec, impl, precision, preferred_element_type, out_dtype, blocks):
    del blocks
    undefined = [ad.is_undefined_primal(a) for a in (x, dk, pk)]
    if sum(undefined) != 1:  # pragma: no cover - linearization never produces this
        raise NotImplementedError(
            "separable_conv is linear in each operand separately; it cannot be "
            "transposed in two operands at once"
        )
    if type(ct) is ad.Zero:
        return [ad.Zero(a.aval) if u else None for a, u in zip((x, dk, pk), undefined, strict=True)]
    depthwise_params = dict(
        spec=spec, impl=impl, precision=precision, preferred_element_type=preferred_element_type
    )
    pointwise_params = dict(precision=precision, preferred_element_type=preferred_element_type)

    if undefined[2]:  # dpk = depthwise(x, dk)^T ct, the intermediate recomputed
        mid = _depthwise(x, dk, **depthwise_params)
        pk_dtype = pk.aval.dtype
        dpk = _pointwise_kernel_transpose(mid, ct.astype(pk_dtype), spec, **pointwise_params)
        return [None, None, dpk.astype(pk_dtype)]

    # The intermediate's cotangent, ct @ pk^T (a 1x1 step with the transposed
    # kernel), in the intermediate's dtype.
    mid_dtype = x.aval.dtype if undefined[0] else x.dtype
    g = pointwise(ct, pk.T, spec, **pointwise_params).astype(mid_dtype)
    if undefined[0]:
        dx = op.input_transpose_p.bind(
            *match_manual_axes(g, dk), **depthwise_params, out_dtype=np.dtype(x.aval.dtype)
        )
        return [dx, None, None]
    ddk = op.kernel_transpose_p.bind(
        *match_manual_axes(x, g), **depthwise_params, out_dtype=np.dtype(dk.aval.dtype)
    )
    return [None, ddk, None]


ad.primitive_transposes[separable_p] = _transpose


# ----------------------------------------------------------------------------- vmap


def _batch_rule(args, dims, *, spec, **params):
    x, dk, pk = args
    x_dim, dk_dim, pk_dim = dims
    if dk_dim is None and pk_dim is None:
        # A batch of inputs under one pair of kernels: fold it into the batch dim.
        x = jnp.moveaxis(x, x_dim, 0)
        size, batch = x.shape[:2]
        folded = dataclasses.replace(spec, batch_shape=(size * batch,))
        out = separable_p.bind(x.reshape(size * batch, *x.shape[2:]), dk, pk, spec=folded, **params)
        return out.reshape(size, batch, *out.shape[1:]), 0

    # Per-example kernels: the unfused pair, whose primitives batch without a loop.
    def run(x, dk, pk):
        return _unfused(x, dk, pk, spec=spec, **params)

    return jax.vmap(run, in_axes=tuple(dims))(x, dk, pk), 0


batching.primitive_batchers[separable_p] = _batch_rule


# ----------------------------------------------------------------------------- lowering


def _lowering(platform: str | None):
    def run(
        x, dk, pk, *, spec, impl, precision, preferred_element_type, out_dtype, blocks, for_export
    ):
        dtypes = (x.dtype, dk.dtype, pk.dtype)
        fused = dispatch.separable_is_fused(impl, spec, pk.shape[1], dtypes, platform)
        # "auto" lowered for jax.export keeps to StableHLO (see dispatch.kernel_for).
        fused = fused and not (for_export and impl == "auto")
        # Pallas' interpret mode (CPU) cannot run inside shard_map on values that vary
        # over its manual axes (JAX's interpreter loop drops them): the pair runs there.
        if fused and not (platform == "cpu" and varies_over_manual_axes(x)):
            return pallas_fused.fused_separable(
                x,
                dk,
                pk,
                spec,
                platform=platform,
                precision=precision,
                preferred_element_type=preferred_element_type,
                out_dtype=out_dtype,
                blocks=blocks,
            )
        kernel = dispatch.kernel_for(impl, spec, platform, for_export=for_export)
        context = kernel.lowering_context
        with contextlib.nullcontext() if context is None else context(platform):
            mid = kernel.forward(
                x,
                dk,
                spec,
                platform=platform,
                precision=precision,
                preferred_element_type=preferred_element_type,
                out_dtype=preferred_element_type or np.dtype(x.dtype),
            ).astype(x.dtype)
        y = pointwise(
            mid, pk, spec, precision=precision, preferred_element_type=preferred_element_type
        )
        return y.astype(out_dtype)

    def scoped(*args, **params):
        # The primitive's name scopes what it lowers to (for profiles), as in `op`.
        with jax.named_scope(separable_p.name):
            return run(*args, **params)

    def rule(ctx, *args, **params):
        for_export = lowering_for_export(ctx)
        lowered = mlir.lower_fun(
            functools.partial(scoped, for_export=for_export), multiple_results=False
        )
        # The unfused pair's kernel may lower through custom_partitioning (the Pallas
        # maps), whose body is lowered here, not while `run` traces it: its lowering
        # context (no shard_map variance checks in interpret mode) must hold here too.
        kernel = dispatch.kernel_for(
            params["impl"], params["spec"], platform, for_export=for_export
        )
        context = kernel.lowering_context
        with (
            quiet_triton_deprecation(),
            contextlib.nullcontext() if context is None else context(platform),
        ):
            return lowered(ctx, *args, **params)

    return rule


lower_with_devices(separable_p)  # its unfused path runs the partitioned Pallas maps
mlir.register_lowering(separable_p, _lowering(None))
for _platform in PLATFORMS:
    mlir.register_lowering(separable_p, _lowering(_platform), platform=_platform)


# ----------------------------------------------------------------------------- eager


@functools.lru_cache(maxsize=256)
def _compiled(params: tuple[tuple[str, Any], ...]):
    return jax.jit(functools.partial(separable_p.bind, **dict(params)))


def _eager(x, dk, pk, **params):
    return _compiled(tuple(sorted(params.items())))(x, dk, pk)


separable_p.def_impl(_eager)
