"""Array checks of the weight converters: numeric arrays of the expected rank, biases."""

from __future__ import annotations

from typing import Any

import numpy as np

from sepconv_jax import _spec
from sepconv_jax._spec import check_bias as check_bias


def as_array(value: Any, name: str) -> np.ndarray:
    """``np.asarray(value)``, required to be numeric; the dtype is kept as it is."""
    if value is None:
        raise TypeError(f"`{name}` must be an array, got None")
    try:
        array = np.asarray(value)
    except Exception as e:  # e.g. a torch tensor that still requires grad
        raise TypeError(
            f"`{name}` could not be read as a NumPy array ({e}); pass "
            f"`tensor.detach().cpu().numpy()` or, for a Keras variable, `np.asarray(variable.value)`"
        ) from None
    _spec.check_numeric(array, name)
    return array


def optional_array(value: Any, name: str) -> np.ndarray | None:
    return None if value is None else as_array(value, name)


def check_rank(array: np.ndarray, ranks: tuple[int, ...], name: str, layout: str) -> None:
    if array.ndim not in ranks:
        raise ValueError(
            f"`{name}` has shape {array.shape} (rank {array.ndim}); expected rank "
            f"{' or '.join(map(str, ranks))}: {layout}"
        )


def depthwise_kernel(kernel: Any) -> np.ndarray:
    """``kernel`` as an array of our depthwise layout, ``(*window, 1, C * M)``."""
    kernel = as_array(kernel, "kernel")
    check_rank(kernel, (3, 4, 5), "kernel", "(*window, 1, C * depth_multiplier)")
    if kernel.shape[-2] != 1:
        raise ValueError(
            f"`kernel` has shape {kernel.shape}; a depthwise kernel is (*window, 1, C * M)"
        )
    return kernel


def pointwise_kernel(value: Any, name: str, window: slice, layout: str, instead: str) -> np.ndarray:
    """``value`` as an array of rank 2 to 5 (``layout``) whose ``window`` dims are all 1:
    a pointwise kernel; for a larger window the error names ``instead``."""
    array = as_array(value, name)
    check_rank(array, (2, 3, 4, 5), name, layout)
    if any(k != 1 for k in array.shape[window]):
        raise ValueError(
            f"`{name}` has shape {array.shape}, a {array.shape[window]} window; a pointwise "
            f"conv has a window of ones. Use `{instead}` for larger windows"
        )
    return array


def check_depth_multiplier(depth_multiplier: Any, channels: int) -> int:
    """A positive int depth multiplier that divides a depthwise kernel's ``channels``."""
    m = _spec.check_positive_int(depth_multiplier, "depth_multiplier")
    if channels % m:
        raise ValueError(
            f"`depth_multiplier`={m} must divide the kernel's {channels} output channels "
            f"(C * depth_multiplier)"
        )
    return m


def with_bias(
    params: dict[str, np.ndarray], name: str, bias: np.ndarray | None
) -> dict[str, np.ndarray]:
    if bias is not None:
        params[name] = bias
    return params


def pointwise_for_export(
    kernel: Any, bias: Any, num_spatial_dims: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    """Checks a pointwise ``kernel`` ``(C_in, C_out)``, its bias and a 0-3 export rank."""
    kernel = as_array(kernel, "kernel")
    check_rank(kernel, (2,), "kernel", "(C_in, C_out)")
    if num_spatial_dims not in (0, 1, 2, 3):
        raise ValueError(f"`num_spatial_dims` must be 0, 1, 2 or 3, got {num_spatial_dims!r}")
    bias = optional_array(bias, "bias")
    check_bias(bias, kernel.shape[1], "bias")
    return kernel, bias
