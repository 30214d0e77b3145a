"""The reference kernel: ``lax.conv_general_dilated`` with ``feature_group_count``.

Its two transposes are JAX's own transposes of that convolution
(through :func:`jax.vjp`): the input transpose is a grouped convolution of
the cotangent with the flipped kernel, the kernel transpose a convolution with
``batch_group_count``. These are what ``jax.grad`` of the convolution ran before
the depthwise operation had primitives of its own.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sepconv_jax._spec import ConvSpec
from sepconv_jax.kernels._jax_compat import match_manual_axes

__all__ = ["conv", "dimension_numbers", "forward", "input_transpose", "kernel_transpose"]

_SPATIAL_LETTERS = "DHW"


def dimension_numbers(spec: ConvSpec) -> tuple[str, str, str]:
    """``lax`` dimension strings for this spec's layout, e.g. ``("NHWC", "HWIO", "NHWC")``."""
    spatial = _SPATIAL_LETTERS[-spec.num_spatial :]
    lhs = f"N{spatial}C" if spec.channels_last else f"NC{spatial}"
    return lhs, f"{spatial}IO", lhs


def conv(x, kernel, spec: ConvSpec, *, precision=None, preferred_element_type=None):
    """Grouped convolution of flattened ``x`` with ``spec.groups`` feature groups."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=spec.strides,
        padding=spec.padding,
        rhs_dilation=spec.dilation,
        dimension_numbers=dimension_numbers(spec),
        feature_group_count=spec.groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def _compute_dtype(*dtypes: Any) -> np.dtype:
    return np.dtype(jnp.result_type(*dtypes))


def forward(x, kernel, spec: ConvSpec, *, platform, precision, preferred_element_type, out_dtype):
    """``y = f(x, kernel)``: the grouped convolution with one group per channel."""
    del platform
    dtype = _compute_dtype(x.dtype, kernel.dtype)
    y = conv(
        x.astype(dtype),
        kernel.astype(dtype),
        spec,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return y.astype(out_dtype)


def _transpose(f, primal_shape, dtype, like, cotangent, preferred_element_type):
    """The transpose of the linear ``f`` at ``cotangent``, by :func:`jax.vjp`.

    The primal placeholder varies over the same ``shard_map`` axes as ``like`` (the
    other operand), so the transpose stays local to each shard: summing over the
    axes is the business of the ``pvary`` the caller inserted, not of this map.
    """
    (primal,) = match_manual_axes(jnp.zeros(primal_shape, dtype), like)[:1]
    _, vjp = jax.vjp(f, primal)
    (result,) = vjp(cotangent.astype(preferred_element_type or dtype))
    return result


def _linear_transpose(
    fixed, g, spec: ConvSpec, arg: int, precision, preferred_element_type, out_dtype
):
    """The transpose of :func:`forward` in its argument ``arg`` (0: ``x``, 1: ``kernel``),
    the other one ``fixed``, applied to ``g``."""
    dtype = _compute_dtype(fixed.dtype, out_dtype)
    fixed = fixed.astype(dtype)

    def f(primal):
        x, kernel = (primal, fixed) if arg == 0 else (fixed, primal)
        return conv(
            x, kernel, spec, precision=precision, preferred_element_type=preferred_element_type
        )

    if arg == 0:
        shape, like = spec.flat_shape(spec.in_spatial, spec.in_channels), g
    else:
        shape, like = (*spec.window, 1, spec.out_channels), fixed
    return _transpose(f, shape, dtype, like, g, preferred_element_type).astype(out_dtype)


def input_transpose(
    g, kernel, spec: ConvSpec, *, platform, precision, preferred_element_type, out_dtype
):
    """``dx``: the transpose of :func:`forward` in ``x``, applied to ``g``."""
    del platform
    return _linear_transpose(kernel, g, spec, 0, precision, preferred_element_type, out_dtype)


def kernel_transpose(
    x, g, spec: ConvSpec, *, platform, precision, preferred_element_type, out_dtype
):
    """``dkernel``: the transpose of :func:`forward` in ``kernel``, applied to ``g``."""
    del platform
    return _linear_transpose(x, g, spec, 1, precision, preferred_element_type, out_dtype)
