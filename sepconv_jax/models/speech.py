"""1-D time-channel separable networks for speech (flax.linen): :class:`MatchboxNet`
(Majumdar & Ginsburg, 2020; keyword spotting, one label per clip), :class:`QuartzNet`
(Kriman et al., 2019; speech recognition, one CTC distribution per output frame) and
:class:`TimeChannelSeparableBlock`, the block both are made of.

Both take channels-last features ``(batch, time, features)`` (MFCC or mel frames;
NeMo, the papers' code, uses channels-first ``(batch, features, time)``). Layouts
follow the papers' tables and, where they are silent, NVIDIA NeMo's configurations
(``examples/asr/conf/matchboxnet/matchboxnet_3x1x64_v1.yaml``,
``examples/asr/conf/quartznet/quartznet_15x5.yaml``): convolutions without bias,
batch norm with epsilon 1e-3 and PyTorch momentum 0.1 (0.9 here, Flax's weight of
the old value), a 1x1 convolution and batch norm on every residual, symmetric
"same" padding. Parameter counts equal the published ones (see each model).

``causal=True`` pads every window causally, so a model streams: ``apply(variables,
chunk, decode=True, mutable=["cache"])`` runs on a chunk of frames, batch norm in
inference mode, each windowed layer keeping its last input frames in the
``"cache"`` collection (:mod:`sepconv_jax.streaming`); joined along time, the
outputs equal the offline outputs. Pointwise layers, batch norm and the residual
1x1 convolutions act on each frame alone and keep no state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from sepconv_jax import _layers, _spec
from sepconv_jax.models import _common, spec
from sepconv_jax.models._build import Builder, LinenStream
from sepconv_jax.models._common import Activation, Normalized

__all__ = [
    "MATCHBOXNET_KERNELS",
    "QUARTZNET_BLOCKS",
    "MatchboxNet",
    "QuartzNet",
    "TimeChannelSeparableBlock",
    "block_layout",
]

MATCHBOXNET_KERNELS = spec.MATCHBOXNET_KERNELS
QUARTZNET_BLOCKS = spec.QUARTZNET_BLOCKS

#: NeMo's batch norm: epsilon 1e-3, PyTorch momentum 0.1, which is 0.9 in Flax's
#: convention (the weight of the old running value).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-3


def block_layout(kinds: Sequence[Any], blocks: int) -> tuple[Any, ...]:
    """The kind of each of ``blocks`` residual blocks: block ``i`` takes kind ``i * K // blocks``.

    For ``blocks`` a multiple of the ``K`` kinds, each kind repeats ``blocks / K``
    times in a row: QuartzNet's layout (10x5 and 15x5 repeat each of the five
    blocks of 5x5 two and three times; Kriman et al., 2019, Section 2). Other
    counts spread the kinds evenly, in order.

    Example:
      >>> from sepconv_jax.models.speech import block_layout
      >>> block_layout((13, 15, 17), 6), block_layout((13, 15, 17), 2)
      ((13, 13, 15, 15, 17, 17), (13, 15))
    """
    blocks = _spec.check_positive_int(blocks, "blocks")
    return tuple(kinds[i * len(kinds) // blocks] for i in range(blocks))


def check_sequence(x: ArrayLike, owner: str) -> jax.Array:
    """``x`` as an array of rank 3, ``(batch, time, features)``, or a clear error."""
    return _common.check_rank(x, owner, "feature frames (batch, time, features)")


def check_stream_mode(train: Any, decode: Any, causal: bool, owner: str) -> None:
    """``train`` and ``decode`` flags that fit a model with ``causal`` padding."""
    _layers.check_bool(train, "train")
    _layers.check_bool(decode, "decode")
    if decode and train:
        raise ValueError(
            f"`decode=True` streams {owner} in inference mode (batch norm with its running "
            f"statistics); call it with train=False"
        )
    if decode and not causal:
        raise ValueError(
            f"`decode=True` streams a causal model, but this {owner} has causal=False; build it "
            f"with causal=True"
        )


def _check_call(config: Any, b: Builder, x: jax.Array) -> jax.Array:
    """``x`` as feature frames, and the call's mode, checked for the block or model ``config``."""
    owner = type(config).__name__
    x = check_sequence(x, owner)
    check_stream_mode(b.train, b.decode, config.causal, owner)
    return x


