"""The reference architectures of :mod:`sepconv_jax.models` as ``flax.nnx`` modules.

Each class has the name of its linen counterpart and takes the same options (the
linen model's fields, with the same defaults and checks: a linen model is built
from them to validate them), plus ``in_features`` (image channels, 3) and
``rngs=``. Both are built from the same block tables
(:func:`~sepconv_jax.models.efficientnet.efficientnet_blocks` and its siblings), and
parameters and batch statistics carry the linen model's names and shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from sepconv_jax import _spec
from sepconv_jax.models import _common, convnext, efficientnet, mobilenet_v3, xception
from sepconv_jax.models import mobilenet_v1 as mobilenet_v1_lib
from sepconv_jax.models import mobilenet_v2 as mobilenet_v2_lib
from sepconv_jax.models.blocks import check_image, conv_padding, stem_padding
from sepconv_jax.models.nnx import blocks
from sepconv_jax.models.nnx._layers import Layers, maybe

__all__ = [
    "ConvNeXt",
    "ConvNeXtBase",
    "ConvNeXtSmall",
    "ConvNeXtTiny",
    "EfficientNet",
    "EfficientNetB0",
    "EfficientNetB1",
    "EfficientNetB2",
    "EfficientNetB3",
    "EfficientNetB4",
    "EfficientNetB5",
    "EfficientNetB6",
    "EfficientNetB7",
    "MobileNetV1",
    "MobileNetV2",
    "MobileNetV3Large",
    "MobileNetV3Small",
    "Xception",
]


def _numerics(config: _common.Numerics) -> dict[str, Any]:
    return dict(
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        precision=config.precision,
        impl=config.impl,
    )


class Model(nnx.Module):
    """What the NNX reference architectures share: options from the linen model, the head.

    A subclass names its linen counterpart (``linen_class``) and the path of its
    first convolution's kernel (``stem_kernel``, whose input width is the image's
    channel count), builds its layers in ``_build`` and runs them in ``_features``.

    The options are kept as attributes of the same names (``model.num_classes``,
    ...). Like ``flax.nnx.BatchNorm`` and ``flax.nnx.Dropout``, a model is built in
    training mode; ``model.eval()`` switches it to inference (running statistics,
    no dropout) and ``model.train()`` back.
    """

    linen_class: ClassVar[type[_common.Classifier]]
    stem_kernel: ClassVar[tuple[str, ...]]

    # options every model has (set from the linen model's fields)
    num_classes: int
    include_top: bool
    pooling: _common.Pooling
    dropout_rate: float
    classifier_activation: _common.Activation | None
    # options of the models with preprocessing
    include_preprocessing: bool
    input_mean: Sequence[float]
    input_variance: Sequence[float]

    def __init__(self, *args: Any, in_features: int = 3, rngs: nnx.Rngs, **options: Any):
        config = self.linen_class(*args, **options)
        self.in_features = _spec.check_positive_int(in_features, "in_features")
        for field in dataclasses.fields(config):
            if field.init and field.name not in ("parent", "name"):
                value = getattr(config, field.name)
                setattr(self, field.name, tuple(value) if isinstance(value, list) else value)
        layers = Layers(config, rngs)
        width = self._build(config, self.in_features, layers)
        self._build_head(config, width, layers)

    def _build(self, config: Any, in_features: int, layers: Layers) -> int:
        """Builds the layers before the head; returns the feature width."""
        raise NotImplementedError

    def _features(self, x: jax.Array) -> jax.Array:
        """The forward pass before the head."""
        raise NotImplementedError

    def _build_head(self, config: _common.Classifier, width: int, layers: Layers) -> None:
        """Global average pool, dropout and dense layer (``Classifier._head``)."""
        if config.include_top:
            self.top_dropout = nnx.data(layers.dropout(config.dropout_rate))
            self.predictions = layers.dense(width, config.num_classes)

    def _head(self, x: jax.Array) -> jax.Array:
        if not self.include_top:
            if self.pooling == "avg":
                return jnp.mean(x, axis=(1, 2))
            if self.pooling == "max":
                return jnp.max(x, axis=(1, 2))
            return x
        x = maybe(self.top_dropout, jnp.mean(x, axis=(1, 2)))
        return self._classify(x)

    def _classify(self, x: jax.Array) -> jax.Array:
        x = self.predictions(x)
        if self.classifier_activation is not None:
            x = self.classifier_activation(x)
        return x

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Classifies images.

        Args:
          x: ``(batch, height, width, in_features)`` images, as the linen model takes them.

        Returns:
          ``(batch, num_classes)``, or the features when ``include_top=False``.
        """
        x = check_image(x, type(self).__name__)
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"`x` has {x.shape[-1]} channels but this {type(self).__name__} was built "
                f"with in_features={self.in_features}"
            )
        return self._head(self._features(x))


