"""The building blocks of the reference architectures, public so users can build their own.

Every block takes channels-last input ``(batch, height, width, channels)`` and a
``train`` flag: ``train=False`` normalizes with the running statistics in the
``batch_stats`` collection and disables dropout; ``train=True`` normalizes with the
batch statistics (call ``apply`` with ``mutable=["batch_stats"]``) and, where the
block has stochastic depth, needs a ``"dropout"`` rng.

The depthwise, pointwise and separable steps are :mod:`sepconv_jax.linen` modules.
Batch normalization follows Keras' conventions (``epsilon`` added to the variance,
``momentum`` the weight of the old running value), so that weights trained in Keras
give the same outputs here.

Blocks: :class:`DepthwiseSeparableBlock` (MobileNet), :class:`InvertedResidual` (alias
:data:`MBConv`; MobileNetV2/V3, EfficientNet), :class:`SqueezeExcite`,
:class:`XceptionBlock` and :class:`ConvNeXtBlock`.

:mod:`sepconv_jax.models.nnx.blocks` holds the same blocks as ``flax.nnx`` modules, built
from the same forward functions (:mod:`sepconv_jax.models._build`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from sepconv_jax.models import _common
from sepconv_jax.models._build import Builder, Linen
from sepconv_jax.models._common import BN_EPSILON as BN_EPSILON
from sepconv_jax.models._common import Activation as Activation
from sepconv_jax.models._common import Normalized, Numerics
from sepconv_jax.models._common import check_stride2_padding as check_stride2_padding

__all__ = [
    "ConvNeXtBlock",
    "DepthwiseSeparableBlock",
    "InvertedResidual",
    "MBConv",
    "SqueezeExcite",
    "XceptionBlock",
    "conv_padding",
    "exact_gelu",
    "stem_padding",
]

Stride2Padding = Literal["same", "fixed", "symmetric"]


def conv_padding(
    kernel_size: int, strides: int, stride2_padding: Stride2Padding
) -> str | tuple[tuple[int, int], tuple[int, int]]:
    """The padding a reference architecture uses for a square ``kernel_size`` window.

    Stride-1 convolutions are ``"SAME"``. Strided ones follow ``stride2_padding``:

    * ``"same"``: TensorFlow ``"SAME"`` (for stride 2: ``(k // 2 - 1, k // 2)`` on an
      even size, ``(k // 2, k // 2)`` on an odd one). This equals what Keras'
      ``imagenet_utils.correct_pad`` computes when the input size is known when the
      model is built.
    * ``"fixed"``: ``(k // 2 - 1, k // 2)`` on every size. Keras' MobileNet (v1)
      always pads this way (``ZeroPadding2D(((0, 1), (0, 1)))``), and so do
      MobileNetV2 and EfficientNet when built with an unknown input size. It differs
      from ``"same"`` only on odd sizes.
    * ``"symmetric"``: ``(k // 2, k // 2)`` on every size, PyTorch's
      ``Conv2d(padding=k // 2)`` as timm's (non-``tf_``) models use it. It differs
      from ``"same"`` on even sizes.

    Args:
      kernel_size: the window's side.
      strides: the stride, the same along height and width.
      stride2_padding: ``"same"`` or ``"fixed"``.

    Returns:
      ``"SAME"`` or ``((low, high), (low, high))`` for height and width.

    Raises:
      ValueError: for an unknown ``stride2_padding``.

    Example:
      >>> from sepconv_jax.models.blocks import conv_padding
      >>> conv_padding(3, 1, "fixed"), conv_padding(5, 2, "fixed")
      ('SAME', ((1, 2), (1, 2)))
      >>> conv_padding(3, 2, "symmetric")
      ((1, 1), (1, 1))
    """
    check_stride2_padding(stride2_padding)
    if strides == 1 or stride2_padding == "same":
        return "SAME"
    low = kernel_size // 2 if stride2_padding == "symmetric" else kernel_size // 2 - 1
    return ((low, kernel_size // 2), (low, kernel_size // 2))


def stem_padding(
    kernel_size: int, strides: int, stride2_padding: Stride2Padding
) -> str | tuple[tuple[int, int], tuple[int, int]]:
    """The padding of a stem convolution that Keras always builds with ``"same"``.

    Keras' MobileNetV2 and MobileNetV3 stems are ``Conv2D(padding="same")`` whatever
    the input size, so only ``"symmetric"`` (timm's PyTorch padding) changes them.
    """
    if check_stride2_padding(stride2_padding) == "symmetric":
        return conv_padding(kernel_size, strides, "symmetric")
    return "SAME"


def check_image(x: ArrayLike, owner: str) -> jax.Array:
    """``x`` as an array of rank 4 (batch, height, width, channels), or a clear error."""
    return _common.check_rank(x, owner, "images (batch, height, width, channels)")


def bn(config: Normalized, b: Builder, name: str, x: jax.Array) -> jax.Array:
    """A batch norm with ``config``'s momentum and epsilon."""
    return b.batch_norm(name, x, config.bn_momentum, config.bn_epsilon)


def _depthwise_separable(config: DepthwiseSeparableBlock, b: Builder, x: jax.Array) -> jax.Array:
    x = check_image(x, type(config).__name__)
    padding = conv_padding(3, config.strides, config.stride2_padding)
    act = config.activation
    if config.full_convolution:
        x = b.conv("conv", x, config.features, 3, config.strides, padding)
        return act(bn(config, b, "conv_bn", x))
    x = b.depthwise("depthwise", x, 3, config.strides, padding, config.depth_multiplier)
    x = act(bn(config, b, "depthwise_bn", x))
    return act(bn(config, b, "pointwise_bn", b.pointwise("pointwise", x, config.features)))


class DepthwiseSeparableBlock(Linen, Normalized):
    """MobileNet (v1) block: depthwise 3x3, BN, ReLU6, pointwise 1x1, BN, ReLU6.

    With ``full_convolution=True`` the two convolutions are replaced by one standard
    3x3 convolution with the same input, output and stride, followed by BN and
    ReLU6: the "Conv MobileNet" of Howard et al. (2017), Table 4.

    Attributes:
      features: output channels of the pointwise step.
      strides: stride of the depthwise step (1 or 2).
      depth_multiplier: depthwise outputs per input channel (Keras' MobileNet
        ``depth_multiplier``).
      full_convolution: use one standard 3x3 convolution instead.
      stride2_padding: padding of a strided window, see :func:`conv_padding`;
        Keras' MobileNet uses ``"fixed"``.
      activation: applied after each batch norm; ReLU6 in the paper's Keras port.
      bn_momentum, bn_epsilon: batch-norm hyperparameters (Keras defaults).
      dtype, param_dtype, precision, impl: passed to every layer.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.models.blocks import DepthwiseSeparableBlock
      >>> block = DepthwiseSeparableBlock(features=16, strides=2)
      >>> x = jnp.ones((2, 8, 8, 4))
      >>> variables = block.init(jax.random.key(0), x)
      >>> sorted(variables), sorted(variables["params"])
      (['batch_stats', 'params'], ['depthwise', 'depthwise_bn', 'pointwise', 'pointwise_bn'])
      >>> block.apply(variables, x).shape
      (2, 4, 4, 16)
    """

    features: int = 64
    strides: int = 1
    depth_multiplier: int = 1
    full_convolution: bool = False
    stride2_padding: Stride2Padding = "fixed"
    activation: Activation = nn.relu6

    forward = staticmethod(_depthwise_separable)


def _squeeze_excite(config: SqueezeExcite, b: Builder, x: jax.Array) -> jax.Array:
    x = check_image(x, type(config).__name__)
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = config.activation(b.pointwise("reduce", s, config.features, use_bias=True))
    return x * config.gate(b.pointwise("expand", s, x.shape[-1], use_bias=True))


class SqueezeExcite(Linen, Numerics):
    """Squeeze-and-excitation: rescales channels by a gate computed from their means.

    ``y = x * gate(expand(activation(reduce(mean_hw(x)))))`` where ``reduce`` and
    ``expand`` are 1x1 convolutions with bias (``channels -> features -> channels``).

    Attributes:
      features: width of the bottleneck (EfficientNet: a quarter of the MBConv
        block's input channels, at least 1).
      activation: after the reduction; swish in EfficientNet.
      gate: after the expansion; the logistic sigmoid.
      dtype, param_dtype, precision: passed to both convolutions.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.models.blocks import SqueezeExcite
      >>> se = SqueezeExcite(features=2)
      >>> x = jnp.ones((1, 4, 4, 8))
      >>> variables = se.init(jax.random.key(0), x)
      >>> jax.tree.map(jnp.shape, variables["params"]["reduce"])
      {'bias': (2,), 'kernel': (8, 2)}
      >>> se.apply(variables, x).shape
      (1, 4, 4, 8)
    """

    features: int = 8
    activation: Activation = nn.swish
    gate: Activation = nn.sigmoid

    forward = staticmethod(_squeeze_excite)


def _inverted_residual(config: InvertedResidual, b: Builder, x: jax.Array) -> jax.Array:
    """The expansion width is ``expanded_features`` when given (MobileNetV3 rounds it
    to a multiple of 8), else ``round(channels * expand_ratio)``; the squeeze-excite
    width ``se_features`` when given, else ``max(1, int(channels * se_ratio))``
    (EfficientNet's rule, a ratio of the block's *input* width) when ``0 < se_ratio <= 1``."""
    x = check_image(x, type(config).__name__)
    c, k, s = x.shape[-1], config.kernel_size, config.strides
    expanded = config.expanded_features
    expanded = round(c * config.expand_ratio) if expanded is None else expanded
    se = config.se_features
    if se is None and 0 < config.se_ratio <= 1:
        se = max(1, int(c * config.se_ratio))
    axis, act = config.model_axis, config.activation
    h = x
    if expanded != c:
        h = b.pointwise("expand", h, expanded, out_axis=axis)
        h = act(bn(config, b, "expand_bn", h))
    padding = conv_padding(k, s, config.stride2_padding)
    h = b.depthwise("depthwise", h, k, s, padding, channel_axis=axis)
    h = act(bn(config, b, "depthwise_bn", h))
    if se is not None:
        se_act = act if config.se_activation is None else config.se_activation
        h = b.block("se", SqueezeExcite, h, features=se, activation=se_act,
                    gate=config.se_gate)  # fmt: skip
    h = bn(config, b, "project_bn", b.pointwise("project", h, config.features, in_axis=axis))
    if config.id_skip and s == 1 and c == config.features:
        h = b.dropout("drop_path", h, config.drop_rate, per_sample=True) + x.astype(h.dtype)
    return h


class InvertedResidual(Linen, Normalized):
    """Inverted residual with linear bottleneck (MobileNetV2/V3), or MBConv (EfficientNet).

    ``expand`` (1x1, BN, activation; skipped when the expanded width equals the
    input width), then a ``kernel_size`` depthwise convolution (BN, activation),
    then optional squeeze-and-excitation, then a linear 1x1 projection (BN, no
    activation). When the stride is 1, ``id_skip`` is set and the input has
    ``features`` channels, the input is added back; in training the residual branch
    is then dropped per sample with probability ``drop_rate`` (stochastic depth, as
    Keras' EfficientNet: surviving samples are scaled by ``1 / (1 - drop_rate)``).

    Attributes:
      features: output channels.
      expand_ratio: expanded width over input width (``t`` in MobileNetV2's Table 2).
      kernel_size: depthwise window side.
      strides: depthwise stride (1 or 2).
      se_ratio: squeeze width over *input* channels; 0 disables squeeze-excite.
      drop_rate: stochastic depth rate of the residual branch.
      id_skip: allow the identity shortcut.
      stride2_padding: see :func:`conv_padding`; ``"same"`` matches Keras models
        built with a known input size.
      activation: ReLU6 for MobileNetV2, swish for EfficientNet, ReLU or hard-swish
        for MobileNetV3.
      expanded_features: the expanded width, overriding ``expand_ratio`` (MobileNetV3
        rounds ``channels * expand_ratio`` to a multiple of 8).
      se_features: the squeeze-excite width, overriding ``se_ratio``.
      se_activation: after the squeeze-excite reduction; ``None`` uses
        ``activation`` (EfficientNet); MobileNetV3 uses ReLU.
      se_gate: the squeeze-excite gate: sigmoid (EfficientNet) or hard sigmoid
        (MobileNetV3).
      bn_momentum, bn_epsilon: 0.999 / 1e-3 in Keras' MobileNetV2, 0.99 / 1e-3 in
        its EfficientNet.
      dtype, param_dtype, precision, impl: passed to every layer.
      model_axis: a mesh axis to shard the expanded channels over (model
        parallelism, opt-in): the expansion's output channels, the depthwise
        channels and the projection's input channels are annotated with it (see
        :mod:`sepconv_jax.linen`), so the expansion and the depthwise step run on
        each device's own channels without communication and the projection ends in
        one reduction over the axis. Batch norm and squeeze-excite parameters stay
        replicated. ``None`` (default) annotates nothing. XLA partitions the
        ``"xla"`` and ``"shift"`` depthwise impls; the Pallas maps partition by their own
        rule over batch and channels (:mod:`sepconv_jax.kernels.pallas`).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.models.blocks import InvertedResidual
      >>> block = InvertedResidual(features=8, expand_ratio=6, se_ratio=0.25)
      >>> x = jnp.ones((2, 6, 6, 8))
      >>> variables = block.init(jax.random.key(0), x)
      >>> sorted(variables["params"])
      ['depthwise', 'depthwise_bn', 'expand', 'expand_bn', 'project', 'project_bn', 'se']
      >>> block.apply(variables, x).shape
      (2, 6, 6, 8)
    """

    features: int = 16
    expand_ratio: float = 6
    kernel_size: int = 3
    strides: int = 1
    se_ratio: float = 0.0
    drop_rate: float = 0.0
    id_skip: bool = True
    stride2_padding: Stride2Padding = "same"
    activation: Activation = nn.relu6
    expanded_features: int | None = None
    se_features: int | None = None
    se_activation: Activation | None = None
    se_gate: Activation = nn.sigmoid
    model_axis: str | None = None

    forward = staticmethod(_inverted_residual)


#: EfficientNet's name for :class:`InvertedResidual` with squeeze-excite and swish.
MBConv = InvertedResidual


def inverted_residual_body(
    config: Any, b: Builder, x: jax.Array, blocks: list[tuple[str, dict[str, Any]]], *,
    stem: tuple[str, str, int], top: tuple[str, str, int], stem_padding: Any,
    activation: Activation, bn_momentum: float,
) -> jax.Array:  # fmt: skip
    """What MobileNetV2, MobileNetV3 and EfficientNet share, before their heads.

    A 3x3 stem convolution of stride 2, batch norm and ``activation``; the inverted
    residuals ``blocks`` (``(name, fields)``); a 1x1 convolution, batch norm and
    ``activation``. ``stem`` and ``top`` are ``(conv name, batch-norm name, width)``;
    every batch norm has ``bn_momentum`` and the model's ``bn_epsilon``.
    """
    (stem_conv, stem_bn, stem_width), (top_conv, top_bn, top_width) = stem, top
    momentum, epsilon = bn_momentum, config.bn_epsilon
    x = b.conv(stem_conv, x, stem_width, 3, 2, stem_padding)
    x = activation(b.batch_norm(stem_bn, x, momentum, epsilon))
    for name, fields in blocks:
        x = b.block(name, InvertedResidual, x, **fields, bn_epsilon=epsilon)
    x = b.pointwise(top_conv, x, top_width)
    return activation(b.batch_norm(top_bn, x, momentum, epsilon))


def _xception_block(config: XceptionBlock, b: Builder, x: jax.Array) -> jax.Array:
    x = check_image(x, type(config).__name__)
    if len(config.features) == 0:
        raise ValueError("`features` is empty; an XceptionBlock needs at least one unit")
    h = x
    for i, features in enumerate(config.features, 1):
        if i > 1 or config.activate_first:
            h = config.activation(h)
        h = bn(config, b, f"sepconv{i}_bn", b.separable(f"sepconv{i}", h, features))
    s = config.strides
    if s != 1:
        h = nn.max_pool(h, (3, 3), strides=(s, s), padding="SAME")
    if s == 1 and x.shape[-1] == config.features[-1]:
        return h + x.astype(h.dtype)
    # A 1x1 convolution of stride s with "SAME" padding reads rows and columns
    # 0, s, 2s, ...: subsample, then mix channels.
    r = b.pointwise("residual", x[:, ::s, ::s, :], config.features[-1])
    return h + bn(config, b, "residual_bn", r).astype(h.dtype)


class XceptionBlock(Linen, Normalized):
    """Xception block: (ReLU, separable 3x3 conv, BN) units, optional pool, residual.

    For each entry of ``features``: ReLU (skipped before the first unit when
    ``activate_first=False``), a 3x3 :class:`~sepconv_jax.linen.SeparableConv`
    without bias, and batch norm. With ``strides=2`` a 3x3 max-pool of stride 2
    ("SAME") follows. The shortcut is the identity when the shape is unchanged,
    otherwise a strided 1x1 convolution and batch norm (Chollet, 2017, Fig. 5).

    Attributes:
      features: output channels of each separable convolution, e.g. ``(728,) * 3``
        for a middle-flow block.
      strides: 1, or 2 for the entry- and exit-flow blocks that end in a max-pool.
      activate_first: ReLU before the first separable convolution (False only for
        the first entry-flow block, which follows a ReLU already).
      activation: ReLU in the paper.
      bn_momentum, bn_epsilon: batch-norm hyperparameters (Keras defaults).
      dtype, param_dtype, precision, impl: passed to every layer.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.models.blocks import XceptionBlock
      >>> block = XceptionBlock(features=(16, 16), strides=2)
      >>> x = jnp.ones((1, 9, 9, 8))
      >>> variables = block.init(jax.random.key(0), x)
      >>> sorted(variables["params"])
      ['residual', 'residual_bn', 'sepconv1', 'sepconv1_bn', 'sepconv2', 'sepconv2_bn']
      >>> block.apply(variables, x).shape
      (1, 5, 5, 16)
    """

    features: Sequence[int] = (728, 728, 728)
    strides: int = 1
    activate_first: bool = True
    activation: Activation = nn.relu

    forward = staticmethod(_xception_block)


def exact_gelu(x: jax.Array) -> jax.Array:
    """GELU with the exact error function (Keras' ``"gelu"`` and PyTorch's ``nn.GELU``
    default; ``jax.nn.gelu`` defaults to the tanh approximation)."""
    return jax.nn.gelu(x, approximate=False)


def _convnext_block(config: ConvNeXtBlock, b: Builder, x: jax.Array) -> jax.Array:
    x = check_image(x, type(config).__name__)
    c = x.shape[-1]
    h = b.depthwise("depthwise", x, config.kernel_size, 1, "SAME", use_bias=True)
    h = b.layer_norm("norm", h, config.norm_epsilon)
    h = exact_gelu(b.pointwise("pointwise1", h, config.mlp_ratio * c, use_bias=True))
    h = b.pointwise("pointwise2", h, c, use_bias=True)
    if config.layer_scale_init_value is not None:
        h = b.layer_scale("layer_scale", h, config.layer_scale_init_value)
    return x.astype(h.dtype) + b.dropout("drop_path", h, config.drop_rate, per_sample=True)


class ConvNeXtBlock(Linen, Numerics):
    """ConvNeXt block: depthwise 7x7, LayerNorm, MLP with GELU, layer scale, residual.

    ``y = x + drop_path(gamma * W2 gelu(W1 norm(depthwise(x))))`` (Liu et al., 2022,
    Fig. 4): a ``kernel_size`` depthwise convolution with bias, a layer norm over the
    channels, two pointwise (1x1) layers with bias widening by ``mlp_ratio`` and
    back, a learned per-channel scale ``gamma`` initialized to
    ``layer_scale_init_value``, and stochastic depth of rate ``drop_rate`` (per
    sample, surviving samples scaled by ``1 / (1 - drop_rate)``).

    Attributes:
      kernel_size: the depthwise window side (7 in the paper).
      mlp_ratio: hidden width of the MLP over the block width (4).
      layer_scale_init_value: initial ``gamma``; ``None`` disables the layer scale.
      drop_rate: stochastic depth rate.
      norm_epsilon: the layer norm's epsilon (1e-6 in Keras and timm).
      dtype, param_dtype, precision, impl: passed to every layer.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.models.blocks import ConvNeXtBlock
      >>> block = ConvNeXtBlock()
      >>> x = jnp.ones((1, 8, 8, 16))
      >>> variables = block.init(jax.random.key(0), x)
      >>> sorted(variables["params"])
      ['depthwise', 'layer_scale', 'norm', 'pointwise1', 'pointwise2']
      >>> block.apply(variables, x).shape
      (1, 8, 8, 16)
    """

    kernel_size: int = 7
    mlp_ratio: int = 4
    layer_scale_init_value: float | None = 1e-6
    drop_rate: float = 0.0
    norm_epsilon: float = 1e-6

    forward = staticmethod(_convnext_block)
