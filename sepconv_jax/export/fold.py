"""Folding an inference-mode batch norm into the convolution before it.

In inference a batch norm is a per-channel affine map of its input ``z`` (Ioffe &
Szegedy, 2015, Algorithm 2; Keras' and Flax's ``BatchNormalization`` compute it
this way, with ``epsilon`` added to the variance under the square root):

    ``bn(z) = (z - mean) * gamma / sqrt(var + epsilon) + beta``

When ``z = conv(x, W) + b`` is a convolution (or a dense map) with output channels
on ``W``'s last axis, write ``s = gamma / sqrt(var + epsilon)`` per channel; since the
convolution is linear in ``W`` and scaling output channel ``c`` of ``W`` scales output
channel ``c`` of ``conv(x, W)``,

    ``bn(conv(x, W) + b) = conv(x, W * s) + (b - mean) * s + beta``

so the pair is one convolution with kernel ``W * s`` and bias ``(b - mean) * s +
beta``. This is exact in real arithmetic; here it is computed in float64 and the
result cast to the kernel's dtype. ``epsilon`` is the batch norm's own (1e-3 in
Keras and in our reference models, not Flax's default 1e-5).
"""

from __future__ import annotations

import numpy as np
from jax.typing import ArrayLike

__all__ = ["fold_batch_norm"]


def _vector(value: ArrayLike, name: str, channels: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (channels,):
        raise ValueError(
            f"`{name}` has shape {array.shape}; the kernel has {channels} output channels "
            f"(its last axis), so `{name}` must have shape ({channels},)"
        )
    return array


def fold_batch_norm(
    kernel: ArrayLike,
    bias: ArrayLike | None,
    *,
    mean: ArrayLike,
    var: ArrayLike,
    scale: ArrayLike | None = None,
    offset: ArrayLike | None = None,
    epsilon: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The kernel and bias of ``bn(conv(x, kernel) + bias)`` as one convolution.

    Args:
      kernel: ``(..., C_out)``: any convolution or dense kernel with output channels
        last (depthwise ``(*window, 1, C * M)``, pointwise ``(C_in, C_out)``,
        standard ``(*window, C_in, C_out)``, dense ``(C_in, C_out)``).
      bias: ``(C_out,)`` or ``None`` (no bias).
      mean, var: the batch norm's running statistics, ``(C_out,)``.
      scale: ``gamma``, ``(C_out,)``; ``None`` for a batch norm without scale.
      offset: ``beta``, ``(C_out,)``; ``None`` for a batch norm without offset.
      epsilon: the batch norm's epsilon, added to ``var``.

    Returns:
      ``(kernel * s, (bias - mean) * s + offset)`` with ``s = scale / sqrt(var +
      epsilon)``, NumPy arrays in the kernel's dtype.

    Raises:
      ValueError: when a vector's length is not the kernel's output channel count,
        or ``epsilon`` is negative.

    Example:
      >>> import numpy as np
      >>> k, b = fold_batch_norm(np.ones((1, 2)), None, mean=np.array([1.0, 0.0]),
      ...     var=np.array([3.0, 0.0]), epsilon=1.0)
      >>> np.asarray(k).tolist(), np.asarray(b).tolist()
      ([[0.5, 1.0]], [-0.5, 0.0])
    """
    kernel = np.asarray(kernel)
    if kernel.ndim < 1:
        raise ValueError("`kernel` is a scalar; expected output channels on its last axis")
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float | np.floating):
        raise TypeError(f"`epsilon` must be a float, got {type(epsilon).__name__}")
    if epsilon < 0:
        raise ValueError(f"`epsilon` must be >= 0, got {epsilon!r}")
    channels = kernel.shape[-1]
    mean = _vector(mean, "mean", channels)
    var = _vector(var, "var", channels)
    gamma = np.ones(channels) if scale is None else _vector(scale, "scale", channels)
    beta = np.zeros(channels) if offset is None else _vector(offset, "offset", channels)
    b = np.zeros(channels) if bias is None else _vector(bias, "bias", channels)
    s = gamma / np.sqrt(var + float(epsilon))
    dtype = kernel.dtype if np.issubdtype(kernel.dtype, np.floating) else np.float32
    folded_kernel = (kernel.astype(np.float64) * s).astype(dtype)
    folded_bias = ((b - mean) * s + beta).astype(dtype)
    return folded_kernel, folded_bias
