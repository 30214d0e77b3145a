"""The demo's networks: one topology each, with standard or separable convolutions.

The first layer is a standard convolution in both variants, as in MobileNet: on a
one-channel input a separable layer would be a single filter scaled per output
channel. Only the blocks after it differ.

:class:`StreamingDetector`, the streaming demo's network, is causal and separable
throughout, so it runs on a live waveform with ``decode=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from sepconv_jax.linen import DepthwiseConv, PointwiseConv, SeparableConv

__all__ = ["DigitsCNN", "SequenceCNN", "StreamingDetector"]


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


class StreamingDetector(nn.Module):
    """A causal per-sample event detector on a raw waveform, made to stream.

    A causal depthwise stem on the one input channel with ``channels`` outputs
    (with one input channel, a depthwise convolution of depth multiplier
    ``channels`` is a standard convolution), then residual blocks ``x + relu(
    separable(x))`` with causal, dilated windows (a WaveNet-like stack), then a
    per-sample pointwise classifier. Every windowed layer streams with
    ``decode=True`` (see :mod:`sepconv_jax.streaming`), so the network runs on a
    live waveform chunk by chunk and gives the same outputs as offline.

    Attributes:
      channels: width of the stem and the blocks.
      kernel: window length of every layer.
      dilations: one block per dilation; the receptive field is
        ``1 + (kernel - 1) * (1 + sum(dilations))`` samples.
      num_classes: outputs per sample.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.apps.networks import StreamingDetector
      >>> model = StreamingDetector()
      >>> x = jnp.zeros((2, 400, 1))  # (batch, samples, 1)
      >>> variables = jax.jit(model.init)(jax.random.key(0), x)
      >>> jax.jit(model.apply)(variables, x).shape
      (2, 400, 2)
      >>> model.receptive_field()
      513
    """

    channels: int = 12
    kernel: int = 9
    dilations: Sequence[int] = (1, 2, 4, 8, 16, 32)
    num_classes: int = 2

    def receptive_field(self) -> int:
        """Samples an output depends on: the stem's window and every block's."""
        return 1 + (self.kernel - 1) * (1 + sum(self.dilations))

    @nn.compact
    def __call__(self, x: jax.Array, decode: bool = False) -> jax.Array:
        """``(batch, samples, 1)`` waveforms to ``(batch, samples, num_classes)`` logits.

        With ``decode=True``, ``x`` is the next chunk of a stream (call ``apply``
        with ``mutable=["cache"]``).
        """
        stem = DepthwiseConv(
            (self.kernel,), depth_multiplier=self.channels, padding="CAUSAL", name="stem"
        )
        h = stem(x, decode=decode)
        for i, dilation in enumerate(self.dilations, start=1):
            conv = SeparableConv(
                self.channels,
                (self.kernel,),
                kernel_dilation=dilation,
                padding="CAUSAL",
                name=f"block{i}",
            )
            h = h + nn.relu(conv(h, decode=decode))
        return PointwiseConv(self.num_classes, name="head")(nn.relu(h))
