"""The reference path: ``lax.conv_general_dilated`` with ``feature_group_count``."""

from __future__ import annotations

from jax import lax

from sepconv_jax._spec import ConvSpec

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


# A depthwise conv is the grouped conv with one group per input channel.
depthwise = conv