def _time_channel_block(config: TimeChannelSeparableBlock, b: Builder, x: jax.Array) -> jax.Array:
    """``(batch, time, channels)`` -> ``(batch, time / strides, features)``."""
    x = _check_call(config, b, x)
    h = x
    for i in range(1, config.repeat + 1):
        strides = config.strides if i == 1 else 1
        if config.kernel_size == 1:
            h = b.pointwise(f"conv{i}", h[:, ::strides], config.features)
        else:
            h = b.separable(
                f"conv{i}", h, config.features, kernel_size=(config.kernel_size,),
                strides=strides, padding=config._padding(), kernel_dilation=config.dilation,
            )  # fmt: skip
        h = b.batch_norm(f"bn{i}", h, config.bn_momentum, config.bn_epsilon)
        if i == config.repeat and config.residual:
            # A 1x1 conv of stride s reads frames 0, s, 2s, ...: those that the
            # block's (causal or symmetric) windows are centred or end on.
            r = b.pointwise("residual", x[:, :: config.strides], config.features)
            r = b.batch_norm("residual_bn", r, config.bn_momentum, config.bn_epsilon)
            h = h + r.astype(h.dtype)
        h = b.dropout(f"dropout{i}", config.activation(h), config.dropout_rate)
    return h


class TimeChannelSeparableBlock(LinenStream, Normalized):
    """QuartzNet's block: ``repeat`` separable sub-blocks and a residual connection.

    Each sub-block is a depthwise convolution over time (one ``kernel_size`` filter
    per channel), a pointwise convolution to ``features`` channels, batch norm,
    ReLU and dropout; the first sub-block's stride is ``strides``. With
    ``residual``, the block's input goes through a 1x1 convolution and batch norm
    (as in NeMo, even when the widths agree) and is added after the last
    sub-block's batch norm, before its activation. A ``kernel_size`` of 1 is a
    plain pointwise convolution (QuartzNet's C3, MatchboxNet's Conv3).

    Attributes:
      features: output channels.
      kernel_size: the depthwise window along time.
      repeat: sub-blocks, ``R``.
      dilation: the depthwise dilation.
      strides: the first sub-block's stride along time (and the residual's).
      residual: add the (1x1 conv, BN) residual.
      causal: ``"CAUSAL"`` padding (all before) instead of symmetric ``(k - 1) * d / 2``.
      dropout_rate: dropout after every activation (NeMo's ``dropout``).
      activation: ReLU in both papers.
      bn_momentum, bn_epsilon: 0.9 (Flax's convention) and 1e-3, as NeMo.
      dtype, param_dtype, precision, impl: passed to every layer.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.models.speech import TimeChannelSeparableBlock
      >>> block = TimeChannelSeparableBlock(features=16, kernel_size=5, repeat=2)
      >>> x = jnp.ones((2, 20, 8))
      >>> variables = block.init(jax.random.key(0), x)
      >>> sorted(variables["params"])
      ['bn1', 'bn2', 'conv1', 'conv2', 'residual', 'residual_bn']
      >>> block.apply(variables, x).shape
      (2, 20, 16)
    """

    features: int = 64
    kernel_size: int = 13
    repeat: int = 1
    dilation: int = 1
    strides: int = 1
    residual: bool = True
    causal: bool = False
    dropout_rate: float = 0.0
    activation: Activation = nn.relu
    bn_momentum: float = BN_MOMENTUM
    bn_epsilon: float = BN_EPSILON

    checks: ClassVar[dict[str, str]] = {"features": "positive_int"}

    def _padding(self) -> Any:
        if self.causal:
            return "CAUSAL"
        half = (self.kernel_size - 1) * self.dilation // 2
        return ((half, (self.kernel_size - 1) * self.dilation - half),)

    forward = staticmethod(_time_channel_block)


def _block(
    config: MatchboxNet | QuartzNet,
    b: Builder,
    name: str,
    x: jax.Array,
    features: int,
    kernel_size: int,
    **fields: Any,
) -> jax.Array:
    """A block of the model ``config``, with its padding, dropout and batch-norm options."""
    return b.block(
        name, TimeChannelSeparableBlock, x, features=features, kernel_size=kernel_size,
        residual=fields.pop("residual", False), causal=config.causal,
        dropout_rate=config.block_dropout_rate, bn_momentum=config.bn_momentum,
        bn_epsilon=config.bn_epsilon, **fields,
    )  # fmt: skip


def _matchboxnet(config: MatchboxNet, b: Builder, x: jax.Array) -> jax.Array:
    x = _check_call(config, b, x)
    x = _block(config, b, "prologue", x, 128, 11)
    for i, kernel in enumerate(config._kernels(), start=1):
        x = _block(config, b, f"block{i}", x, config.channels, kernel, repeat=config.repeat,
                   residual=True)  # fmt: skip
    x = _block(config, b, "epilogue1", x, 128, 29, dilation=2)
    x = _block(config, b, "epilogue2", x, 128, 1)
    pooling = "avg" if config.include_top else config.pooling
    if pooling is None:
        return x
    pooled = _running_pool(b, x, pooling) if b.decode else _common.pool(x, pooling)
    return _common.classify(config, b, pooled) if config.include_top else pooled


