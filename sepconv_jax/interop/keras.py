"""Weights from and to Keras 3 ``DepthwiseConv``, ``SeparableConv`` and ``Conv`` layouts.

Keras 3 stores:

* ``DepthwiseConv{1,2}D``: ``kernel`` ``(*window, C, M)`` and ``bias`` ``(C * M,)``.
  Keras computes it as a grouped convolution with the kernel reshaped to
  ``(*window, 1, C * M)``, so output channel ``c * M + m`` reads input channel
  ``c``: our layout is that reshape.
* ``SeparableConv{1,2}D``: ``depthwise_kernel`` ``(*window, C, M)``,
  ``pointwise_kernel`` ``(*ones, C * M, F)`` and ``bias`` ``(F,)`` (no bias
  between the steps, as our ``use_depthwise_bias=False`` default).
* ``Conv{1,2,3}D``: ``kernel`` ``(*window, C // groups, F)``, our
  :func:`sepconv_jax.grouped_conv` layout as it is; a ``1 x 1`` window is a
  pointwise conv with kernel ``(C, F)``.

The functions take and return plain arrays (for a Keras variable,
``np.asarray(variable.value)``; under NumPy 2, Keras 3's ``get_weights()`` warns
about a missing ``copy`` keyword), so Keras is not needed to use them; dtypes are
kept as given. :func:`conv_kwargs_from_keras`
maps a layer's config to our module options: Keras' ``"same"`` padding (also with
strides > 1), ``"valid"`` and ``"causal"`` are our ``"SAME"``, ``"VALID"`` and
``"CAUSAL"``, and ``data_format`` has the same names.

Whole models: :func:`convert` turns a Keras ``MobileNet``, ``MobileNetV2``,
``EfficientNetB0`` or ``Xception`` application into one of
:mod:`sepconv_jax.models` with its variables (see
:mod:`sepconv_jax.interop.keras_models`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax.typing import ArrayLike

from sepconv_jax.interop import _checks
from sepconv_jax.interop.keras_models import convert as convert

__all__ = [
    "conv_from_keras",
    "conv_kwargs_from_keras",
    "conv_to_keras",
    "convert",
    "depthwise_from_keras",
    "depthwise_to_keras",
    "pointwise_from_keras",
    "pointwise_to_keras",
    "separable_from_keras",
    "separable_to_keras",
]


def depthwise_from_keras(kernel: ArrayLike, bias: ArrayLike | None = None) -> dict[str, np.ndarray]:
    """Converts ``DepthwiseConv{1,2}D`` weights to ``DepthwiseConv`` params.

    Args:
      kernel: ``(*window, C, M)``.
      bias: optional ``(C * M,)``.

    Returns:
      ``{"kernel": (*window, 1, C * M), "bias": (C * M,)}`` (``"bias"`` only when
      given), for :class:`sepconv_jax.linen.DepthwiseConv` with ``depth_multiplier=M``.

    Raises:
      ValueError: for a kernel that is not rank 3, 4 or 5 or a bias of the wrong shape.
      TypeError: for non-numeric arrays.

    Example:
      >>> import numpy as np
      >>> kernel = np.zeros((3, 3, 8, 2), np.float32)  # DepthwiseConv2D(3, depth_multiplier=2)
      >>> depthwise_from_keras(kernel)["kernel"].shape
      (3, 3, 1, 16)
    """
    kernel = _checks.as_array(kernel, "kernel")
    _checks.check_rank(kernel, (3, 4, 5), "kernel", "(*window, C, depth_multiplier)")
    *window, c, m = kernel.shape
    bias = _checks.optional_array(bias, "bias")
    _checks.check_bias(bias, c * m, "bias")
    return _checks.with_bias({"kernel": kernel.reshape(*window, 1, c * m)}, "bias", bias)


def depthwise_to_keras(
    kernel: ArrayLike, bias: ArrayLike | None = None, *, depth_multiplier: int = 1
) -> dict[str, np.ndarray]:
    """Inverse of :func:`depthwise_from_keras`.

    Args:
      kernel: ``(*window, 1, C * M)``.
      bias: optional ``(C * M,)``.
      depth_multiplier: ``M``; it cannot be read from the kernel's shape.

    Returns:
      ``{"kernel": (*window, C, M), "bias": (C * M,)}``.

    Example:
      >>> import numpy as np
      >>> depthwise_to_keras(np.zeros((3, 3, 1, 16)), depth_multiplier=2)["kernel"].shape
      (3, 3, 8, 2)
    """
    kernel = _checks.depthwise_kernel(kernel)
    *window, _, cm = kernel.shape
    m = _checks.check_depth_multiplier(depth_multiplier, cm)
    bias = _checks.optional_array(bias, "bias")
    _checks.check_bias(bias, cm, "bias")
    return _checks.with_bias({"kernel": kernel.reshape(*window, cm // m, m)}, "bias", bias)


def pointwise_from_keras(kernel: ArrayLike, bias: ArrayLike | None = None) -> dict[str, np.ndarray]:
    """Converts a ``Conv{1,2,3}D`` with a window of ones (or a ``Dense``) to ``PointwiseConv``.

    Args:
      kernel: ``(1, ..., C_in, C_out)`` or ``(C_in, C_out)``.
      bias: optional ``(C_out,)``.

    Returns:
      ``{"kernel": (C_in, C_out), "bias": (C_out,)}`` (``"bias"`` only when given).

    Example:
      >>> import numpy as np
      >>> pointwise_from_keras(np.zeros((1, 1, 16, 32)))["kernel"].shape
      (16, 32)
    """
    layout = "(1, ..., C_in, C_out) or (C_in, C_out)"
    kernel = _checks.pointwise_kernel(kernel, "kernel", slice(-2), layout, "conv_from_keras")
    bias = _checks.optional_array(bias, "bias")
    _checks.check_bias(bias, kernel.shape[-1], "bias")
    return _checks.with_bias({"kernel": kernel.reshape(kernel.shape[-2:])}, "bias", bias)


def pointwise_to_keras(
    kernel: ArrayLike, bias: ArrayLike | None = None, *, num_spatial_dims: int = 2
) -> dict[str, np.ndarray]:
    """Inverse of :func:`pointwise_from_keras`, for ``Conv{num_spatial_dims}D(F, 1)``.

    ``num_spatial_dims=0`` gives a ``Dense`` kernel ``(C_in, C_out)``.

    Example:
      >>> import numpy as np
      >>> pointwise_to_keras(np.zeros((16, 32)))["kernel"].shape
      (1, 1, 16, 32)
    """
    kernel, bias = _checks.pointwise_for_export(kernel, bias, num_spatial_dims)
    out = kernel.reshape(*(1,) * num_spatial_dims, *kernel.shape)
    return _checks.with_bias({"kernel": out}, "bias", bias)


def conv_from_keras(kernel: ArrayLike, bias: ArrayLike | None = None) -> dict[str, np.ndarray]:
    """Converts ``Conv{1,2,3}D`` weights to a :func:`sepconv_jax.grouped_conv` kernel.

    The layouts agree (``(*window, C // groups, F)``), so this checks and passes the
    arrays through. Pass the layer's ``groups`` to ``grouped_conv``.

    Example:
      >>> import numpy as np
      >>> conv_from_keras(np.zeros((3, 3, 4, 8)), np.zeros(8))["kernel"].shape
      (3, 3, 4, 8)
    """
    kernel = _checks.as_array(kernel, "kernel")
    _checks.check_rank(kernel, (3, 4, 5), "kernel", "(*window, C // groups, filters)")
    bias = _checks.optional_array(bias, "bias")
    _checks.check_bias(bias, kernel.shape[-1], "bias")
    return _checks.with_bias({"kernel": kernel}, "bias", bias)


def conv_to_keras(kernel: ArrayLike, bias: ArrayLike | None = None) -> dict[str, np.ndarray]:
    """Inverse of :func:`conv_from_keras` (the same layout).

    Example:
      >>> import numpy as np
      >>> conv_to_keras(np.zeros((3, 3, 4, 8)))["kernel"].shape
      (3, 3, 4, 8)
    """
    return conv_from_keras(kernel, bias)


def separable_from_keras(
    depthwise_kernel: ArrayLike,
    pointwise_kernel: ArrayLike,
    bias: ArrayLike | None = None,
) -> dict[str, np.ndarray]:
    """Converts ``SeparableConv{1,2}D`` weights to ``SeparableConv`` params.

    Args:
      depthwise_kernel: ``(*window, C, M)``.
      pointwise_kernel: ``(*ones, C * M, F)``.
      bias: optional ``(F,)``.

    Returns:
      ``{"depthwise_kernel": (*window, 1, C * M), "pointwise_kernel": (C * M, F),
      "bias": (F,)}`` (``"bias"`` only when given).

    Raises:
      ValueError: when the two kernels do not chain, and as
        :func:`depthwise_from_keras` / :func:`pointwise_from_keras`.

    Example:
      >>> import numpy as np
      >>> p = separable_from_keras(np.zeros((3, 3, 4, 2)), np.zeros((1, 1, 8, 16)), np.zeros(16))
      >>> {k: v.shape for k, v in p.items()}
      {'depthwise_kernel': (3, 3, 1, 8), 'pointwise_kernel': (8, 16), 'bias': (16,)}
    """
    dw = depthwise_from_keras(depthwise_kernel)["kernel"]
    pw = pointwise_from_keras(pointwise_kernel, bias)
    if pw["kernel"].shape[0] != dw.shape[-1]:
        raise ValueError(
            f"`pointwise_kernel` reads {pw['kernel'].shape[0]} channels but the depthwise step "
            f"gives {dw.shape[-1]} (C * depth_multiplier); expected pointwise_kernel of shape "
            f"(*ones, {dw.shape[-1]}, filters)"
        )
    params = {"depthwise_kernel": dw, "pointwise_kernel": pw["kernel"]}
    return _checks.with_bias(params, "bias", pw.get("bias"))


def separable_to_keras(
    params: dict[str, ArrayLike], *, depth_multiplier: int = 1
) -> dict[str, np.ndarray]:
    """Inverse of :func:`separable_from_keras`.

    Args:
      params: ``SeparableConv`` params. A ``depthwise_bias`` has no place in Keras'
        ``SeparableConv`` and raises.
      depth_multiplier: ``M``; it cannot be read from the shapes.

    Returns:
      ``{"depthwise_kernel": (*window, C, M), "pointwise_kernel": (*ones, C * M, F),
      "bias": (F,)}``, in the order of ``layer.get_weights()``.

    Example:
      >>> import numpy as np
      >>> w = separable_to_keras(
      ...     {"depthwise_kernel": np.zeros((3, 3, 1, 8)), "pointwise_kernel": np.zeros((8, 4))},
      ...     depth_multiplier=2,
      ... )
      >>> w["depthwise_kernel"].shape, w["pointwise_kernel"].shape
      ((3, 3, 4, 2), (1, 1, 8, 4))
    """
    for key in ("depthwise_kernel", "pointwise_kernel"):
        if key not in params:
            raise ValueError(f"`params` has no {key!r}; got keys {sorted(params)}")
    if params.get("depthwise_bias") is not None:
        raise ValueError(
            "`params` has a 'depthwise_bias', which Keras' SeparableConv does not have; "
            "export a model built with use_depthwise_bias=False"
        )
    dw = depthwise_to_keras(params["depthwise_kernel"], depth_multiplier=depth_multiplier)
    n = dw["kernel"].ndim - 2
    pw = pointwise_to_keras(params["pointwise_kernel"], params.get("bias"), num_spatial_dims=n)
    out = {"depthwise_kernel": dw["kernel"], "pointwise_kernel": pw["kernel"]}
    return _checks.with_bias(out, "bias", pw.get("bias"))


_PADDING = {"same": "SAME", "valid": "VALID", "causal": "CAUSAL"}


def conv_kwargs_from_keras(layer_or_config: Any) -> dict[str, Any]:
    """Our module options from a Keras conv layer or its ``get_config()`` dict.

    Args:
      layer_or_config: a ``DepthwiseConv``, ``SeparableConv`` or ``Conv`` layer,
        or its config.

    Returns:
      ``kernel_size``, ``strides``, ``padding``, ``kernel_dilation``,
      ``data_format``, ``use_bias``, plus ``depth_multiplier`` and ``features``
      when the layer has them (``filters`` becomes ``features``). A ``Conv`` with
      ``groups > 1`` also gives ``groups``, which our modules do not take: use
      :func:`sepconv_jax.grouped_conv` for it.

    Raises:
      ValueError: for a padding Keras does not define.

    Example:
      >>> conv_kwargs_from_keras(
      ...     {"kernel_size": (3, 3), "strides": (2, 2), "padding": "same",
      ...      "dilation_rate": (1, 1), "depth_multiplier": 2, "use_bias": True,
      ...      "data_format": "channels_last"}
      ... )["padding"]
      'SAME'
    """
    config = layer_or_config if isinstance(layer_or_config, dict) else layer_or_config.get_config()
    padding = str(config["padding"]).lower()
    if padding not in _PADDING:
        raise ValueError(f"unknown Keras padding {config['padding']!r}; expected one of {_PADDING}")
    kwargs: dict[str, Any] = {
        "kernel_size": tuple(int(k) for k in config["kernel_size"]),
        "strides": tuple(int(s) for s in config["strides"]),
        "padding": _PADDING[padding],
        "kernel_dilation": tuple(int(d) for d in config["dilation_rate"]),
        "data_format": config.get("data_format") or "channels_last",
        "use_bias": bool(config.get("use_bias", True)),
    }
    if "depth_multiplier" in config:
        kwargs["depth_multiplier"] = int(config["depth_multiplier"])
    if config.get("filters") is not None:
        kwargs["features"] = int(config["filters"])
    if int(config.get("groups", 1)) != 1:
        kwargs["groups"] = int(config["groups"])
    return kwargs
