"""The blocks of :mod:`sepconv_jax.models.blocks` as ``flax.nnx`` modules.

Each block takes the input width first, then keyword options: exactly the fields of
the linen block of the same name, with the same defaults and checks (a linen block
is built from them to validate them), and ``rngs=``. Parameters and batch
statistics have the linen block's names and shapes, so
:func:`sepconv_jax.models.nnx.from_linen` moves weights across unchanged.

Batch norm and dropout follow NNX's convention: a block is built in training mode
(batch statistics, dropout active) and ``block.eval()`` / ``block.train()`` switch it.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from sepconv_jax.models.nnx.blocks import InvertedResidual
  >>> block = InvertedResidual(8, features=8, expand_ratio=6, se_ratio=0.25, rngs=nnx.Rngs(0))
  >>> block.expand.kernel.shape, block.se.reduce.kernel.shape
  ((8, 48), (48, 2))
  >>> block.eval()
  >>> block(jnp.ones((2, 6, 6, 8))).shape
  (2, 6, 6, 8)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from sepconv_jax import _spec
from sepconv_jax.models import blocks as linen_blocks
from sepconv_jax.models.blocks import check_image, conv_padding, exact_gelu
from sepconv_jax.models.nnx._layers import Layers, maybe

__all__ = [
    "ConvNeXtBlock",
    "DepthwiseSeparableBlock",
    "InvertedResidual",
    "MBConv",
    "SqueezeExcite",
    "XceptionBlock",
]


def _in_features(value: Any) -> int:
    return _spec.check_positive_int(value, "in_features")


def _check_channels(x: jax.Array, in_features: int, owner: str) -> None:
    if x.shape[-1] != in_features:
        raise ValueError(
            f"`x` has {x.shape[-1]} channels but this {owner} was built with "
            f"in_features={in_features}"
        )


class DepthwiseSeparableBlock(nnx.Module):
    """MobileNet (v1) block, see :class:`sepconv_jax.models.blocks.DepthwiseSeparableBlock`.

    Args:
      in_features: input channels.
      rngs: random streams for the initializers.
      **options: the linen block's fields (``features``, ``strides``,
        ``depth_multiplier``, ``full_convolution``, ``stride2_padding``,
        ``activation``, ``bn_momentum``, ``bn_epsilon`` and the numerics).
    """

    def __init__(self, in_features: int, *, rngs: nnx.Rngs, **options: Any) -> None:
        config = linen_blocks.DepthwiseSeparableBlock(**options)
        self.in_features = _in_features(in_features)
        layers = Layers(config, rngs)
        self.activation = config.activation
        self.full_convolution = config.full_convolution
        padding = conv_padding(3, config.strides, config.stride2_padding)
        momentum, epsilon = config.bn_momentum, config.bn_epsilon
        if config.full_convolution:
            self.conv = layers.conv(in_features, config.features, 3, config.strides, padding)
            self.conv_bn = layers.batch_norm(config.features, momentum, epsilon)
        else:
            mid = in_features * config.depth_multiplier
            self.depthwise = layers.depthwise(
                in_features, 3, config.strides, padding, config.depth_multiplier
            )
            self.depthwise_bn = layers.batch_norm(mid, momentum, epsilon)
            self.pointwise = layers.pointwise(mid, config.features)
            self.pointwise_bn = layers.batch_norm(config.features, momentum, epsilon)

    def __call__(self, x: ArrayLike) -> jax.Array:
        """``(batch, height, width, in_features)`` -> ``(batch, height', width', features)``."""
        x = check_image(x, "DepthwiseSeparableBlock")
        _check_channels(x, self.in_features, "DepthwiseSeparableBlock")
        if self.full_convolution:
            return self.activation(self.conv_bn(self.conv(x)))
        x = self.activation(self.depthwise_bn(self.depthwise(x)))
        return self.activation(self.pointwise_bn(self.pointwise(x)))


class SqueezeExcite(nnx.Module):
    """Squeeze-and-excitation, see :class:`sepconv_jax.models.blocks.SqueezeExcite`.

    Args:
      in_features: channels of the input (and output).
      rngs: random streams for the initializers.
      **options: the linen block's fields (``features``, ``activation``, ``gate``
        and the numerics).
    """

    def __init__(self, in_features: int, *, rngs: nnx.Rngs, **options: Any) -> None:
        config = linen_blocks.SqueezeExcite(**options)
        in_features = _in_features(in_features)
        layers = Layers(config, rngs)
        self.activation = config.activation
        self.gate = config.gate
        self.reduce = layers.pointwise(in_features, config.features, use_bias=True)
        self.expand = layers.pointwise(config.features, in_features, use_bias=True)

    def __call__(self, x: ArrayLike) -> jax.Array:
        """``(batch, height, width, channels)`` -> the same shape."""
        x = check_image(x, "SqueezeExcite")
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = self.gate(self.expand(self.activation(self.reduce(s))))
        return x * s


class InvertedResidual(nnx.Module):
    """Inverted residual / MBConv, see :class:`sepconv_jax.models.blocks.InvertedResidual`.

    Args:
      in_features: input channels.
      rngs: random streams for the initializers and the stochastic depth.
      **options: the linen block's fields (``features``, ``expand_ratio``,
        ``kernel_size``, ``strides``, ``se_ratio``, ``drop_rate``, ``id_skip``,
        ``stride2_padding``, ``activation``, ``expanded_features``,
        ``se_features``, ``se_activation``, ``se_gate``, ``bn_momentum``,
        ``bn_epsilon`` and the numerics).
    """

    def __init__(self, in_features: int, *, rngs: nnx.Rngs, **options: Any) -> None:
        config = linen_blocks.InvertedResidual(**options)
        in_features = _in_features(in_features)
        self.in_features = in_features
        plan = config.plan(in_features)
        layers = Layers(config, rngs)
        momentum, epsilon = config.bn_momentum, config.bn_epsilon
        self.activation = config.activation
        self.residual = plan.residual
        self.expand: nnx.Module | None = nnx.data(None)
        self.expand_bn: nnx.Module | None = nnx.data(None)
        if plan.expanded != in_features:
            self.expand = layers.pointwise(in_features, plan.expanded)
            self.expand_bn = layers.batch_norm(plan.expanded, momentum, epsilon)
        self.depthwise = layers.depthwise(
            plan.expanded, config.kernel_size, config.strides, plan.padding
        )
        self.depthwise_bn = layers.batch_norm(plan.expanded, momentum, epsilon)
        self.se: SqueezeExcite | None = nnx.data(None)
        if plan.se_features is not None:
            se_activation = config.se_activation
            self.se = SqueezeExcite(
                plan.expanded,
                features=plan.se_features,
                activation=config.activation if se_activation is None else se_activation,
                gate=config.se_gate,
                dtype=config.dtype,
                param_dtype=config.param_dtype,
                precision=config.precision,
                rngs=rngs,
            )
        self.project = layers.pointwise(plan.expanded, config.features)
        self.project_bn = layers.batch_norm(config.features, momentum, epsilon)
        drop_path = layers.dropout(config.drop_rate, per_sample=True) if plan.residual else None
        self.drop_path = nnx.data(drop_path)

    def __call__(self, x: ArrayLike) -> jax.Array:
        """``(batch, height, width, in_features)`` -> ``(batch, height', width', features)``."""
        x = check_image(x, "InvertedResidual")
        _check_channels(x, self.in_features, "InvertedResidual")
        h = x
        if self.expand is not None and self.expand_bn is not None:
            h = self.activation(self.expand_bn(self.expand(h)))
        h = self.activation(self.depthwise_bn(self.depthwise(h)))
        h = maybe(self.se, h)
        h = self.project_bn(self.project(h))
        if self.residual:
            h = maybe(self.drop_path, h) + x.astype(h.dtype)
        return h


#: EfficientNet's name for :class:`InvertedResidual`.
MBConv = InvertedResidual


class XceptionBlock(nnx.Module):
    """Xception block, see :class:`sepconv_jax.models.blocks.XceptionBlock`.

    Args:
      in_features: input channels.
      rngs: random streams for the initializers.
      **options: the linen block's fields (``features``, ``strides``,
        ``activate_first``, ``activation``, ``bn_momentum``, ``bn_epsilon`` and the
        numerics).
    """

    def __init__(self, in_features: int, *, rngs: nnx.Rngs, **options: Any) -> None:
        config = linen_blocks.XceptionBlock(**options)
        in_features = _in_features(in_features)
        if len(config.features) == 0:
            raise ValueError("`features` is empty; an XceptionBlock needs at least one unit")
        layers = Layers(config, rngs)
        momentum, epsilon = config.bn_momentum, config.bn_epsilon
        self.units = len(config.features)
        self.strides = config.strides
        self.activate_first = config.activate_first
        self.activation = config.activation
        width = in_features
        for i, features in enumerate(config.features, 1):
            setattr(self, f"sepconv{i}", layers.separable(width, features))
            setattr(self, f"sepconv{i}_bn", layers.batch_norm(features, momentum, epsilon))
            width = features
        self.identity = config.strides == 1 and in_features == width
        if not self.identity:
            self.residual = layers.pointwise(in_features, width)
            self.residual_bn = layers.batch_norm(width, momentum, epsilon)

    def __call__(self, x: ArrayLike) -> jax.Array:
        """``(batch, height, width, channels)`` -> ``(batch, height', width', features[-1])``."""
        x = check_image(x, "XceptionBlock")
        h = x
        for i in range(1, self.units + 1):
            if i > 1 or self.activate_first:
                h = self.activation(h)
            h = getattr(self, f"sepconv{i}_bn")(getattr(self, f"sepconv{i}")(h))
        if self.strides != 1:
            s = self.strides
            h = nn.max_pool(h, (3, 3), strides=(s, s), padding="SAME")
        if self.identity:
            return h + x.astype(h.dtype)
        r = x[:, :: self.strides, :: self.strides, :]
        r = self.residual_bn(self.residual(r))
        return h + r.astype(h.dtype)


class ConvNeXtBlock(nnx.Module):
    """ConvNeXt block, see :class:`sepconv_jax.models.blocks.ConvNeXtBlock`.

    Args:
      in_features: channels of the input (and output).
      rngs: random streams for the initializers and the stochastic depth.
      **options: the linen block's fields (``kernel_size``, ``mlp_ratio``,
        ``layer_scale_init_value``, ``drop_rate``, ``norm_epsilon`` and the numerics).
    """

    def __init__(self, in_features: int, *, rngs: nnx.Rngs, **options: Any) -> None:
        config = linen_blocks.ConvNeXtBlock(**options)
        c = _in_features(in_features)
        layers = Layers(config, rngs)
        self.depthwise = layers.depthwise(c, config.kernel_size, 1, "SAME", use_bias=True)
        self.norm = layers.layer_norm(c, config.norm_epsilon)
        self.pointwise1 = layers.pointwise(c, config.mlp_ratio * c, use_bias=True)
        self.pointwise2 = layers.pointwise(config.mlp_ratio * c, c, use_bias=True)
        self.layer_scale: nnx.Param | None = nnx.data(None)
        if config.layer_scale_init_value is not None:
            self.layer_scale = nnx.Param(
                jnp.full((c,), config.layer_scale_init_value, config.param_dtype)
            )
        self.drop_path = nnx.data(layers.dropout(config.drop_rate, per_sample=True))

    def __call__(self, x: ArrayLike) -> jax.Array:
        """``(batch, height, width, channels)`` -> the same shape."""
        x = check_image(x, "ConvNeXtBlock")
        h = self.norm(self.depthwise(x))
        h = self.pointwise2(exact_gelu(self.pointwise1(h)))
        if self.layer_scale is not None:
            h = h * self.layer_scale[...].astype(h.dtype).reshape(1, 1, 1, -1)
        return x.astype(h.dtype) + maybe(self.drop_path, h)
