"""MatchboxNet and QuartzNet as ``flax.nnx`` modules: the NNX twins of :mod:`~sepconv_jax.models.speech`.

The same layouts, options, parameter counts and numerics as the linen models, in
NNX's style: ``in_features`` first, keyword-only options, ``rngs=`` required, and
parameters created in ``__init__``. Given the same parameters and batch statistics
an NNX model and its linen twin compute the same function.

Streaming follows ``nnx.MultiHeadAttention``: ``model.init_cache(input_shape)``
creates every layer's cache (zeros, the causal padding), then ``model(chunk,
decode=True)`` reads and updates it, with batch norm in inference mode.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> from sepconv_jax.models.speech_nnx import MatchboxNet
  >>> abstract = nnx.eval_shape(lambda: MatchboxNet(64, blocks=3, repeat=1, rngs=nnx.Rngs(0)))
  >>> sum(p.size for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  77214
  >>> model = MatchboxNet(8, blocks=1, channels=8, causal=True, rngs=nnx.Rngs(0))
  >>> x = jnp.ones((1, 12, 8))  # (batch, frames, features)
  >>> model.init_cache((1, 1, 8))
  >>> step = nnx.jit(lambda m, chunk: m(chunk, decode=True))
  >>> ys = [step(model, x[:, t : t + 1]) for t in range(12)]
  >>> bool(jnp.allclose(ys[-1][:, -1], model(x), atol=1e-5))
  True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from sepconv_jax import _layers, _spec
from sepconv_jax.kernels.dispatch import Impl
from sepconv_jax.models import _common
from sepconv_jax.models._common import Activation
from sepconv_jax.models.speech import (
    BN_EPSILON,
    BN_MOMENTUM,
    MATCHBOXNET_KERNELS,
    QUARTZNET_BLOCKS,
    block_layout,
    check_sequence,
    check_stream_mode,
)
from sepconv_jax.nnx import PointwiseConv, SeparableConv
from sepconv_jax.ops import PrecisionLike

__all__ = ["MatchboxNet", "QuartzNet", "TimeChannelSeparableBlock"]


def _check_input_shape(input_shape: Any, in_features: int, owner: str) -> tuple[int, ...]:
    if (
        not isinstance(input_shape, Sequence)
        or len(input_shape) != 3
        or not all(_spec.is_int(v) for v in input_shape)
    ):
        raise TypeError(
            f"`input_shape` must be the shape of a chunk, three ints (batch, time, features), "
            f"got {input_shape!r}"
        )
    shape = tuple(int(v) for v in input_shape)
    if shape[2] != in_features:
        raise ValueError(
            f"`input_shape` has {shape[2]} features but this {owner} was built with "
            f"in_features={in_features}"
        )
    return shape


class TimeChannelSeparableBlock(nnx.Module):
    """QuartzNet's block: ``repeat`` separable sub-blocks and a residual connection.

    The NNX twin of :class:`sepconv_jax.models.speech.TimeChannelSeparableBlock`:
    sub-blocks ``convs[i]`` (separable, or pointwise for ``kernel_size=1``) and
    ``norms[i]``; with ``residual``, ``residual`` (a 1x1 convolution) and
    ``residual_norm``.

    Args:
      in_features: input channels.
      features: output channels.
      kernel_size: the depthwise window along time.
      repeat, dilation, strides, residual, causal, dropout_rate, activation,
        bn_momentum, bn_epsilon, dtype, param_dtype, precision, impl: as in the
        linen block.
      rngs: random number streams (``params``, and ``dropout`` for dropout).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from sepconv_jax.models.speech_nnx import TimeChannelSeparableBlock
      >>> block = TimeChannelSeparableBlock(8, 16, 5, repeat=2, rngs=nnx.Rngs(0))
      >>> block(jnp.ones((2, 20, 8))).shape
      (2, 20, 16)
    """

    def __init__(
        self,
        in_features: int,
        features: int,
        kernel_size: int,
        *,
        repeat: int = 1,
        dilation: int = 1,
        strides: int = 1,
        residual: bool = True,
        causal: bool = False,
        dropout_rate: float = 0.0,
        activation: Activation = nnx.relu,
        bn_momentum: float = BN_MOMENTUM,
        bn_epsilon: float = BN_EPSILON,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: PrecisionLike = None,
        impl: Impl = "auto",
        rngs: nnx.Rngs,
    ):
        for name, value in (
            ("in_features", in_features),
            ("features", features),
            ("kernel_size", kernel_size),
            ("repeat", repeat),
            ("dilation", dilation),
            ("strides", strides),
        ):
            _spec.check_positive_int(value, name)
        _layers.check_bool(residual, "residual")
        _layers.check_bool(causal, "causal")
        _common.check_rate(dropout_rate, "dropout_rate")
        numerics = {"dtype": dtype, "param_dtype": param_dtype, "precision": precision}
        if causal:
            padding: Any = "CAUSAL"
        else:
            half = (kernel_size - 1) * dilation // 2
            padding = ((half, (kernel_size - 1) * dilation - half),)
        convs: list[SeparableConv | PointwiseConv] = []
        norms = []
        for i in range(repeat):
            c_in = in_features if i == 0 else features
            if kernel_size == 1:
                convs.append(PointwiseConv(c_in, features, use_bias=False, **numerics, rngs=rngs))
            else:
                convs.append(
                    SeparableConv(
                        c_in,
                        features,
                        (kernel_size,),
                        strides=strides if i == 0 else 1,
                        padding=padding,
                        kernel_dilation=dilation,
                        use_bias=False,
                        impl=impl,
                        **numerics,
                        rngs=rngs,
                    )
                )
            norms.append(self._norm(features, bn_momentum, bn_epsilon, dtype, param_dtype, rngs))
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.residual: PointwiseConv | None
        self.residual_norm: nnx.BatchNorm | None
        if residual:
            self.residual = PointwiseConv(
                in_features, features, use_bias=False, **numerics, rngs=rngs
            )
            self.residual_norm = self._norm(
                features, bn_momentum, bn_epsilon, dtype, param_dtype, rngs
            )
        else:
            self.residual = nnx.data(None)
            self.residual_norm = nnx.data(None)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.activation = activation
        self.in_features = in_features
        self.features = features
        self.kernel_size = kernel_size
        self.strides = strides
        self.causal = causal

    @staticmethod
    def _norm(
        features: int, momentum: float, epsilon: float, dtype: Any, param_dtype: Any, rngs: nnx.Rngs
    ) -> nnx.BatchNorm:
        return nnx.BatchNorm(
            features,
            momentum=momentum,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def init_cache(self, batch_size: int, dtype: Any = jnp.float32) -> None:
        """Creates the cache of every windowed layer for chunks of ``batch_size`` sequences."""
        for conv in self.convs:
            if isinstance(conv, SeparableConv):
                conv.init_cache((batch_size, 1, conv.in_features), dtype)

    def __call__(self, x: ArrayLike, train: bool = False, decode: bool = False) -> jax.Array:
        """``(batch, time, in_features)`` -> ``(batch, time / strides, features)``.

        Args:
          x: feature frames, or with ``decode=True`` a stream's next chunk.
          train: batch statistics and dropout.
          decode: stream (needs ``causal=True``, ``train=False`` and
            :meth:`init_cache`).
        """
        owner = type(self).__name__
        x = check_sequence(x, owner)
        check_stream_mode(train, decode, self.causal, owner)
        h = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            if isinstance(conv, SeparableConv):
                h = conv(h, decode=decode)
            else:
                h = conv(h[:, :: self.strides] if i == 0 else h)
            h = norm(h, use_running_average=not train)
            if i == len(self.convs) - 1 and self.residual is not None:
                assert self.residual_norm is not None
                r = self.residual(x[:, :: self.strides])
                h = h + self.residual_norm(r, use_running_average=not train).astype(h.dtype)
            h = self.activation(h)
            h = self.dropout(h, deterministic=not train)
        return h


class _SpeechModel(nnx.Module):
    """What the two NNX speech models share: their chain of blocks and its cache."""

    causal: bool
    in_features: int
    prologue: TimeChannelSeparableBlock
    blocks: nnx.List[TimeChannelSeparableBlock]
    epilogue1: TimeChannelSeparableBlock
    epilogue2: TimeChannelSeparableBlock

    def _blocks(self) -> list[TimeChannelSeparableBlock]:
        return [self.prologue, *self.blocks, self.epilogue1, self.epilogue2]

    def init_cache(self, input_shape: Sequence[int], dtype: Any = jnp.float32) -> None:
        """Creates every layer's cache (zeros, the causal padding) for a new stream.

        Args:
          input_shape: the shape of a chunk, ``(batch, n, in_features)``; ``n`` does
            not matter.
          dtype: the dtype the model computes in (float32 by default).

        Raises:
          ValueError: for a model built with ``causal=False``, or a shape whose
            features are not ``in_features``.
          TypeError: for a shape that is not three ints.
        """
        owner = type(self).__name__
        if not self.causal:
            raise ValueError(
                f"`init_cache` prepares a causal model for streaming, but this {owner} has "
                f"causal=False; build it with causal=True"
            )
        batch = _check_input_shape(input_shape, self.in_features, owner)[0]
        for block in self._blocks():
            block.init_cache(batch, dtype)
        self._init_head_cache(batch, dtype)

    def _init_head_cache(self, batch: int, dtype: Any) -> None:
        pass


class MatchboxNet(_SpeechModel):
    """MatchboxNet-BxRxC, the NNX twin of :class:`sepconv_jax.models.MatchboxNet`.

    Same layout, options and parameter counts (77,214 for 3x1x64 with 64 features
    and 30 classes; 92,766 for 3x2x64; 136,542 for 6x2x64): see the linen model.
    Layers: ``prologue``, ``blocks[i]``, ``epilogue1``, ``epilogue2`` (each a
    :class:`TimeChannelSeparableBlock`) and ``predictions`` (``nnx.Linear``).

    Args:
      in_features: input features per frame (64 MFCC in the paper).
      num_classes, blocks, repeat, channels, kernel_sizes, causal,
        block_dropout_rate, include_top, pooling, dropout_rate,
        classifier_activation, bn_momentum, bn_epsilon, dtype, param_dtype,
        precision, impl: as in the linen model.
      rngs: random number streams.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from sepconv_jax.models.speech_nnx import MatchboxNet
      >>> model = MatchboxNet(64, num_classes=12, rngs=nnx.Rngs(0))
      >>> model(jnp.ones((2, 128, 64))).shape
      (2, 12)
    """

    def __init__(
        self,
        in_features: int = 64,
        *,
        num_classes: int = 30,
        blocks: int = 3,
        repeat: int = 1,
        channels: int = 64,
        kernel_sizes: Sequence[int] | None = None,
        causal: bool = False,
        block_dropout_rate: float = 0.0,
        include_top: bool = True,
        pooling: _common.Pooling = None,
        dropout_rate: float = 0.0,
        classifier_activation: Activation | None = None,
        bn_momentum: float = BN_MOMENTUM,
        bn_epsilon: float = BN_EPSILON,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: PrecisionLike = None,
        impl: Impl = "auto",
        rngs: nnx.Rngs,
    ):
        for name, value in (
            ("in_features", in_features),
            ("num_classes", num_classes),
            ("blocks", blocks),
            ("repeat", repeat),
            ("channels", channels),
        ):
            _spec.check_positive_int(value, name)
        _layers.check_bool(causal, "causal")
        _layers.check_bool(include_top, "include_top")
        if pooling not in _common.POOLINGS:
            raise ValueError(f"`pooling` must be None, 'avg' or 'max', got {pooling!r}")
        _common.check_rate(dropout_rate, "dropout_rate")
        _common.check_rate(block_dropout_rate, "block_dropout_rate")
        if classifier_activation is not None and not callable(classifier_activation):
            raise TypeError(
                f"`classifier_activation` must be None or a callable such as jax.nn.softmax, "
                f"got {type(classifier_activation).__name__}"
            )
        if kernel_sizes is None:
            kernels = block_layout(MATCHBOXNET_KERNELS, blocks)
        else:
            kernels = tuple(kernel_sizes)
            if len(kernels) != blocks:
                raise ValueError(
                    f"`kernel_sizes` has {len(kernels)} entries {kernels!r} but the model has "
                    f"blocks={blocks}; give one window per residual block"
                )
        options: dict[str, Any] = {
            "causal": causal,
            "dropout_rate": block_dropout_rate,
            "bn_momentum": bn_momentum,
            "bn_epsilon": bn_epsilon,
            "dtype": dtype,
            "param_dtype": param_dtype,
            "precision": precision,
            "impl": impl,
            "rngs": rngs,
        }
        block = TimeChannelSeparableBlock
        self.prologue = block(in_features, 128, 11, residual=False, **options)
        widths = [128] + [channels] * blocks
        self.blocks = nnx.List(
            [
                block(widths[i], channels, kernel, repeat=repeat, residual=True, **options)
                for i, kernel in enumerate(kernels)
            ]
        )
        self.epilogue1 = block(channels, 128, 29, dilation=2, residual=False, **options)
        self.epilogue2 = block(128, 128, 1, residual=False, **options)
        self.top_dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.predictions: nnx.Linear | None
        if include_top:
            self.predictions = nnx.Linear(
                128,
                num_classes,
                dtype=dtype,
                param_dtype=param_dtype,
                precision=precision,
                rngs=rngs,
            )
        else:
            self.predictions = nnx.data(None)
        self.pool_sum: nnx.Cache[jax.Array] | None = nnx.data(None)
        self.pool_count: nnx.Cache[jax.Array] | None = nnx.data(None)
        self.pool_max: nnx.Cache[jax.Array] | None = nnx.data(None)
        self.in_features = in_features
        self.num_classes = num_classes
        self.causal = causal
        self.include_top = include_top
        self.pooling = pooling
        self.classifier_activation = classifier_activation

    def _pool_kind(self) -> str | None:
        return "avg" if self.include_top else self.pooling

    def _init_head_cache(self, batch: int, dtype: Any) -> None:
        kind = self._pool_kind()
        if kind == "avg":
            acc = jnp.promote_types(dtype, jnp.float32)
            self.pool_sum = nnx.Cache(jnp.zeros((batch, 128), acc))
            self.pool_count = nnx.Cache(jnp.zeros((), acc))
        elif kind == "max":
            self.pool_max = nnx.Cache(jnp.full((batch, 128), -jnp.inf, dtype))

    def __call__(self, x: ArrayLike, train: bool = False, decode: bool = False) -> jax.Array:
        """Classifies clips, or (``decode=True``) streams a chunk; as the linen model.

        Args:
          x: ``(batch, time, in_features)``.
          train: batch statistics and dropout.
          decode: stream a causal model after :meth:`init_cache`: one row per frame
            of the chunk, the output for every frame so far.

        Returns:
          ``(batch, num_classes)`` (``(batch, n, num_classes)`` with ``decode=True``),
          or features without the top.
        """
        x = check_sequence(x, "MatchboxNet")
        check_stream_mode(train, decode, self.causal, "MatchboxNet")
        for block in self._blocks():
            x = block(x, train, decode)
        kind = self._pool_kind()
        if kind is None:
            return x
        if decode:
            pooled = self._running_pool(x, kind)
        else:
            pooled = jnp.mean(x, axis=1) if kind == "avg" else jnp.max(x, axis=1)
        if self.predictions is None:
            return pooled
        logits = self.predictions(self.top_dropout(pooled, deterministic=not train))
        if self.classifier_activation is not None:
            logits = self.classifier_activation(logits)
        return logits

    def _running_pool(self, x: jax.Array, kind: str) -> jax.Array:
        if kind == "avg":
            total, count = self.pool_sum, self.pool_count
            if total is None or count is None:
                raise ValueError(_NO_CACHE.format(owner="MatchboxNet"))
            _check_pool(total[...], x)
            acc = total[...].dtype
            sums = total[...][:, None] + jnp.cumsum(x.astype(acc), axis=1)
            counts = count[...] + jnp.arange(1, x.shape[1] + 1, dtype=acc)
            total[...], count[...] = sums[:, -1], counts[-1]
            return (sums / counts[None, :, None]).astype(x.dtype)
        peak = self.pool_max
        if peak is None:
            raise ValueError(_NO_CACHE.format(owner="MatchboxNet"))
        _check_pool(peak[...], x)
        peaks = jnp.maximum(peak[...][:, None], jax.lax.cummax(x, axis=1))
        peak[...] = peaks[:, -1]
        return peaks


_NO_CACHE = (
    "`decode=True` needs the {owner}'s cache: call `init_cache(input_shape)` with the shape "
    "of a chunk before streaming"
)


def _check_pool(value: jax.Array, x: jax.Array) -> None:
    if value.shape[0] != x.shape[0]:
        raise ValueError(
            f"the cache's running pool holds {value.shape[0]} sequences but `x` has "
            f"{x.shape[0]}: call `init_cache` again for a new batch size"
        )


class QuartzNet(_SpeechModel):
    """QuartzNet-BxR, the NNX twin of :class:`sepconv_jax.models.QuartzNet`.

    Same layout, options and parameter counts (6,713,181 for 5x5 with 64 features
    and 29 outputs; 12,818,781 for 10x5; 18,924,381 for 15x5): see the linen
    model. Layers: ``prologue``, ``blocks[i]``, ``epilogue1``, ``epilogue2`` and
    ``decoder`` (a pointwise convolution with bias).

    Args:
      in_features: input features per frame (64 mel features in the paper).
      num_classes, blocks, repeat, causal, block_dropout_rate, bn_momentum,
        bn_epsilon, dtype, param_dtype, precision, impl: as in the linen model.
      rngs: random number streams.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from sepconv_jax.models.speech_nnx import QuartzNet
      >>> def logits(x):
      ...     return QuartzNet(64, blocks=5, repeat=1, rngs=nnx.Rngs(0))(x)
      >>> jax.eval_shape(logits, jnp.ones((1, 40, 64))).shape  # shapes only
      (1, 20, 29)
    """

    def __init__(
        self,
        in_features: int = 64,
        *,
        num_classes: int = 29,
        blocks: int = 5,
        repeat: int = 5,
        causal: bool = False,
        block_dropout_rate: float = 0.0,
        bn_momentum: float = BN_MOMENTUM,
        bn_epsilon: float = BN_EPSILON,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: PrecisionLike = None,
        impl: Impl = "auto",
        rngs: nnx.Rngs,
    ):
        for name, value in (
            ("in_features", in_features),
            ("num_classes", num_classes),
            ("blocks", blocks),
            ("repeat", repeat),
        ):
            _spec.check_positive_int(value, name)
        _layers.check_bool(causal, "causal")
        _common.check_rate(block_dropout_rate, "block_dropout_rate")
        options: dict[str, Any] = {
            "causal": causal,
            "dropout_rate": block_dropout_rate,
            "bn_momentum": bn_momentum,
            "bn_epsilon": bn_epsilon,
            "dtype": dtype,
            "param_dtype": param_dtype,
            "precision": precision,
            "impl": impl,
            "rngs": rngs,
        }
        block = TimeChannelSeparableBlock
        self.prologue = block(in_features, 256, 33, strides=2, residual=False, **options)
        layout = block_layout(QUARTZNET_BLOCKS, blocks)
        widths = [256] + [width for _, width in layout]
        self.blocks = nnx.List(
            [
                block(widths[i], width, kernel, repeat=repeat, residual=True, **options)
                for i, (kernel, width) in enumerate(layout)
            ]
        )
        self.epilogue1 = block(widths[-1], 512, 87, dilation=2, residual=False, **options)
        self.epilogue2 = block(512, 1024, 1, residual=False, **options)
        self.decoder = PointwiseConv(
            1024,
            num_classes,
            use_bias=True,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            rngs=rngs,
        )
        self.in_features = in_features
        self.num_classes = num_classes
        self.causal = causal

    def __call__(self, x: ArrayLike, train: bool = False, decode: bool = False) -> jax.Array:
        """Per-frame character logits ``(batch, ceil(time / 2), num_classes)``; as the linen model.

        Args:
          x: ``(batch, time, in_features)``; with ``decode=True`` the next chunk, an
            even number of frames (after :meth:`init_cache`).
          train: batch statistics and dropout.
          decode: stream a causal model.
        """
        x = check_sequence(x, "QuartzNet")
        check_stream_mode(train, decode, self.causal, "QuartzNet")
        if decode and x.shape[1] % 2:
            raise ValueError(
                f"`x` has {x.shape[1]} frames but QuartzNet's first convolution has stride 2: "
                f"with decode=True stream chunks of an even number of frames"
            )
        for block in self._blocks():
            x = block(x, train, decode)
        return self.decoder(x)