# ----------------------------------------------------------------------------- MobileNets


class MobileNetV1(Model):
    """:class:`sepconv_jax.models.MobileNetV1` as an NNX module (same options).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from sepconv_jax.models.nnx import MobileNetV1
      >>> model = MobileNetV1(num_classes=10, width_multiplier=0.25, rngs=nnx.Rngs(0))
      >>> model.eval()
      >>> model(jnp.zeros((2, 32, 32, 3))).shape
      (2, 10)
    """

    linen_class = mobilenet_v1_lib.MobileNetV1
    stem_kernel = ("conv1", "kernel")

    def _build(self, config: Any, in_features: int, layers: Layers) -> int:
        stem, *widths = mobilenet_v1_lib.mobilenet_v1_widths(config.width_multiplier)
        momentum = mobilenet_v1_lib.BN_MOMENTUM
        self.conv1 = layers.conv(in_features, stem, 3, 2, "SAME")
        self.conv1_bn = layers.batch_norm(stem, momentum)
        width = stem
        for i, (features, (_, strides)) in enumerate(
            zip(widths, mobilenet_v1_lib.BLOCKS, strict=True), 1
        ):
            block = blocks.DepthwiseSeparableBlock(
                width,
                features=features,
                strides=strides,
                depth_multiplier=config.depth_multiplier,
                full_convolution=config.full_convolution,
                stride2_padding=config.stride2_padding,
                bn_momentum=momentum,
                **_numerics(config),
                rngs=layers.rngs,
            )
            setattr(self, f"block{i}", block)
            width = features
        self.num_blocks = len(widths)
        return width

    def _features(self, x: jax.Array) -> jax.Array:
        x = nn.relu6(self.conv1_bn(self.conv1(x)))
        for i in range(1, self.num_blocks + 1):
            x = getattr(self, f"block{i}")(x)
        return x


class _Sequential(Model):
    """A model whose body is a stem, named blocks in order, and a last layer."""

    block_names: tuple[str, ...]

    def _add_blocks(
        self,
        table: list[tuple[str, dict[str, Any]]],
        width: int,
        config: Any,
        layers: Layers,
        block_class: Any = blocks.InvertedResidual,
        **extra: Any,
    ) -> int:
        for name, kwargs in table:
            block = block_class(width, **kwargs, **extra, **_numerics(config), rngs=layers.rngs)
            setattr(self, name, block)
            width = kwargs["features"] if "features" in kwargs else width
        self.block_names = tuple(name for name, _ in table)
        return width

    def _blocks(self, x: jax.Array) -> jax.Array:
        for name in self.block_names:
            x = getattr(self, name)(x)
        return x


class MobileNetV2(_Sequential):
    """:class:`sepconv_jax.models.MobileNetV2` as an NNX module (same options).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from sepconv_jax.models.nnx import MobileNetV2
      >>> model = MobileNetV2(num_classes=10, width_multiplier=0.35, rngs=nnx.Rngs(0))
      >>> model.block1.depthwise.kernel.shape
      (3, 3, 1, 48)
    """

    linen_class = mobilenet_v2_lib.MobileNetV2
    stem_kernel = ("conv1", "kernel")

    def _build(self, config: Any, in_features: int, layers: Layers) -> int:
        stem, *_, last = mobilenet_v2_lib.mobilenet_v2_widths(config.width_multiplier)
        momentum, epsilon = mobilenet_v2_lib.BN_MOMENTUM, config.bn_epsilon
        padding = stem_padding(3, 2, config.stride2_padding)
        self.conv1 = layers.conv(in_features, stem, 3, 2, padding)
        self.conv1_bn = layers.batch_norm(stem, momentum, epsilon)
        table = mobilenet_v2_lib.mobilenet_v2_blocks(
            config.width_multiplier, config.stride2_padding
        )
        width = self._add_blocks(table, stem, config, layers, bn_epsilon=epsilon)
        self.conv_last = layers.pointwise(width, last)
        self.conv_last_bn = layers.batch_norm(last, momentum, epsilon)
        return last

    def _features(self, x: jax.Array) -> jax.Array:
        x = nn.relu6(self.conv1_bn(self.conv1(x)))
        x = self._blocks(x)
        return nn.relu6(self.conv_last_bn(self.conv_last(x)))


