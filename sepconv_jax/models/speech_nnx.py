"""MatchboxNet and QuartzNet as ``flax.nnx`` modules: the NNX twins of :mod:`~sepconv_jax.models.speech`.

The same layouts, options, parameter counts and numerics as the linen models, in
NNX's style: ``in_features`` first, keyword-only options, ``rngs=`` required, and
parameters created in ``__init__``. Both run the same forward functions
(:mod:`sepconv_jax.models._build`), so their parameter trees are identical and
:func:`sepconv_jax.models.nnx.from_linen` moves a linen model's weights across.

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

from sepconv_jax import _spec
from sepconv_jax.models import speech
from sepconv_jax.models._build import NNXBlock, NNXModel, NNXModule, nnx_class
from sepconv_jax.nnx import SeparableConv

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


class _Stream(NNXModule):
    """A speech block or model: ``(batch, time, features)``, an explicit ``train`` flag
    (inference by default, as the linen models), and streaming after ``init_cache``."""

    rank = 3

    def __call__(self, x: ArrayLike, train: bool = False, decode: bool = False) -> jax.Array:
        """The linen twin's forward: ``train`` batch statistics and dropout, ``decode`` streams.

        Args:
          x: ``(batch, time, in_features)``; with ``decode=True`` the next chunk (after
            :meth:`init_cache`).
          train: batch statistics and dropout.
          decode: stream a causal model.
        """
        return self._run(x, train, decode)

    def _init_caches(self, batch: int, dtype: Any) -> None:
        convs = [n for _, n in nnx.iter_graph(self) if isinstance(n, SeparableConv)]
        for conv in convs:
            conv.init_cache((batch, 1, conv.in_features), dtype)
        caches = getattr(self.config, "caches", None)
        for name, value in ({} if caches is None else caches(batch, dtype)).items():
            setattr(self, name, nnx.Cache(value))


class _StreamBlock(_Stream, NNXBlock):
    def init_cache(self, batch_size: int, dtype: Any = jnp.float32) -> None:
        """Creates the cache of every windowed layer for chunks of ``batch_size`` sequences."""
        self._init_caches(_spec.check_positive_int(batch_size, "batch_size"), dtype)


class _StreamModel(_Stream, NNXModel):
    def __init__(self, in_features: int = 64, *, rngs: nnx.Rngs, **options: Any) -> None:
        self._setup(self.linen_class(**options), in_features, rngs)

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
        if not self.config.causal:
            raise ValueError(
                f"`init_cache` prepares a causal model for streaming, but this {owner} has "
                f"causal=False; build it with causal=True"
            )
        self._init_caches(_check_input_shape(input_shape, self.in_features, owner)[0], dtype)


_DOC = (
    "{name}, the NNX twin of :class:`sepconv_jax.models.{name}`: the same layout, options "
    "and parameter names, with ``in_features`` (features per frame) first and ``rngs=``."
)
TimeChannelSeparableBlock = nnx_class(
    speech.TimeChannelSeparableBlock, __name__, _StreamBlock,
    _DOC.format(name="TimeChannelSeparableBlock"),
)  # fmt: skip
MatchboxNet = nnx_class(speech.MatchboxNet, __name__, _StreamModel, _DOC.format(name="MatchboxNet"))
QuartzNet = nnx_class(speech.QuartzNet, __name__, _StreamModel, _DOC.format(name="QuartzNet"))
