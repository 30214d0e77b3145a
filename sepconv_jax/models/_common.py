"""What the reference architectures and their blocks share.

* :class:`Numerics`: the numerics fields (``dtype``, ``param_dtype``, ``precision``,
  ``impl``, keyword-only), which the builders of :mod:`sepconv_jax.models._build`
  pass to every layer.
* :class:`Normalized`: adds the batch-norm fields of a block.
* :class:`Classifier`: the fields every model has (``num_classes``, ``include_top``,
  ``pooling``, ``dropout_rate``, ``classifier_activation``), checked when the model is
  constructed; :func:`head` and :func:`classify`, the classification head.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from sepconv_jax import _layers, _spec
from sepconv_jax.kernels.dispatch import Impl
from sepconv_jax.ops import PrecisionLike

Activation = Callable[[jax.Array], jax.Array]
Dtype = Any
Pooling = Literal["avg", "max"] | None

POOLINGS = (None, "avg", "max")
#: Keras' batch-norm epsilon (the ``BatchNormalization`` default), which all four
#: reference architectures use in ``keras.applications``.
BN_EPSILON = 1e-3


# ----------------------------------------------------------------------------- checks


def check_rate(value: Any, name: str) -> float:
    """``value`` as a float in ``[0, 1)``, or an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a float in [0, 1), got {type(value).__name__}")
    if not 0 <= value < 1:
        raise ValueError(f"`{name}` must be in [0, 1), got {value!r}")
    return float(value)


def check_stride2_padding(stride2_padding: Any, name: str = "stride2_padding") -> Any:
    """``"same"``, ``"fixed"`` or ``"symmetric"``, see :func:`~sepconv_jax.models.blocks.conv_padding`."""
    for choice in ("same", "fixed", "symmetric"):
        if isinstance(stride2_padding, str) and stride2_padding == choice:
            return choice
    raise ValueError(f"`{name}` must be 'same', 'fixed' or 'symmetric', got {stride2_padding!r}")


def check_rank(x: Any, owner: str, what: str) -> jax.Array:
    """``x`` as an array with one axis per word of ``what``'s parenthesis, or a clear error."""
    shape, rank = jnp.shape(x), what.count(",") + 1
    if len(shape) != rank:
        raise ValueError(
            f"`x` has shape {tuple(shape)} (rank {len(shape)}) but {owner} takes channels-last "
            f"{what}, rank {rank}"
        )
    return jnp.asarray(x)