class _MobileNetV3(_Sequential):
    linen_class: ClassVar[type[mobilenet_v3.MobileNetV3]]
    stem_kernel = ("stem_conv", "kernel")

    def _build(self, config: Any, in_features: int, layers: Layers) -> int:
        momentum, epsilon = mobilenet_v3.BN_MOMENTUM, config.bn_epsilon
        self.nonlinearity = config.nonlinearity
        stem = mobilenet_v3.STEM
        padding = stem_padding(3, 2, config.stride2_padding)
        self.stem_conv = layers.conv(in_features, stem, 3, 2, padding)
        self.stem_bn = layers.batch_norm(stem, momentum, epsilon)
        width = self._add_blocks(config.blocks(), stem, config, layers, bn_epsilon=epsilon)
        last, point = mobilenet_v3.mobilenet_v3_head_widths(config.variant, config.alpha)
        self.last_conv = layers.pointwise(width, last)
        self.last_bn = layers.batch_norm(last, momentum, epsilon)
        self.head_width = point
        return last

    def _build_head(self, config: _common.Classifier, width: int, layers: Layers) -> None:
        if config.include_top:
            self.head_conv = layers.pointwise(width, self.head_width, use_bias=True)
            self.top_dropout = nnx.data(layers.dropout(config.dropout_rate))
            self.predictions = layers.dense(self.head_width, config.num_classes)

    def _features(self, x: jax.Array) -> jax.Array:
        act = self.nonlinearity
        if self.include_preprocessing:
            x = mobilenet_v3.rescale_input(x)
        x = act(self.stem_bn(self.stem_conv(x)))
        x = self._blocks(x)
        return act(self.last_bn(self.last_conv(x)))

    def _head(self, x: jax.Array) -> jax.Array:
        if not self.include_top:
            return super()._head(x)
        x = self.nonlinearity(self.head_conv(x.mean(axis=(1, 2))))
        return self._classify(maybe(self.top_dropout, x))


class MobileNetV3Large(_MobileNetV3):
    """:class:`sepconv_jax.models.MobileNetV3Large` as an NNX module (same options).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from sepconv_jax.models.nnx import MobileNetV3Large
      >>> model = MobileNetV3Large(num_classes=10, alpha=0.75, rngs=nnx.Rngs(0))
      >>> model.eval()
      >>> model(jnp.zeros((1, 32, 32, 3))).shape
      (1, 10)
    """

    linen_class = mobilenet_v3.MobileNetV3Large


class MobileNetV3Small(_MobileNetV3):
    """:class:`sepconv_jax.models.MobileNetV3Small` as an NNX module (same options)."""

    linen_class = mobilenet_v3.MobileNetV3Small


# ----------------------------------------------------------------------------- EfficientNet


