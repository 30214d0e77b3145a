"""The demo's networks: one topology each, with standard or separable convolutions.

The first layer is a standard convolution in both variants, as in MobileNet: on a
one-channel input a separable layer would be a single filter scaled per output
channel. Only the blocks after it differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from sepconv_jax.linen import SeparableConv

__all__ = ["DigitsCNN", "SequenceCNN"]


def _conv(separable: bool, features: int, window: tuple[int, ...], name: str, **kwargs):
    if separable:
        return SeparableConv(features, window, name=name, **kwargs)
    return nn.Conv(features, window, name=name, **kwargs)


class DigitsCNN(nn.Module):
    """A small image classifier: a standard 3x3 stem, 3x3 blocks, global pooling, dense.

    Attributes:
      separable: use :class:`sepconv_jax.linen.SeparableConv` in the blocks (the
        stem stays a standard convolution), else ``flax.linen.Conv``.
      stem: stem output channels.
      blocks: ``(features, stride)`` of each block.
      num_classes: classifier outputs.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.apps.networks import DigitsCNN
      >>> model = DigitsCNN(separable=True)
      >>> x = jnp.zeros((2, 8, 8, 1))
      >>> variables = jax.jit(model.init)(jax.random.key(0), x)
      >>> jax.jit(model.apply)(variables, x).shape
      (2, 10)
    """

    separable: bool
    stem: int = 32
    blocks: Sequence[tuple[int, int]] = ((64, 1), (128, 2), (128, 1))
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(batch, height, width, 1)`` images to ``(batch, num_classes)`` logits."""
        x = nn.relu(nn.Conv(self.stem, (3, 3), name="stem")(x))
        for i, (features, stride) in enumerate(self.blocks, start=1):
            x = nn.relu(_conv(self.separable, features, (3, 3), f"block{i}", strides=stride)(x))
        return nn.Dense(self.num_classes, name="head")(x.mean(axis=(1, 2)))


class SequenceCNN(nn.Module):
    """A causal 1-D classifier: a standard stem, dilated causal blocks, pooling, dense.

    Every convolution uses ``padding="CAUSAL"``: output step ``t`` sees inputs up to
    ``t`` only, as a streaming audio model needs.

    Attributes:
      separable: use :class:`sepconv_jax.linen.SeparableConv` in the blocks, else
        ``flax.linen.Conv``.
      kernel: window length.
      stem: stem output channels.
      blocks: ``(features, dilation)`` of each block.
      num_classes: classifier outputs.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.apps.networks import SequenceCNN
      >>> model = SequenceCNN(separable=True)
      >>> x = jnp.zeros((2, 64, 1))
      >>> variables = jax.jit(model.init)(jax.random.key(0), x)
      >>> jax.jit(model.apply)(variables, x).shape
      (2, 4)
    """

    separable: bool
    kernel: int = 9
    stem: int = 32
    blocks: Sequence[tuple[int, int]] = ((64, 1), (128, 2), (128, 4))
    num_classes: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(batch, length, 1)`` sequences to ``(batch, num_classes)`` logits."""
        x = nn.relu(nn.Conv(self.stem, (self.kernel,), padding="CAUSAL", name="stem")(x))
        for i, (features, dilation) in enumerate(self.blocks, start=1):
            conv = _conv(
                self.separable,
                features,
                (self.kernel,),
                f"block{i}",
                padding="CAUSAL",
                kernel_dilation=dilation,
            )
            x = nn.relu(conv(x))
        return nn.Dense(self.num_classes, name="head")(x.mean(axis=1))