def check_positive_float(value: Any, name: str) -> float:
    """``value`` (a width multiplier or a scaling coefficient) as a float > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a positive float, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"`{name}` must be > 0, got {value!r}")
    return float(value)


def _optional_positive_float(value: Any, name: str) -> float | None:
    return None if value is None else check_positive_float(value, name)


#: The checks a class names in ``checks``: each takes the value and the field's name.
CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "positive_float": check_positive_float,
    "optional_positive_float": _optional_positive_float,
    "positive_int": _spec.check_positive_int,
    "rate": check_rate,
    "bool": _layers.check_bool,
    "stride2_padding": check_stride2_padding,
}

#: The check of every field of that name, in any block or model (in field order).
FIELD_CHECKS: dict[str, str] = {
    **dict.fromkeys(
        ("num_classes", "depth_multiplier", "kernel_size", "strides", "repeat", "dilation",
         "blocks", "channels"),
        "positive_int",
    ),
    **dict.fromkeys(
        ("width_multiplier", "alpha", "width_coefficient", "depth_coefficient", "bn_epsilon"),
        "positive_float",
    ),
    **dict.fromkeys(
        ("dropout_rate", "block_dropout_rate", "drop_rate", "drop_connect_rate", "drop_path_rate"),
        "rate",
    ),
    **dict.fromkeys(
        ("include_top", "include_preprocessing", "minimalistic", "causal", "residual"), "bool"
    ),
    "layer_scale_init_value": "optional_positive_float",
    "stride2_padding": "stride2_padding",
}  # fmt: skip

# ----------------------------------------------------------------------------- layers


class Numerics(nn.Module, kw_only=True):
    """The numerics options, passed to every layer by the builders.

    Keyword-only, so that a subclass's own fields come first in positional order.
    """

    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None
    impl: Impl = "auto"

    #: Field -> check (a key of :data:`CHECKS`) for fields :data:`FIELD_CHECKS` does not name.
    checks: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        super().__post_init__()
        _layers.check_dtype(self.dtype, "dtype", allow_none=True)
        _layers.check_dtype(self.param_dtype, "param_dtype", allow_none=False)
        _spec.check_precision(self.precision)
        _layers.check_impl(self.impl)
        for field in dataclasses.fields(self):
            check = self.checks.get(field.name, FIELD_CHECKS.get(field.name))
            if check is not None:
                CHECKS[check](getattr(self, field.name), field.name)


class Normalized(Numerics, kw_only=True):
    """Numerics options and the batch-norm hyperparameters of a block (keyword-only)."""

    bn_momentum: float = 0.99
    bn_epsilon: float = BN_EPSILON


# ----------------------------------------------------------------------------- models


class Classifier(Numerics):
    """The fields every reference architecture has, checked at construction, and its head.

    A subclass adds its own fields after these (and may change a default, e.g.
    ``dropout_rate``); the numerics fields of :class:`Numerics` are keyword-only.

    Attributes:
      num_classes: outputs of the classifier.
      include_top: end with the classifier (:func:`head`); otherwise return features.
      pooling: without the top, ``None`` returns ``(batch, *spatial, channels)``,
        ``"avg"`` or ``"max"`` pools them to ``(batch, channels)``.
      dropout_rate: dropout before the classifier.
      classifier_activation: applied to the logits, e.g. ``jax.nn.softmax``;
        ``None`` returns logits.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); ``None`` infers it.
      param_dtype, precision, impl: the parameters' dtype, the precision of every
        convolution and dense layer, the depthwise implementation
        (:mod:`sepconv_jax.kernels.dispatch`).
    """

    num_classes: int = 1000
    include_top: bool = True
    pooling: Pooling = None
    dropout_rate: float = 0.0
    classifier_activation: Activation | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be None, 'avg' or 'max', got {self.pooling!r}")
        if self.classifier_activation is not None and not callable(self.classifier_activation):
            raise TypeError(
                f"`classifier_activation` must be None or a callable such as jax.nn.softmax, got "
                f"{type(self.classifier_activation).__name__}"
            )


def head(config: Classifier, b: Any, x: jax.Array) -> jax.Array:
    """Global average pool, dropout, dense ``num_classes`` (or the pooled or plain features).

    ``b`` is the forward's builder (:class:`sepconv_jax.models._build.Builder`); the
    pool runs over every axis between the batch and the channels.
    """
    if not config.include_top:
        return pool(x, config.pooling)
    return classify(config, b, pool(x, "avg"))


def pool(x: jax.Array, pooling: Pooling) -> jax.Array:
    """``x`` averaged (``"avg"``) or maxed (``"max"``) over every axis between the batch
    and the channels, or itself (``None``)."""
    axes = tuple(range(1, x.ndim - 1))
    if pooling == "avg":
        return jnp.mean(x, axis=axes)
    return jnp.max(x, axis=axes) if pooling == "max" else x


def classify(config: Classifier, b: Any, x: jax.Array) -> jax.Array:
    """Dropout, the dense layer ``predictions`` and the classifier activation."""
    x = b.dense("predictions", b.dropout("top_dropout", x, config.dropout_rate), config.num_classes)
    return x if config.classifier_activation is None else config.classifier_activation(x)


# ----------------------------------------------------------------------------- input


#: Keras' ``backend.epsilon()``, the floor of a ``Normalization`` layer's standard deviation.
NORMALIZATION_EPSILON = 1e-7


def float_input(x: jax.Array) -> jax.Array:
    """``x`` itself if it is floating point, else as float32 (images in 0..255)."""
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def normalize_input(
    x: jax.Array, mean: Any, variance: Any, rescale: float = 1.0, owner: str = "the model"
) -> jax.Array:
    """``(x * rescale - mean) / max(sqrt(variance), 1e-7)`` per channel, as Keras'
    ``Rescaling`` followed by ``Normalization`` compute it.

    Raises:
      ValueError: when ``mean`` or ``variance`` do not have one value per channel.
    """
    channels = x.shape[-1]
    if len(mean) != channels or len(variance) != channels:
        raise ValueError(
            f"`input_mean` and `input_variance` have {len(mean)} and {len(variance)} values "
            f"but `x` has {channels} channels; give {owner} one per channel or set "
            f"include_preprocessing=False"
        )
    x = float_input(x)
    m = jnp.asarray(mean, x.dtype).reshape(1, 1, 1, channels)
    std = jnp.maximum(jnp.sqrt(jnp.asarray(variance, x.dtype)), NORMALIZATION_EPSILON)
    if rescale != 1.0:
        x = x * rescale
    return (x - m) / std.reshape(1, 1, 1, channels)
