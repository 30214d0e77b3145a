"""What the reference architectures share: option checks and the classification head."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sepconv_jax import _spec
from sepconv_jax.linen import PointwiseConv, SeparableConv

POOLINGS = (None, "avg", "max")


check_positive_int = _spec.check_positive_int


def check_rate(value: Any, name: str) -> float:
    """``value`` as a float in ``[0, 1)``, or an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a float in [0, 1), got {type(value).__name__}")
    if not 0 <= value < 1:
        raise ValueError(f"`{name}` must be in [0, 1), got {value!r}")
    return float(value)


def check_multiplier(value: Any, name: str) -> float:
    """``value`` as a positive float, or an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a positive float, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"`{name}` must be > 0, got {value!r}")
    return float(value)


def check_head(module: nn.Module) -> None:
    """Checks the fields every model has: classes, top, pooling, dropout."""
    check_positive_int(module.num_classes, "num_classes")
    check_rate(module.dropout_rate, "dropout_rate")
    if module.pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be None, 'avg' or 'max', got {module.pooling!r}")
    if module.classifier_activation is not None and not callable(module.classifier_activation):
        raise TypeError(
            f"`classifier_activation` must be None or a callable such as jax.nn.softmax, got "
            f"{type(module.classifier_activation).__name__}"
        )


def head(module: nn.Module, x: jax.Array, train: bool) -> jax.Array:
    """Global average pool, dropout, dense ``num_classes`` (or the feature output).

    Must be called from the ``nn.compact`` method of ``module``, which provides
    ``include_top``, ``pooling``, ``dropout_rate``, ``num_classes``,
    ``classifier_activation`` and the numerics fields.
    """
    if not module.include_top:
        if module.pooling == "avg":
            return jnp.mean(x, axis=(1, 2))
        if module.pooling == "max":
            return jnp.max(x, axis=(1, 2))
        return x
    x = jnp.mean(x, axis=(1, 2))
    if module.dropout_rate > 0:
        x = nn.Dropout(module.dropout_rate, deterministic=not train, name="top_dropout")(x)
    x = nn.Dense(
        module.num_classes,
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        precision=module.precision,
        name="predictions",
    )(x)
    if module.classifier_activation is not None:
        x = module.classifier_activation(x)
    return x


def batch_norm(module: nn.Module, name: str, train: bool, momentum: float) -> nn.BatchNorm:
    """A Keras-convention batch norm (epsilon 1e-3) with ``module``'s numerics."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=momentum,
        epsilon=1e-3,
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        name=name,
    )


def conv(
    module: nn.Module,
    features: int,
    kernel_size: int,
    strides: int,
    padding: Any,
    name: str,
) -> nn.Conv:
    """A standard square convolution without bias, with ``module``'s numerics."""
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=padding,
        use_bias=False,
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        precision=module.precision,
        name=name,
    )


def pointwise(module: nn.Module, features: int, name: str) -> PointwiseConv:
    """A 1x1 convolution without bias (our :class:`PointwiseConv`), ``module``'s numerics."""
    return PointwiseConv(
        features=features,
        use_bias=False,
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        precision=module.precision,
        name=name,
    )


def separable(module: nn.Module, features: int, name: str) -> SeparableConv:
    """A 3x3 ``SAME`` separable conv without bias (Xception's unit), ``module``'s numerics."""
    return SeparableConv(
        features=features,
        kernel_size=(3, 3),
        padding="SAME",
        use_bias=False,
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        precision=module.precision,
        impl=module.impl,
        name=name,
    )
