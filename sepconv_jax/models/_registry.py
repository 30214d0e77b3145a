"""The model zoo by name, for the command line and for configuration files."""

from __future__ import annotations

from typing import Literal, get_args

import flax.linen as nn

from sepconv_jax.models.convnext import ConvNeXtBase, ConvNeXtSmall, ConvNeXtTiny
from sepconv_jax.models.efficientnet import VARIANTS as EFFICIENTNETS
from sepconv_jax.models.mobilenet_v1 import MobileNetV1
from sepconv_jax.models.mobilenet_v2 import MobileNetV2
from sepconv_jax.models.mobilenet_v3 import MobileNetV3Large, MobileNetV3Small
from sepconv_jax.models.xception import Xception

#: A model-zoo architecture's name.
Name = Literal[
    "mobilenet_v1",
    "mobilenet_v2",
    "efficientnet_b0",
    "xception",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
]

#: Every name :func:`from_name` knows, in display order.
NAMES: tuple[Name, ...] = get_args(Name)

_WITH_WIDTH = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
_CONVNEXTS = {"convnext_tiny": ConvNeXtTiny, "convnext_small": ConvNeXtSmall}
_CONVNEXTS["convnext_base"] = ConvNeXtBase


def from_name(
    name: Name,
    *,
    width_multiplier: float = 1.0,
    num_classes: int = 1000,
    full_convolution: bool = False,
) -> nn.Module:
    """The model-zoo architecture called ``name``, with the options it has.

    Args:
      name: one of :data:`NAMES`: ``"mobilenet_v1"``, ``"mobilenet_v2"``,
        ``"mobilenet_v3_small"``, ``"mobilenet_v3_large"``, ``"efficientnet_b0"`` ...
        ``"efficientnet_b7"``, ``"xception"``, ``"convnext_tiny"``,
        ``"convnext_small"`` or ``"convnext_base"``.
      width_multiplier: the width multiplier (MobileNets only, ``alpha`` of
        MobileNetV3; 1.0 for the others).
      num_classes: classifier outputs.
      full_convolution: standard convolutions in place of the separable ones
        (``"mobilenet_v1"`` only, the MobileNet paper's Table 4 comparison).

    Returns:
      The ``flax.linen`` module, not initialized.

    Raises:
      ValueError: for an unknown name, or an option the architecture does not have.

    Example:
      >>> from sepconv_jax import models
      >>> model = models.from_name("mobilenet_v2", width_multiplier=0.35, num_classes=10)
      >>> type(model).__name__, model.width_multiplier, model.num_classes
      ('MobileNetV2', 0.35, 10)
    """
    if name not in NAMES:
        raise ValueError(
            f"`name` must be one of {', '.join(NAMES)} (the model-zoo architectures), got {name!r}"
        )
    if full_convolution and name != "mobilenet_v1":
        raise ValueError(
            f"`full_convolution` is an option of mobilenet_v1 only (the MobileNet paper's "
            f"Table 4 comparison), not of {name}"
        )
    if width_multiplier != 1.0 and name not in _WITH_WIDTH:
        raise ValueError(
            f"{name} has no width multiplier; got `width_multiplier`={width_multiplier}, "
            f"only {' and '.join(_WITH_WIDTH)} take one"
        )
    if name == "mobilenet_v1":
        return MobileNetV1(
            num_classes=num_classes,
            width_multiplier=width_multiplier,
            full_convolution=full_convolution,
        )
    if name == "mobilenet_v2":
        return MobileNetV2(num_classes=num_classes, width_multiplier=width_multiplier)
    if name == "mobilenet_v3_small":
        return MobileNetV3Small(num_classes=num_classes, alpha=width_multiplier)
    if name == "mobilenet_v3_large":
        return MobileNetV3Large(num_classes=num_classes, alpha=width_multiplier)
    if name.startswith("efficientnet_"):
        return EFFICIENTNETS[name.removeprefix("efficientnet_")](num_classes=num_classes)
    if name in _CONVNEXTS:
        return _CONVNEXTS[name](num_classes=num_classes)
    return Xception(num_classes=num_classes)
