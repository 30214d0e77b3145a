"""The layer shapes of the benchmark suite: MobileNetV2's and EfficientNet-B0's
depthwise + projection layers at 224x224, and the small ``--quick`` ones.

Plain records, read by :mod:`sepconv_jax.apps.bench_layers` (the JAX columns) and
:mod:`sepconv_jax.apps.bench_torch` (the PyTorch column); measures nothing.

Example:
  >>> from sepconv_jax.apps.bench_shapes import layer_shapes
  >>> layers = layer_shapes(("MobileNetV2",))
  >>> len(layers), layers[0].name
  (12, '112x112 C32 k3 s1 N16')
  >>> round(layers[0].analytic_savings, 2)  # 9 * 16 / (9 + 16)
  5.76
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sepconv_jax import cost

__all__ = ["MODEL_LAYERS", "PASSES", "QUICK_LAYERS", "Layer", "Shape", "layer_shapes"]

#: ``(input size, channels C, kernel k, stride s, projection channels N)`` of one layer.
Shape = tuple[int, int, int, int, int]

#: Depthwise + projection layers at 224x224 input: (input size, channels C, kernel k,
#: stride s, projection channels N). MobileNetV2: Sandler et al. 2018, Table 2
#: (expansion 6 except the first block). EfficientNet-B0: Tan & Le 2019, Table 1.
MODEL_LAYERS: dict[str, tuple[Shape, ...]] = {
    "MobileNetV2": (
        (112, 32, 3, 1, 16),
        (112, 96, 3, 2, 24),
        (56, 144, 3, 1, 24),
        (56, 144, 3, 2, 32),
        (28, 192, 3, 1, 32),
        (28, 192, 3, 2, 64),
        (14, 384, 3, 1, 64),
        (14, 384, 3, 1, 96),
        (14, 576, 3, 1, 96),
        (14, 576, 3, 2, 160),
        (7, 960, 3, 1, 160),
        (7, 960, 3, 1, 320),
    ),
    "EfficientNet-B0": (
        (112, 32, 3, 1, 16),
        (112, 96, 3, 2, 24),
        (56, 144, 3, 1, 24),
        (56, 144, 5, 2, 40),
        (28, 240, 5, 1, 40),
        (28, 240, 3, 2, 80),
        (14, 480, 3, 1, 80),
        (14, 480, 5, 1, 112),
        (14, 672, 5, 1, 112),
        (14, 672, 5, 2, 192),
        (7, 1152, 5, 1, 192),
        (7, 1152, 3, 1, 320),
    ),
}

#: Small shapes for ``--quick``: enough to run every code path in seconds.
QUICK_LAYERS: tuple[Shape, ...] = ((16, 32, 3, 1, 32), (8, 16, 5, 2, 24))

PASSES = ("fwd", "fwd+bwd")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One depthwise (``k x k``, stride ``s``, ``C`` channels) + projection (``C -> N``) layer."""

    size: int
    channels: int
    kernel: int
    stride: int
    out_channels: int
    models: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return (
            f"{self.size}x{self.size} C{self.channels} k{self.kernel} s{self.stride} "
            f"N{self.out_channels}"
        )

    @property
    def depthwise_name(self) -> str:
        return f"{self.size}x{self.size} C{self.channels} k{self.kernel} s{self.stride}"

    @property
    def analytic_savings(self) -> float:
        """Standard over separable mult-adds: ``k^2 C N / (k^2 C + C N)``."""
        return cost.savings_factor(self.kernel, self.out_channels)


def layer_shapes(models: Sequence[str] = tuple(MODEL_LAYERS)) -> list[Layer]:
    """The distinct layer shapes of ``models``, in order, each listing its models.

    Args:
      models: keys of :data:`MODEL_LAYERS`.

    Returns:
      One :class:`Layer` per distinct ``(size, C, k, s, N)``.

    Raises:
      ValueError: for an unknown model name.
    """
    found: dict[Shape, list[str]] = {}
    for model in models:
        if model not in MODEL_LAYERS:
            raise ValueError(f"`models` must be among {tuple(MODEL_LAYERS)}, got {model!r}")
        for shape in MODEL_LAYERS[model]:
            found.setdefault(shape, []).append(model)
    return [Layer(*shape, models=tuple(names)) for shape, names in found.items()]
