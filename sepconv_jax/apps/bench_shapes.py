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
from collections.abc import Iterator, Sequence

from sepconv_jax import cost
from sepconv_jax.models import spec

__all__ = ["MODEL_LAYERS", "PASSES", "QUICK_LAYERS", "Layer", "Shape", "layer_shapes"]

#: ``(input size, channels C, kernel k, stride s, projection channels N)`` of one layer.
Shape = tuple[int, int, int, int, int]


def _distinct_layers(blocks: Sequence[tuple[int, float, int, int, int]]) -> tuple[Shape, ...]:
    """The distinct depthwise + projection layers of a stack of inverted residuals on a
    224x224 input (112x112 after the stem), in order; a block is ``(kernel, expansion,
    input channels, output channels, stride)``."""
    size, shapes = 112, []
    for k, t, c_in, c_out, s in blocks:
        shapes.append((size, int(c_in * t), k, s, c_out))
        size //= s
    return tuple(dict.fromkeys(shapes))


def _mobilenet_v2_blocks() -> Iterator[tuple[int, float, int, int, int]]:
    c_in = spec.MOBILENET_V2_STEM
    for t, c, n, s in spec.MOBILENET_V2_STAGES:
        for j in range(n):
            yield 3, t, c_in, c, s if j == 0 else 1
            c_in = c


def _efficientnet_b0_blocks() -> Iterator[tuple[int, float, int, int, int]]:
    for k, n, c_in, c_out, t, s in spec.EFFICIENTNET_STAGES:
        for j in range(n):
            yield k, t, c_in if j == 0 else c_out, c_out, s if j == 0 else 1


#: Depthwise + projection layers at 224x224 input: (input size, channels C, kernel k,
#: stride s, projection channels N), each distinct layer of MobileNetV2's and
#: EfficientNet-B0's block tables (:mod:`sepconv_jax.models.spec`) once.
MODEL_LAYERS: dict[str, tuple[Shape, ...]] = {
    "MobileNetV2": _distinct_layers(tuple(_mobilenet_v2_blocks())),
    "EfficientNet-B0": _distinct_layers(tuple(_efficientnet_b0_blocks())),
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
