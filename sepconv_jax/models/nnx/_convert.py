"""Linen model + variables -> the NNX model with the same weights and statistics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx, traverse_util

from sepconv_jax.models._build import (
    NNX_CLASSES,
    NNXBlock,
    NNXModel,
    abstract_build,
    input_kernel,
)

M = TypeVar("M", bound=nnx.Module)


def _flat(variables: Mapping[str, Any], collection: str) -> dict[tuple[str, ...], Any]:
    tree = variables.get(collection, {})
    return {tuple(str(k) for k in path): v for path, v in traverse_util.flatten_dict(tree).items()}


def _models() -> dict[type[Any], type[Any]]:
    """linen class -> NNX class, for every registered architecture (speech included)."""
    from sepconv_jax.models import nnx as _nnx  # noqa: F401  (generates the image classes)
    from sepconv_jax.models import speech_nnx  # noqa: F401  (and the speech ones)

    return {k: v for k, v in NNX_CLASSES.items() if not issubclass(v, NNXBlock)}


def abstract_model(
    nnx_class: type[M], *args: Any, rngs: nnx.Rngs | None = None, **options: Any
) -> M:
    """``nnx_class(*args, **options)`` with ``jax.ShapeDtypeStruct`` parameters, fast.

    What ``nnx.eval_shape(lambda: nnx_class(..., rngs=rngs))`` gives, for counting
    parameters or as a skeleton to fill with weights, without tracing the whole
    initialization at once (each layer is traced alone: for the deepest models this
    is several times faster). Dropout streams are real, forked from ``rngs``
    (``nnx.Rngs(0)`` when omitted).

    Example:
      >>> import jax, math
      >>> from flax import nnx
      >>> from sepconv_jax.models.nnx import EfficientNetB7, abstract_model
      >>> model = abstract_model(EfficientNetB7)
      >>> sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
      66347960
    """
    if not (isinstance(nnx_class, type) and nnx_class in _models().values()):
        raise TypeError(
            f"`nnx_class` must be one of the sepconv_jax.models.nnx architectures, got "
            f"{nnx_class!r}"
        )
    make: Any = nnx_class
    with abstract_build():
        return make(*args, rngs=nnx.Rngs(0) if rngs is None else rngs, **options)


def from_linen(
    linen_model: nn.Module, variables: Mapping[str, Any], *, rngs: nnx.Rngs | None = None
) -> Any:
    """The NNX version of a linen reference model, holding the same weights.

    Builds the ``flax.nnx`` class of the same name (:mod:`sepconv_jax.models.nnx`,
    or :mod:`sepconv_jax.models.speech_nnx` for the speech models) with the linen
    model's options and copies every parameter (``params``) and batch statistic
    (``batch_stats``) into it, path for path: both run the same forward, so the two
    trees are identical by construction, and the NNX model computes what
    ``linen_model.apply(variables, x, train=...)`` computes: after ``model.eval()``
    the inference output, in training mode the training output (dropout and
    stochastic depth draw from ``rngs``' ``"dropout"`` stream, not from linen's rng,
    so they drop other samples). No parameter is initialized twice: the model is
    built abstractly and then given the weights and its random streams.

    Args:
      linen_model: a model of :mod:`sepconv_jax.models` (``MobileNetV1`` ...
        ``ConvNeXtBase``, ``MatchboxNet``, ``QuartzNet``), or one returned by the
        Keras or timm importers.
      variables: its ``{"params": ..., "batch_stats": ...}`` (``batch_stats`` absent
        for ConvNeXt).
      rngs: the random streams for dropout and stochastic depth (``nnx.Rngs(0)``
        when omitted); each dropout forks its own from ``rngs``' ``"dropout"``
        stream (or its default stream).

    Returns:
      The NNX model, in training mode as every freshly built NNX model is (call
      ``.eval()`` for inference).

    Raises:
      TypeError: for a model that is not one of the reference architectures.
      ValueError: when ``variables`` do not have exactly the model's parameter and
        statistics names and shapes.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax import models
      >>> from sepconv_jax.models.nnx import from_linen
      >>> linen_model = models.MobileNetV2(num_classes=4, width_multiplier=0.35)
      >>> x = jnp.ones((1, 32, 32, 3))
      >>> variables = linen_model.init(jax.random.key(0), x)
      >>> model = from_linen(linen_model, variables)
      >>> model.eval()
      >>> bool(jnp.allclose(model(x), linen_model.apply(variables, x), atol=1e-5))
      True
    """
    classes = _models()
    nnx_class = classes.get(type(linen_model))
    if nnx_class is None:
        raise TypeError(
            f"`linen_model` must be one of the sepconv_jax.models architectures "
            f"({', '.join(sorted(c.__name__ for c in classes))}), got "
            f"{type(linen_model).__name__}"
        )
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise TypeError(
            "`variables` must be the linen model's variables, a mapping with 'params' (and "
            "'batch_stats'), as `linen_model.init` returns"
        )
    weights = {("params", *k): v for k, v in _flat(variables, "params").items()}
    weights |= {("batch_stats", *k): v for k, v in _flat(variables, "batch_stats").items()}
    path, width_of = input_kernel(linen_model, nnx_class.rank)
    stem = _flat(variables, "params").get(path)
    if stem is None:
        raise ValueError(
            f"`variables` has no {'/'.join(path)}; they are not the variables of a "
            f"{type(linen_model).__name__}"
        )
    options = {k: getattr(linen_model, k) for k in nnx_class.option_names()}
    rngs = nnx.Rngs(0) if rngs is None else rngs
    model = abstract_model(nnx_class, **options, in_features=width_of(jnp.shape(stem)))
    expected, dropouts = _variables_of(model)
    _check_fit(type(linen_model).__name__, expected, weights)
    # The model was built abstractly (no parameter initialized): fill in the weights,
    # and give each dropout its own stream forked from `rngs`, as building does.
    for key, variable in expected.items():
        variable.set_value(jnp.asarray(weights[key]))
    for dropout in dropouts:
        dropout.rngs = rngs[dropout.rng_collection].fork()
    return model


def _variables_of(
    model: Any,
) -> tuple[dict[tuple[str, ...], nnx.Variable], list[nnx.Dropout]]:
    """The model's parameters and batch statistics by ``(collection, *path)``, and its
    dropouts that draw from a stream."""
    expected: dict[tuple[str, ...], nnx.Variable] = {}
    dropouts: list[nnx.Dropout] = []
    for graph_path, node in nnx.iter_graph(model):
        key = tuple(str(p) for p in graph_path)
        if isinstance(node, nnx.Param):
            expected[("params", *key)] = node
        elif isinstance(node, nnx.BatchStat):
            expected[("batch_stats", *key)] = node
        elif isinstance(node, nnx.Dropout) and node.rngs is not None:
            dropouts.append(node)
    return expected, dropouts


def _check_fit(
    name: str, expected: Mapping[tuple[str, ...], nnx.Variable], weights: Mapping[tuple, Any]
) -> None:
    """A ``ValueError`` unless ``weights`` have exactly the names and shapes expected."""
    missing = sorted("/".join(k) for k in expected.keys() - weights.keys())
    extra = sorted("/".join(k) for k in weights.keys() - expected.keys())
    wrong = sorted(
        f"{'/'.join(k)}: {jnp.shape(weights[k])} (expected {expected[k].shape})"
        for k in expected.keys() & weights.keys()
        if tuple(jnp.shape(weights[k])) != tuple(expected[k].shape)
    )
    if missing or extra or wrong:
        raise ValueError(
            f"`variables` do not fit {name}: missing {missing[:5]}, "
            f"unexpected {extra[:5]}, wrong shapes {wrong[:5]}"
        )


__all__ = ["NNXModel", "abstract_model", "from_linen"]
