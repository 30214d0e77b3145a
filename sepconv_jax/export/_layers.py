"""The convolution and dense layers the exporter and the quantizer know, and their maps.

A *layer* is a Flax linen module whose ``__call__`` is a convolution or a dense map:
our :class:`~sepconv_jax.linen.DepthwiseConv`, :class:`~sepconv_jax.linen.PointwiseConv`
and :class:`~sepconv_jax.linen.SeparableConv`, and Flax's ``nn.Conv`` and ``nn.Dense``.
Each has one or two *units*, a kernel with its optional bias and a kind
(``"depthwise"``, ``"pointwise"``, ``"standard"`` or ``"dense"``): a separable
convolution is a depthwise unit followed by a pointwise unit. Every kernel here
keeps its output channels on the last axis, which is what batch-norm folding and
per-channel quantization scale.

:func:`apply_layer` recomputes a layer from a dict of (folded, quantized) parameters,
with a hook at every unit boundary, so the same code serves batch-norm folding
and the int8 simulation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

import flax.linen as nn
import jax
from flax.linen.dtypes import promote_dtype

from sepconv_jax import _layers as layers
from sepconv_jax import _spec, ops
from sepconv_jax import linen as sl

__all__ = ["KINDS", "Kind", "Unit", "apply_layer", "layer_units", "output_channel_axis"]

Kind = Literal["depthwise", "pointwise", "standard", "dense"]
#: The kinds of unit, in the order tables list them.
KINDS: tuple[str, ...] = ("depthwise", "pointwise", "standard", "dense")


@dataclasses.dataclass(frozen=True)
class Unit:
    """One kernel of a layer: its kind and the names of its parameters.

    Attributes:
      kind: ``"depthwise"``, ``"pointwise"``, ``"standard"`` or ``"dense"``.
      kernel: the kernel's parameter name (output channels on its last axis).
      bias: the bias' parameter name, which may be absent from the parameters.
    """

    kind: str
    kernel: str
    bias: str


def _flax_conv_kind(module: nn.Conv, params: Mapping[str, Any]) -> str:
    kernel = params["kernel"]
    window = kernel.shape[:-2]
    if kernel.shape[-2] == 1 and module.feature_group_count > 1:
        return "depthwise"
    if math.prod(window) == 1 and module.feature_group_count == 1:
        return "pointwise"
    return "standard"


def layer_units(module: nn.Module, params: Mapping[str, Any]) -> tuple[Unit, ...] | None:
    """The units of ``module`` (with its ``params``), or ``None`` if it is no layer of ours."""
    if isinstance(module, sl.SeparableConv):
        return (
            Unit("depthwise", "depthwise_kernel", "depthwise_bias"),
            Unit("pointwise", "pointwise_kernel", "bias"),
        )
    if isinstance(module, sl.DepthwiseConv):
        return (Unit("depthwise", "kernel", "bias"),)
    if isinstance(module, sl.PointwiseConv):
        return (Unit("pointwise", "kernel", "bias"),)
    if type(module) is nn.Conv and "kernel" in params:
        return (Unit(_flax_conv_kind(module, params), "kernel", "bias"),)
    if type(module) is nn.Dense and "kernel" in params:
        return (Unit("dense", "kernel", "bias"),)
    return None


def output_channel_axis(module: nn.Module, ndim: int) -> int:
    """The channel axis (non-negative) of ``module``'s output of rank ``ndim``."""
    data_format = getattr(module, "data_format", "channels_last")
    if data_format == "channels_last" or isinstance(module, nn.Conv | nn.Dense):
        return ndim - 1
    if isinstance(module, sl.PointwiseConv):
        n = _spec.check_num_spatial_dims(module.num_spatial_dims)
        n = ndim - 2 if n is None else n
        return ndim - n - 1
    return ndim - len(module.kernel_size) - 1


Hook = Callable[[str, int, jax.Array], jax.Array]


def _identity(stage: str, index: int, value: jax.Array) -> jax.Array:
    del stage, index
    return value


def apply_layer(
    module: nn.Module,
    params: Mapping[str, Any],
    x: jax.Array,
    *,
    hook: Hook = _identity,
) -> jax.Array:
    """``module``'s map with the given ``params`` (a bias may be added or left out).

    ``hook(stage, i, value)`` sees, and may replace, the input of unit ``i``
    (``stage="input"``), its kernel (``"kernel"``) and its output (``"output"``,
    after the bias). A separable convolution's depthwise output is unit 0's output
    and unit 1's input.
    """
    params = dict(params)

    def kernel(i: int, name: str) -> jax.Array:
        return hook("kernel", i, params[name])

    def pointwise(i: int, name: str, x: jax.Array, data_format: Any, spatial: Any) -> jax.Array:
        """Unit ``i``, a 1x1 convolution by the kernel ``name`` and the bias."""
        x = hook("input", i, x)
        x, pw_kernel, bias = promote_dtype(
            x, kernel(i, name), params.get("bias"), dtype=module.dtype
        )
        y = ops.pointwise_conv(
            x, pw_kernel, bias=bias, data_format=data_format, num_spatial_dims=spatial,
            precision=module.precision,
        )  # fmt: skip
        return hook("output", i, y)

    if isinstance(module, sl.SeparableConv | sl.DepthwiseConv):
        opts = sl._window_options(module)
        x = hook("input", 0, x)
        if isinstance(module, sl.SeparableConv):
            dw_kernel, dw_bias = kernel(0, "depthwise_kernel"), params.get("depthwise_bias")
        else:
            dw_kernel, dw_bias = kernel(0, "kernel"), params.get("bias")
        x, dw_kernel, dw_bias = promote_dtype(x, dw_kernel, dw_bias, dtype=module.dtype)
        y = layers.window_forward(
            x, (dw_kernel, dw_bias, None, None), opts, impl=module.impl, precision=module.precision
        )
        y = hook("output", 0, y)
        if isinstance(module, sl.DepthwiseConv):
            return y
        spatial = opts.num_spatial if opts.data_format == "channels_first" else None
        return pointwise(1, "pointwise_kernel", y, opts.data_format, spatial)
    if isinstance(module, sl.PointwiseConv):
        spatial = _spec.check_num_spatial_dims(module.num_spatial_dims)
        return pointwise(0, "kernel", x, module.data_format, spatial)
    if isinstance(module, nn.Conv | nn.Dense):
        x = hook("input", 0, x)
        new = dict(params, kernel=kernel(0, "kernel"))
        clone = module.clone(parent=None, use_bias="bias" in new)
        out = cast(jax.Array, clone.apply({"params": new}, x))
        return hook("output", 0, out)
    raise TypeError(
        f"{type(module).__name__} is not a convolution or dense layer"
    )  # pragma: no cover