def pool_caches(pooling: str, batch: int, channels: int, dtype: Any) -> dict[str, jax.Array]:
    """The running pool's state at the start of a stream: a sum and a count (in float32
    at least, as ``jnp.mean`` accumulates), or a maximum."""
    if pooling == "avg":
        acc = jnp.promote_types(dtype, jnp.float32)
        return {"pool_sum": jnp.zeros((batch, channels), acc), "pool_count": jnp.zeros((), acc)}
    return {"pool_max": jnp.full((batch, channels), -jnp.inf, dtype)}


def _running_pool(b: Builder, x: jax.Array, pooling: str) -> jax.Array:
    """The pool over every frame so far, at each frame of the chunk ``(batch, n, C)``."""
    batch, _, channels = x.shape
    cache = b.cache(pool_caches(pooling, batch, channels, x.dtype))
    first = next(iter(cache.values()))
    if first.shape[0] != batch:
        raise ValueError(
            f"the cache's running pool holds {first.shape[0]} sequences but `x` has {batch}: "
            f"the batch size changed within a stream (start a new stream for a new batch size)"
        )
    if pooling == "avg":
        sums = cache["pool_sum"][:, None] + jnp.cumsum(x.astype(first.dtype), axis=1)
        counts = cache["pool_count"] + jnp.arange(1, x.shape[1] + 1, dtype=first.dtype)
        b.update_cache({"pool_sum": sums[:, -1], "pool_count": counts[-1]})
        return (sums / counts[None, :, None]).astype(x.dtype)
    peaks = jnp.maximum(cache["pool_max"][:, None], jax.lax.cummax(x, axis=1))
    b.update_cache({"pool_max": peaks[:, -1]})
    return peaks


class MatchboxNet(LinenStream, _common.Classifier):
    """MatchboxNet-BxRxC: a keyword-spotting classifier of 1-D time-channel separable blocks.

    Layout (Majumdar & Ginsburg, 2020, Table 1; NeMo's matchboxnet_3x1x64
    configuration): a prologue block Conv1 (kernel 11, 128 channels), ``blocks``
    residual blocks of ``repeat`` sub-blocks and ``channels`` channels (kernels 13,
    15, 17, spread over the blocks by :func:`block_layout`), an epilogue Conv2
    (kernel 29, dilation 2, 128 channels) and Conv3 (1x1, 128 channels), each with
    batch norm and ReLU, then average pooling over time and a dense layer (NeMo's
    classification decoder; the paper's Conv4). Every window is separable.

    Trainable parameters with 64 input features and 30 classes, against the
    paper's Table 2 (which gives thousands to two significant digits):

    ========  ==========  =====
    model     here        paper
    ========  ==========  =====
    3x1x64    77,214      77K
    3x2x64    92,766      93K
    6x2x64    136,542     140K
    ========  ==========  =====

    The paper's Table 1 lists three blocks; 6x2x64 is taken here to repeat each of
    them twice, as QuartzNet builds its deeper models (136.5K, 140K to two
    significant digits). Kernels growing on to 19, 21 and 23 would give 138,846,
    which also rounds to 140K: the published count does not tell the two apart.

    Attributes:
      num_classes: classes (30 for Google Speech Commands v1 with all words; 12 for
        its 10-command subset with "unknown" and "silence").
      blocks: residual blocks, ``B``.
      repeat: sub-blocks per residual block, ``R``.
      channels: width of the residual blocks, ``C``.
      kernel_sizes: one depthwise window per residual block; default the paper's
        13, 15, 17 spread by :func:`block_layout`.
      causal: causal padding everywhere, so that the model streams (``decode``).
      block_dropout_rate: dropout after every activation (NeMo's ``dropout``, 0 in
        its configuration).
      include_top, pooling, dropout_rate, classifier_activation: the head, as
        every :class:`~sepconv_jax.models._common.Classifier`, pooling over time.
      bn_momentum, bn_epsilon: NeMo's batch norm (0.9 in Flax's convention, 1e-3).
      dtype, param_dtype, precision, impl: passed to every layer.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.models import MatchboxNet
      >>> model = MatchboxNet(blocks=3, repeat=2, channels=64)
      >>> x = jnp.zeros((2, 128, 64))  # (batch, frames, MFCC features)
      >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
      >>> sum(p.size for p in jax.tree.leaves(variables["params"]))
      92766
      >>> jax.eval_shape(lambda v: model.apply(v, x), variables).shape
      (2, 30)
    """

    num_classes: int = 30
    blocks: int = 3
    repeat: int = 1
    channels: int = 64
    kernel_sizes: Sequence[int] | None = None
    causal: bool = False
    block_dropout_rate: float = 0.0
    bn_momentum: float = BN_MOMENTUM
    bn_epsilon: float = BN_EPSILON

    def __post_init__(self) -> None:
        super().__post_init__()
        self._kernels()

    def _kernels(self) -> tuple[int, ...]:
        if self.kernel_sizes is None:
            return block_layout(MATCHBOXNET_KERNELS, self.blocks)
        kernels = tuple(self.kernel_sizes)
        if len(kernels) != self.blocks:
            raise ValueError(
                f"`kernel_sizes` has {len(kernels)} entries {kernels!r} but the model has "
                f"blocks={self.blocks}; give one window per residual block"
            )
        return tuple(_spec.check_positive_int(k, "kernel_sizes") for k in kernels)

    def caches(self, batch: int, dtype: Any) -> dict[str, jax.Array]:
        """The running pool's state for a new stream of ``batch`` sequences (none without)."""
        pooling = "avg" if self.include_top else self.pooling
        return {} if pooling is None else pool_caches(pooling, batch, 128, dtype)

    forward = staticmethod(_matchboxnet)


