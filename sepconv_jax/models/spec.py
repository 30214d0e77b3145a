"""The architectures as data: block tables, variants and the registry rows (no Flax here).

Every table a model is built from lives here once, as plain tuples and frozen records:
the linen and the NNX model, the Keras and timm importers and the command line all
read them. A variant of a family (EfficientNet-B3, ConvNeXt-S, a MobileNet width) is a
:class:`Arch` row of :data:`ARCHS`, not a class written by hand; the public classes of
:mod:`sepconv_jax.models` and :mod:`sepconv_jax.models.nnx` are generated from the rows.

Example:
  >>> from sepconv_jax.models import spec
  >>> row = spec.ARCHS["efficientnet_b3"]
  >>> row.class_name, dict(row.defaults)["width_coefficient"], row.default_size
  ('EfficientNetB3', 1.2, 300)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

__all__ = ["ARCHS", "Arch"]

# ----------------------------------------------------------------------------- MobileNet (v1)

#: (pointwise output channels, stride) of the 13 depthwise-separable blocks
#: (Howard et al., 2017, Table 1).
MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *(((512, 1),) * 5),
    (1024, 2),
    (1024, 1),
)
MOBILENET_V1_STEM = 32
#: Keras' batch-norm momentum for MobileNet (its default).
MOBILENET_V1_BN_MOMENTUM = 0.99

# ----------------------------------------------------------------------------- MobileNetV2

#: (expansion t, output channels c, repeats n, first stride s), Sandler et al., 2018, Table 2.
MOBILENET_V2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
MOBILENET_V2_STEM = 32
MOBILENET_V2_LAST = 1280
#: Keras' batch-norm momentum for MobileNetV2.
MOBILENET_V2_BN_MOMENTUM = 0.999

# ----------------------------------------------------------------------------- MobileNetV3

Variant = Literal["large", "small"]

#: Per block: (expansion, output channels, kernel, stride, squeeze-excite, nonlinearity).
#: ``"K"`` is 5 (3 when minimalistic); ``"RE"`` is ReLU, ``"HS"`` hard-swish (ReLU
#: when minimalistic). Howard et al., 2019, Table 1 (Large) and Table 2 (Small), with
#: the expansions written as Keras writes them (the paper lists expanded widths).
MOBILENET_V3_TABLES: dict[Variant, tuple[tuple[float, int, int | str, int, bool, str], ...]] = {
    "large": (
        (1, 16, 3, 1, False, "RE"),
        (4, 24, 3, 2, False, "RE"),
        (3, 24, 3, 1, False, "RE"),
        *((3, 40, "K", s, True, "RE") for s in (2, 1, 1)),
        (6, 80, 3, 2, False, "HS"),
        (2.5, 80, 3, 1, False, "HS"),
        (2.3, 80, 3, 1, False, "HS"),
        (2.3, 80, 3, 1, False, "HS"),
        (6, 112, 3, 1, True, "HS"),
        (6, 112, 3, 1, True, "HS"),
        *((6, 160, "K", s, True, "HS") for s in (2, 1, 1)),
    ),
    "small": (
        (1, 16, 3, 2, True, "RE"),
        (72 / 16, 24, 3, 2, False, "RE"),
        (88 / 24, 24, 3, 1, False, "RE"),
        (4, 40, "K", 2, True, "HS"),
        (6, 40, "K", 1, True, "HS"),
        (6, 40, "K", 1, True, "HS"),
        (3, 48, "K", 1, True, "HS"),
        (3, 48, "K", 1, True, "HS"),
        *((6, 96, "K", s, True, "HS") for s in (2, 1, 1)),
    ),
}
#: Width of the 1x1 convolution after pooling (Keras' ``last_point_ch``).
MOBILENET_V3_LAST_POINT: dict[Variant, int] = {"large": 1280, "small": 1024}
#: Squeeze-excite width over the expanded width (rounded to a multiple of 8).
MOBILENET_V3_SE_RATIO = 0.25
#: The stem's width, the same for every ``alpha`` (as in Keras).
MOBILENET_V3_STEM = 16
MOBILENET_V3_BN_MOMENTUM = 0.999

# ----------------------------------------------------------------------------- EfficientNet

#: (kernel, repeats, in channels, out channels, expansion, first stride) per stage of
#: B0 (Tan & Le, 2019, Table 1); every block has squeeze-excite of ratio 0.25.
EFFICIENTNET_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
EFFICIENTNET_SE_RATIO = 0.25
EFFICIENTNET_BN_MOMENTUM = 0.99
#: Channel counts are rounded to multiples of this (Keras' ``depth_divisor``).
EFFICIENTNET_DEPTH_DIVISOR = 8
#: (width coefficient, depth coefficient, resolution, dropout rate) of B0 ... B7, as
#: ``keras.applications`` (and the reference implementation) define the compound
#: scaling; the paper's Eq. 3 with phi = 0 ... 7, rounded.
EFFICIENTNET_SCALING: dict[str, tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}

# ----------------------------------------------------------------------------- ConvNeXt

#: (depths, dims) of ConvNeXt-T/S/B (Liu et al., 2022, Table 9).
CONVNEXT_VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
}
#: The layer norms' epsilon (Keras and timm).
CONVNEXT_NORM_EPSILON = 1e-6

# ----------------------------------------------------------------------------- Xception

#: (separable conv widths, stride, ReLU first) of blocks 2 to 13 (Chollet, 2017,
#: Fig. 5): entry flow (2-4), middle flow (5-12), first exit-flow block (13).
XCEPTION_BLOCKS: tuple[tuple[tuple[int, ...], int, bool], ...] = (
    ((128, 128), 2, False),
    ((256, 256), 2, True),
    ((728, 728), 2, True),
    *((((728, 728, 728), 1, True),) * 8),
    ((728, 1024), 2, True),
)
XCEPTION_BN_MOMENTUM = 0.99
#: The smallest input side the two unpadded stem convolutions leave a pixel of.
XCEPTION_MIN_SIZE = 7

# ----------------------------------------------------------------------------- speech

#: Kernel widths of MatchboxNet's three residual blocks B1-B3 (Majumdar & Ginsburg,
#: 2020, Table 1; NeMo's matchboxnet_3x1x64 configuration).
MATCHBOXNET_KERNELS: tuple[int, ...] = (13, 15, 17)
#: (kernel width, channels) of QuartzNet's five block kinds B1-B5 (Kriman et al.,
#: 2019, Table 1).
QUARTZNET_BLOCKS: tuple[tuple[int, int], ...] = (
    (33, 256),
    (39, 256),
    (51, 512),
    (63, 512),
    (75, 512),
)

# ----------------------------------------------------------------------------- registry

Family = Literal[
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3",
    "efficientnet",
    "xception",
    "convnext",
    "speech",
]


@dataclasses.dataclass(frozen=True)
class Arch:
    """One registered architecture: a family and the defaults that make it a variant.

    Attributes:
      name: the name :func:`sepconv_jax.models.from_name` and the command line use.
      family: the module of :mod:`sepconv_jax.models` whose forward builds it (its
        general class is ``family_class``).
      class_name: the public class (linen and NNX) generated for it.
      family_class: the family's general class, whose fields the variant's
        ``defaults`` change.
      defaults: field defaults that differ from the family class's.
      width_option: the field a width multiplier sets (``None``: no width option).
      default_size: the input side the variant was designed for.
      doc: the first line of the generated class's docstring.
      timm: the name of the same architecture in timm (``None``: none).
      speech: a speech model (``(batch, time, features)`` in), not an image model.
    """

    name: str
    family: Family
    class_name: str
    family_class: str
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    width_option: str | None = None
    default_size: int = 224
    doc: str = ""
    timm: str | None = None
    speech: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))


def _efficientnet(variant: str) -> Arch:
    width, depth, size, dropout = EFFICIENTNET_SCALING[variant]
    return Arch(
        f"efficientnet_{variant}",
        "efficientnet",
        f"EfficientNet{variant.upper()}",
        "EfficientNet",
        {"width_coefficient": width, "depth_coefficient": depth, "dropout_rate": dropout},
        default_size=size,
        timm=f"efficientnet_{variant}",
        doc=f"EfficientNet-{variant.upper()} (width coefficient {width}, depth coefficient "
        f"{depth}, dropout {dropout}, {size} x {size}).",
    )


def _convnext(variant: str) -> Arch:
    depths, dims = CONVNEXT_VARIANTS[variant]
    letter = variant[0].upper()
    return Arch(
        f"convnext_{variant}",
        "convnext",
        f"ConvNeXt{variant.title()}",
        "ConvNeXt",
        {"depths": depths, "dims": dims},
        timm=f"convnext_{variant}",
        doc=f"ConvNeXt-{letter}: depths {depths}, widths {dims}.",
    )


#: Every architecture by name: the image models in display order, then the speech models.
ARCHS: dict[str, Arch] = {
    arch.name: arch
    for arch in (
        Arch("mobilenet_v1", "mobilenet_v1", "MobileNetV1", "MobileNetV1", {}, "width_multiplier"),
        Arch(
            "mobilenet_v2",
            "mobilenet_v2",
            "MobileNetV2",
            "MobileNetV2",
            {},
            "width_multiplier",
            timm="mobilenetv2_100",
        ),
        _efficientnet("b0"),
        Arch("xception", "xception", "Xception", "Xception", default_size=299),
        Arch(
            "mobilenet_v3_small",
            "mobilenet_v3",
            "MobileNetV3Small",
            "MobileNetV3",
            {"variant": "small"},
            "alpha",
            timm="mobilenetv3_small_100",
            doc="MobileNetV3-Small (Table 2 of the paper; 11 inverted residuals).",
        ),
        Arch(
            "mobilenet_v3_large",
            "mobilenet_v3",
            "MobileNetV3Large",
            "MobileNetV3",
            {"variant": "large"},
            "alpha",
            timm="mobilenetv3_large_100",
            doc="MobileNetV3-Large (Table 1 of the paper; 15 inverted residuals).",
        ),
        *(_efficientnet(f"b{i}") for i in range(1, 8)),
        *(_convnext(v) for v in CONVNEXT_VARIANTS),
        Arch("matchboxnet", "speech", "MatchboxNet", "MatchboxNet", speech=True),
        Arch("quartznet", "speech", "QuartzNet", "QuartzNet", speech=True),
    )
}