class EfficientNet(_Sequential):
    """:class:`sepconv_jax.models.EfficientNet` as an NNX module (same options).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from sepconv_jax.models.nnx import EfficientNetB0
      >>> model = EfficientNetB0(num_classes=10, rngs=nnx.Rngs(0))
      >>> model.eval()
      >>> model(jnp.zeros((1, 32, 32, 3))).shape
      (1, 10)
    """

    linen_class: ClassVar[type[efficientnet.EfficientNet]] = efficientnet.EfficientNet
    stem_kernel = ("stem_conv", "kernel")

    def _build(self, config: Any, in_features: int, layers: Layers) -> int:
        momentum, epsilon = efficientnet.BN_MOMENTUM, config.bn_epsilon
        stem = efficientnet.round_filters(32, config.width_coefficient)
        top = efficientnet.round_filters(1280, config.width_coefficient)
        padding = conv_padding(3, 2, config.stride2_padding)
        self.stem_conv = layers.conv(in_features, stem, 3, 2, padding)
        self.stem_bn = layers.batch_norm(stem, momentum, epsilon)
        width = self._add_blocks(config.blocks(), stem, config, layers, bn_epsilon=epsilon)
        self.top_conv = layers.pointwise(width, top)
        self.top_bn = layers.batch_norm(top, momentum, epsilon)
        return top

    def _features(self, x: jax.Array) -> jax.Array:
        if self.include_preprocessing:
            x = _common.normalize_input(
                x, self.input_mean, self.input_variance, 1.0 / 255.0, type(self).__name__
            )
        x = nn.swish(self.stem_bn(self.stem_conv(x)))
        x = self._blocks(x)
        return nn.swish(self.top_bn(self.top_conv(x)))


class EfficientNetB0(EfficientNet):
    """:class:`sepconv_jax.models.EfficientNetB0` as an NNX module (same options)."""

    linen_class = efficientnet.EfficientNetB0


class EfficientNetB1(EfficientNet):
    """:class:`sepconv_jax.models.EfficientNetB1` as an NNX module (same options)."""

    linen_class = efficientnet.EfficientNetB1


class EfficientNetB2(EfficientNet):
    """:class:`sepconv_jax.models.EfficientNetB2` as an NNX module (same options)."""

    linen_class = efficientnet.EfficientNetB2


class EfficientNetB3(EfficientNet):
    """:class:`sepconv_jax.models.EfficientNetB3` as an NNX module (same options)."""

    linen_class = efficientnet.EfficientNetB3


class EfficientNetB4(EfficientNet):
    """:class:`sepconv_jax.models.EfficientNetB4` as an NNX module (same options)."""

    linen_class = efficientnet.EfficientNetB4


class EfficientNetB5(EfficientNet):
    """:class:`sepconv_jax.models.EfficientNetB5` as an NNX module (same options)."""

    linen_class = efficientnet.EfficientNetB5


class EfficientNetB6(EfficientNet):
    """:class:`sepconv_jax.models.EfficientNetB6` as an NNX module (same options)."""

    linen_class = efficientnet.EfficientNetB6


class EfficientNetB7(EfficientNet):
    """:class:`sepconv_jax.models.EfficientNetB7` as an NNX module (same options)."""

    linen_class = efficientnet.EfficientNetB7


# ----------------------------------------------------------------------------- Xception


class Xception(Model):
    """:class:`sepconv_jax.models.Xception` as an NNX module (same options).

    Example:
      >>> from flax import nnx
      >>> from sepconv_jax.models.nnx import Xception
      >>> model = Xception(num_classes=10, rngs=nnx.Rngs(0))
      >>> model.block5.sepconv1.pointwise_kernel.shape
      (728, 728)
    """

    linen_class = xception.Xception
    stem_kernel = ("block1_conv1", "kernel")

    def _build(self, config: Any, in_features: int, layers: Layers) -> int:
        momentum = xception.BN_MOMENTUM
        self.block1_conv1 = layers.conv(in_features, 32, 3, 2, "VALID")
        self.block1_conv1_bn = layers.batch_norm(32, momentum)
        self.block1_conv2 = layers.conv(32, 64, 3, 1, "VALID")
        self.block1_conv2_bn = layers.batch_norm(64, momentum)
        width = 64
        for i, (features, strides, activate_first) in enumerate(xception.BLOCKS, 2):
            block = blocks.XceptionBlock(
                width,
                features=features,
                strides=strides,
                activate_first=activate_first,
                bn_momentum=momentum,
                **_numerics(config),
                rngs=layers.rngs,
            )
            setattr(self, f"block{i}", block)
            width = features[-1]
        self.block14_sepconv1 = layers.separable(width, 1536)
        self.block14_sepconv1_bn = layers.batch_norm(1536, momentum)
        self.block14_sepconv2 = layers.separable(1536, 2048)
        self.block14_sepconv2_bn = layers.batch_norm(2048, momentum)
        return 2048

    def _features(self, x: jax.Array) -> jax.Array:
        if min(x.shape[1:3]) < xception.MIN_SIZE:
            raise ValueError(
                f"`x` has shape {x.shape}; Xception's unpadded stem needs height and width "
                f">= {xception.MIN_SIZE}"
            )
        x = nn.relu(self.block1_conv1_bn(self.block1_conv1(x)))
        x = nn.relu(self.block1_conv2_bn(self.block1_conv2(x)))
        for i in range(2, len(xception.BLOCKS) + 2):
            x = getattr(self, f"block{i}")(x)
        x = nn.relu(self.block14_sepconv1_bn(self.block14_sepconv1(x)))
        return nn.relu(self.block14_sepconv2_bn(self.block14_sepconv2(x)))


