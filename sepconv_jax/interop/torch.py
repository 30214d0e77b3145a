"""Weights from and to PyTorch ``torch.nn.Conv{1,2,3}d`` layouts.

PyTorch stores a convolution weight as ``(out_channels, in_channels // groups,
*window)``; we store ``(*window, in_channels // groups, out_channels)``. Both
number grouped output channels the same way (output ``o`` belongs to group
``o // (out_channels // groups)``), so a depthwise ``Conv2d(C, C * M, k,
groups=C)`` maps to our ``(*window, 1, C * M)`` kernel by a transpose alone, with
output channel ``c * M + m`` reading input channel ``c`` on both sides.

The functions take and return plain arrays (``np.asarray(tensor.detach())`` or
NumPy arrays), so PyTorch is not needed to use them; dtypes are kept as given.
A separable layer in PyTorch is two modules, a depthwise ``Conv`` followed by a
1x1 ``Conv``; :func:`separable_from_torch` takes the weights of both.

:func:`conv_kwargs_from_torch` reads a conv module's options (duck-typed, no
import of PyTorch) into the keyword arguments of our modules. PyTorch's padding
(an int or one int per dim, symmetric), ``padding="same"`` (stride 1 only, odd
padding at the end) and ``padding_mode`` names all carry over unchanged in
meaning. Inputs must be transposed from PyTorch's channels-first to
channels-last, or use ``data_format="channels_first"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax.typing import ArrayLike

from sepconv_jax.interop import _checks

__all__ = [
    "conv_kwargs_from_torch",
    "depthwise_from_torch",
    "depthwise_to_torch",
    "grouped_from_torch",
    "grouped_to_torch",
    "pointwise_from_torch",
    "pointwise_to_torch",
    "separable_from_torch",
    "separable_to_torch",
]

_LAYOUT = "(out_channels, in_channels // groups, *window) for Conv1d/2d/3d"


def _to_ours(weight: np.ndarray) -> np.ndarray:
    """``(O, I, *window)`` -> ``(*window, I, O)``."""
    n = weight.ndim - 2
    return np.ascontiguousarray(np.transpose(weight, (*range(2, n + 2), 1, 0)))


def _to_torch(kernel: np.ndarray) -> np.ndarray:
    """``(*window, I, O)`` -> ``(O, I, *window)``."""
    n = kernel.ndim - 2
    return np.ascontiguousarray(np.transpose(kernel, (n + 1, n, *range(n))))


def grouped_from_torch(weight: ArrayLike, bias: ArrayLike | None = None) -> dict[str, np.ndarray]:
    """Converts any ``torch.nn.Conv{1,2,3}d`` weight to a :func:`sepconv_jax.grouped_conv` kernel.

    Args:
      weight: ``(out_channels, in_channels // groups, *window)``.
      bias: optional ``(out_channels,)``.

    Returns:
      ``{"kernel": (*window, in_channels // groups, out_channels), "bias": ...}``
      (``"bias"`` only when given). Pass ``groups`` to ``grouped_conv`` as in PyTorch.

    Raises:
      ValueError: for a weight that is not rank 3, 4 or 5, or a bias of the wrong shape.
      TypeError: for non-numeric arrays.

    Example:
      >>> import numpy as np
      >>> w = np.zeros((8, 2, 3, 3), np.float32)  # Conv2d(4, 8, 3, groups=2).weight
      >>> grouped_from_torch(w)["kernel"].shape
      (3, 3, 2, 8)
    """
    weight = _checks.as_array(weight, "weight")
    _checks.check_rank(weight, (3, 4, 5), "weight", _LAYOUT)
    bias = _checks.optional_array(bias, "bias")
    _checks.check_bias(bias, weight.shape[0], "bias")
    return _checks.with_bias({"kernel": _to_ours(weight)}, "bias", bias)


def grouped_to_torch(kernel: ArrayLike, bias: ArrayLike | None = None) -> dict[str, np.ndarray]:
    """Inverse of :func:`grouped_from_torch`: ``{"weight": (O, I // groups, *window), "bias"}``.

    Example:
      >>> import numpy as np
      >>> grouped_to_torch(np.zeros((3, 3, 2, 8)))["weight"].shape
      (8, 2, 3, 3)
    """
    kernel = _checks.as_array(kernel, "kernel")
    _checks.check_rank(kernel, (3, 4, 5), "kernel", "(*window, in_channels // groups, out)")
    bias = _checks.optional_array(bias, "bias")
    _checks.check_bias(bias, kernel.shape[-1], "bias")
    return _checks.with_bias({"weight": _to_torch(kernel)}, "bias", bias)


def depthwise_from_torch(weight: ArrayLike, bias: ArrayLike | None = None) -> dict[str, np.ndarray]:
    """Converts a depthwise ``Conv{1,2,3}d(C, C * M, k, groups=C)`` to ``DepthwiseConv`` params.

    Args:
      weight: ``(C * M, 1, *window)``.
      bias: optional ``(C * M,)``.

    Returns:
      ``{"kernel": (*window, 1, C * M), "bias": (C * M,)}`` (``"bias"`` only when
      given): the params of :class:`sepconv_jax.linen.DepthwiseConv` with
      ``depth_multiplier=M``, and the ``kernel`` of :func:`sepconv_jax.depthwise_conv`.

    Raises:
      ValueError: for a weight whose in-dim is not 1 (not a depthwise conv) or that
        is not rank 3, 4 or 5, or a bias of the wrong shape.
      TypeError: for non-numeric arrays.

    Example:
      >>> import numpy as np
      >>> w = np.zeros((16, 1, 3, 3), np.float32)  # Conv2d(8, 16, 3, groups=8).weight
      >>> depthwise_from_torch(w, np.zeros(16))["kernel"].shape
      (3, 3, 1, 16)
    """
    weight = _checks.as_array(weight, "weight")
    _checks.check_rank(weight, (3, 4, 5), "weight", "(C * M, 1, *window)")
    if weight.shape[1] != 1:
        raise ValueError(
            f"`weight` has shape {weight.shape}, with in-dim {weight.shape[1]}; a depthwise "
            f"Conv (groups = in_channels) has in-dim 1. Use `grouped_from_torch` for "
            f"groups < in_channels"
        )
    return grouped_from_torch(weight, bias)


def depthwise_to_torch(kernel: ArrayLike, bias: ArrayLike | None = None) -> dict[str, np.ndarray]:
    """Inverse of :func:`depthwise_from_torch`: ``{"weight": (C * M, 1, *window), "bias"}``.

    Load into ``torch.nn.Conv2d(C, C * M, window, groups=C)``.

    Example:
      >>> import numpy as np
      >>> depthwise_to_torch(np.zeros((3, 3, 1, 16)))["weight"].shape
      (16, 1, 3, 3)
    """
    kernel = _checks.depthwise_kernel(kernel)
    return grouped_to_torch(kernel, bias)


def pointwise_from_torch(weight: ArrayLike, bias: ArrayLike | None = None) -> dict[str, np.ndarray]:
    """Converts a 1x1 ``Conv{1,2,3}d(C_in, C_out, 1)`` (or a ``Linear``) to ``PointwiseConv`` params.

    Args:
      weight: ``(C_out, C_in, 1, ...)`` with every window dim 1, or ``(C_out, C_in)``.
      bias: optional ``(C_out,)``.

    Returns:
      ``{"kernel": (C_in, C_out), "bias": (C_out,)}`` (``"bias"`` only when given).

    Raises:
      ValueError: for a window larger than 1x1 or a bias of the wrong shape.
      TypeError: for non-numeric arrays.

    Example:
      >>> import numpy as np
      >>> pointwise_from_torch(np.zeros((32, 16, 1, 1)))["kernel"].shape
      (16, 32)
    """
    layout = "(C_out, C_in, 1, ...) or (C_out, C_in)"
    weight = _checks.pointwise_kernel(
        weight, "weight", slice(2, None), layout, "grouped_from_torch"
    )
    bias = _checks.optional_array(bias, "bias")
    _checks.check_bias(bias, weight.shape[0], "bias")
    kernel = np.ascontiguousarray(weight.reshape(weight.shape[:2]).T)
    return _checks.with_bias({"kernel": kernel}, "bias", bias)


def pointwise_to_torch(
    kernel: ArrayLike, bias: ArrayLike | None = None, *, num_spatial_dims: int = 2
) -> dict[str, np.ndarray]:
    """Inverse of :func:`pointwise_from_torch`, for ``Conv{num_spatial_dims}d(C_in, C_out, 1)``.

    Args:
      kernel: ``(C_in, C_out)``.
      bias: optional ``(C_out,)``.
      num_spatial_dims: 1, 2 or 3 (``Conv1d``, ``Conv2d``, ``Conv3d``); 0 gives a
        ``Linear`` weight ``(C_out, C_in)``.

    Returns:
      ``{"weight": (C_out, C_in, *(1,) * num_spatial_dims), "bias": (C_out,)}``.

    Example:
      >>> import numpy as np
      >>> pointwise_to_torch(np.zeros((16, 32)))["weight"].shape
      (32, 16, 1, 1)
    """
    kernel, bias = _checks.pointwise_for_export(kernel, bias, num_spatial_dims)
    weight = np.ascontiguousarray(kernel.T.reshape(*kernel.T.shape, *(1,) * num_spatial_dims))
    return _checks.with_bias({"weight": weight}, "bias", bias)


def separable_from_torch(
    depthwise_weight: ArrayLike,
    pointwise_weight: ArrayLike,
    depthwise_bias: ArrayLike | None = None,
    pointwise_bias: ArrayLike | None = None,
) -> dict[str, np.ndarray]:
    """Converts a depthwise ``Conv`` followed by a 1x1 ``Conv`` to ``SeparableConv`` params.

    Args:
      depthwise_weight: ``(C * M, 1, *window)`` of ``Conv(C, C * M, k, groups=C)``.
      pointwise_weight: ``(F, C * M, 1, ...)`` of ``Conv(C * M, F, 1)``.
      depthwise_bias: optional ``(C * M,)``; needs ``use_depthwise_bias=True``.
      pointwise_bias: optional ``(F,)``; needs ``use_bias=True`` (the default).

    Returns:
      ``{"depthwise_kernel", "pointwise_kernel", "depthwise_bias", "bias"}``, the
      biases only when given.

    Raises:
      ValueError: when the two weights do not chain (``C * M`` differs) and as
        :func:`depthwise_from_torch` / :func:`pointwise_from_torch`.

    Example:
      >>> import numpy as np
      >>> p = separable_from_torch(np.zeros((8, 1, 3, 3)), np.zeros((16, 8, 1, 1)))
      >>> p["depthwise_kernel"].shape, p["pointwise_kernel"].shape
      ((3, 3, 1, 8), (8, 16))
    """
    dw = depthwise_from_torch(depthwise_weight, depthwise_bias)
    pw = pointwise_from_torch(pointwise_weight, pointwise_bias)
    if pw["kernel"].shape[0] != dw["kernel"].shape[-1]:
        raise ValueError(
            f"`pointwise_weight` reads {pw['kernel'].shape[0]} channels but the depthwise conv "
            f"gives {dw['kernel'].shape[-1]}; expected pointwise_weight of shape "
            f"(out_channels, {dw['kernel'].shape[-1]}, 1, ...)"
        )
    params = {"depthwise_kernel": dw["kernel"], "pointwise_kernel": pw["kernel"]}
    _checks.with_bias(params, "depthwise_bias", dw.get("bias"))
    return _checks.with_bias(params, "bias", pw.get("bias"))


def separable_to_torch(params: dict[str, ArrayLike]) -> tuple[dict, dict]:
    """Inverse of :func:`separable_from_torch`: state dicts of the two PyTorch convs.

    Args:
      params: ``SeparableConv`` params (``depthwise_kernel``, ``pointwise_kernel``,
        optional ``depthwise_bias`` and ``bias``).

    Returns:
      ``(depthwise, pointwise)``: ``{"weight", "bias"}`` dicts for
      ``Conv(C, C * M, k, groups=C)`` and ``Conv(C * M, F, 1)``.

    Example:
      >>> import numpy as np
      >>> dw, pw = separable_to_torch(
      ...     {"depthwise_kernel": np.zeros((3, 3, 1, 8)), "pointwise_kernel": np.zeros((8, 4))}
      ... )
      >>> dw["weight"].shape, pw["weight"].shape
      ((8, 1, 3, 3), (4, 8, 1, 1))
    """
    for key in ("depthwise_kernel", "pointwise_kernel"):
        if key not in params:
            raise ValueError(f"`params` has no {key!r}; got keys {sorted(params)}")
    dw = depthwise_to_torch(params["depthwise_kernel"], params.get("depthwise_bias"))
    n = dw["weight"].ndim - 2
    pw = pointwise_to_torch(params["pointwise_kernel"], params.get("bias"), num_spatial_dims=n)
    return dw, pw


def conv_kwargs_from_torch(conv: Any) -> dict[str, Any]:
    """Our module options from a ``torch.nn.Conv{1,2,3}d``, read by attribute name.

    Args:
      conv: a PyTorch conv module (or anything with its attributes ``kernel_size``,
        ``stride``, ``padding``, ``dilation``, ``padding_mode``, ``groups``,
        ``in_channels``, ``out_channels`` and ``bias``).

    Returns:
      ``kernel_size``, ``strides``, ``padding``, ``kernel_dilation``,
      ``padding_mode``, ``use_bias``, and ``depth_multiplier`` for a depthwise conv
      (``groups == in_channels``), ready for ``DepthwiseConv(**kwargs)``; for
      other convs drop ``depth_multiplier`` (it is then absent).

    Raises:
      ValueError: for a padding string PyTorch does not define.
    """
    padding = conv.padding
    if isinstance(padding, str):
        if padding.lower() not in ("same", "valid"):
            raise ValueError(f"unknown PyTorch padding {padding!r}; expected 'same' or 'valid'")
        padding = padding.upper()
    else:
        padding = tuple(int(p) for p in padding)
    kwargs: dict[str, Any] = {
        "kernel_size": tuple(int(k) for k in conv.kernel_size),
        "strides": tuple(int(s) for s in conv.stride),
        "padding": padding,
        "kernel_dilation": tuple(int(d) for d in conv.dilation),
        "padding_mode": str(conv.padding_mode),
        "use_bias": conv.bias is not None,
    }
    if conv.groups == conv.in_channels:
        kwargs["depth_multiplier"] = int(conv.out_channels // conv.in_channels)
    return kwargs