def _quartznet(config: QuartzNet, b: Builder, x: jax.Array) -> jax.Array:
    x = _check_call(config, b, x)
    if b.decode and x.shape[1] % 2:
        raise ValueError(
            f"`x` has {x.shape[1]} frames but QuartzNet's first convolution has stride 2: "
            f"with decode=True stream chunks of an even number of frames"
        )
    x = _block(config, b, "prologue", x, 256, 33, strides=2)
    for i, (kernel, width) in enumerate(block_layout(QUARTZNET_BLOCKS, config.blocks), start=1):
        x = _block(config, b, f"block{i}", x, width, kernel, repeat=config.repeat, residual=True)
    x = _block(config, b, "epilogue1", x, 512, 87, dilation=2)
    x = _block(config, b, "epilogue2", x, 1024, 1)
    return b.pointwise("decoder", x, config.num_classes, use_bias=True)


class QuartzNet(LinenStream, Normalized):
    """QuartzNet-BxR: a CTC speech recognizer of 1-D time-channel separable blocks.

    Layout (Kriman et al., 2019, Table 1): C1 (kernel 33, stride 2, 256 channels),
    ``blocks`` residual blocks of ``repeat`` sub-blocks (the five kinds B1-B5:
    kernels 33, 39, 51, 63, 75 with 256, 256, 512, 512, 512 channels, each repeated
    ``blocks / 5`` times in a row, :func:`block_layout`), C2 (kernel 87, dilation 2,
    512 channels), C3 (1x1, 1024 channels), each with batch norm and ReLU, and C4, a
    1x1 convolution with bias to ``num_classes`` logits per output frame. Every
    window is separable (NeMo's ``separable: true``).

    Trainable parameters with 64 mel features and 29 outputs (28 characters and the
    CTC blank), against the paper's Table 2:

    =====  ==========  =====
    model  here        paper
    =====  ==========  =====
    5x5    6,713,181   6.7M
    10x5   12,818,781  12.8M
    15x5   18,924,381  18.9M
    =====  ==========  =====

    Attributes:
      num_classes: outputs per frame: 29 for English characters (NeMo's 28
        labels, space, a-z and apostrophe, plus the CTC blank).
      blocks: residual blocks, ``B``.
      repeat: sub-blocks per residual block, ``R``.
      causal: causal padding everywhere, so that the model streams (``decode``;
        chunks of an even number of frames, for C1's stride 2).
      block_dropout_rate: dropout after every activation (NeMo's ``dropout``).
      bn_momentum, bn_epsilon: NeMo's batch norm (0.9 in Flax's convention, 1e-3).
      dtype, param_dtype, precision, impl: passed to every layer.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.models import QuartzNet
      >>> model = QuartzNet(blocks=5, repeat=5)
      >>> x = jnp.zeros((1, 301, 64))  # (batch, 10 ms frames, mel features)
      >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
      >>> sum(p.size for p in jax.tree.leaves(variables["params"]))
      6713181
      >>> jax.eval_shape(lambda v: model.apply(v, x), variables).shape  # stride 2
      (1, 151, 29)
    """

    num_classes: int = 29
    blocks: int = 5
    repeat: int = 5
    causal: bool = False
    block_dropout_rate: float = 0.0
    bn_momentum: float = BN_MOMENTUM
    bn_epsilon: float = BN_EPSILON

    forward = staticmethod(_quartznet)