# ----------------------------------------------------------------------------- ConvNeXt


class ConvNeXt(Model):
    """:class:`sepconv_jax.models.ConvNeXt` as an NNX module (same options).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from sepconv_jax.models.nnx import ConvNeXt
      >>> model = ConvNeXt(num_classes=10, depths=(1, 1), dims=(8, 16), rngs=nnx.Rngs(0))
      >>> model.eval()
      >>> model(jnp.zeros((1, 32, 32, 3))).shape
      (1, 10)
    """

    linen_class: ClassVar[type[convnext.ConvNeXt]] = convnext.ConvNeXt
    stem_kernel = ("stem_conv", "kernel")

    def _build(self, config: Any, in_features: int, layers: Layers) -> int:
        eps = convnext.NORM_EPSILON
        width = in_features
        names = []
        for i, (dim, stage) in enumerate(zip(config.dims, config.blocks(), strict=True)):
            if i == 0:
                self.stem_conv = layers.conv(width, dim, 4, 4, "VALID", use_bias=True)
                self.stem_norm = layers.layer_norm(dim, eps)
            else:
                setattr(self, f"downsample{i}_norm", layers.layer_norm(width, eps))
                conv = layers.conv(width, dim, 2, 2, "VALID", use_bias=True)
                setattr(self, f"downsample{i}_conv", conv)
            for name, kwargs in stage:
                block = blocks.ConvNeXtBlock(dim, **kwargs, **_numerics(config), rngs=layers.rngs)
                setattr(self, name, block)
            names.append(tuple(name for name, _ in stage))
            width = dim
        self.stage_blocks = tuple(names)
        self.head_norm = layers.layer_norm(width, eps)
        return width

    def _features(self, x: jax.Array) -> jax.Array:
        if self.include_preprocessing:
            x = _common.normalize_input(
                x, self.input_mean, self.input_variance, owner=type(self).__name__
            )
        for i, names in enumerate(self.stage_blocks):
            if i == 0:
                x = self.stem_norm(self.stem_conv(x))
            else:
                x = getattr(self, f"downsample{i}_norm")(x)
                x = getattr(self, f"downsample{i}_conv")(x)
            for name in names:
                x = getattr(self, name)(x)
        return x

    def _head(self, x: jax.Array) -> jax.Array:
        if self.include_top or self.pooling == "avg":
            x = x.mean(axis=(1, 2))
        elif self.pooling == "max":
            x = x.max(axis=(1, 2))
        x = self.head_norm(x)
        if not self.include_top:
            return x
        return self._classify(maybe(self.top_dropout, x))


class ConvNeXtTiny(ConvNeXt):
    """:class:`sepconv_jax.models.ConvNeXtTiny` as an NNX module (same options)."""

    linen_class = convnext.ConvNeXtTiny


class ConvNeXtSmall(ConvNeXt):
    """:class:`sepconv_jax.models.ConvNeXtSmall` as an NNX module (same options)."""

    linen_class = convnext.ConvNeXtSmall


class ConvNeXtBase(ConvNeXt):
    """:class:`sepconv_jax.models.ConvNeXtBase` as an NNX module (same options)."""

    linen_class = convnext.ConvNeXtBase
