"""Linen model + variables -> the NNX model with the same weights and statistics."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx, traverse_util

from sepconv_jax.models.nnx import architectures
from sepconv_jax.models.nnx._layers import abstract_build

M = TypeVar("M", bound=architectures.Model)

#: linen class -> NNX class, for every architecture.
_BY_LINEN: dict[type[nn.Module], type[architectures.Model]] = {
    getattr(architectures, name).linen_class: getattr(architectures, name)
    for name in architectures.__all__
}


def _flat(variables: Mapping[str, Any], collection: str) -> dict[tuple[str, ...], Any]:
    tree = variables.get(collection, {})
    return {tuple(str(k) for k in path): v for path, v in traverse_util.flatten_dict(tree).items()}


def _options(linen_model: nn.Module) -> dict[str, Any]:
    return {
        f.name: getattr(linen_model, f.name)
        for f in dataclasses.fields(linen_model)
        if f.init and f.name not in ("parent", "name")
    }


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
    if not (isinstance(nnx_class, type) and issubclass(nnx_class, architectures.Model)):
        raise TypeError(
            f"`nnx_class` must be one of the sepconv_jax.models.nnx architectures, got "
            f"{nnx_class!r}"
        )
    with abstract_build():
        return nnx_class(*args, rngs=nnx.Rngs(0) if rngs is None else rngs, **options)


def from_linen(
    linen_model: nn.Module, variables: Mapping[str, Any], *, rngs: nnx.Rngs | None = None
) -> architectures.Model:
    """The NNX version of a linen reference model, holding the same weights.

    Builds the ``flax.nnx`` class of the same name in :mod:`sepconv_jax.models.nnx`
    with the linen model's options and copies every parameter (``params``) and
    batch statistic (``batch_stats``) into it, so that the NNX model computes what
    ``linen_model.apply(variables, x, train=...)`` computes: after ``model.eval()``
    the inference output, in training mode the training output (dropout and
    stochastic depth draw from ``rngs``' ``"dropout"`` stream, not from linen's rng,
    so they drop other samples). No parameter is initialized twice: the model is
    built abstractly and then given the weights and its random streams.

    Args:
      linen_model: a model of :mod:`sepconv_jax.models` (``MobileNetV1`` ...
        ``ConvNeXtBase``), or one returned by the Keras or timm importers.
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
    nnx_class = _BY_LINEN.get(type(linen_model))
    if nnx_class is None:
        raise TypeError(
            f"`linen_model` must be one of the sepconv_jax.models architectures "
            f"({', '.join(sorted(c.__name__ for c in _BY_LINEN))}), got "
            f"{type(linen_model).__name__}"
        )
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise TypeError(
            "`variables` must be the linen model's variables, a mapping with 'params' (and "
            "'batch_stats'), as `linen_model.init` returns"
        )
    weights = {("params", *k): v for k, v in _flat(variables, "params").items()}
    weights |= {("batch_stats", *k): v for k, v in _flat(variables, "batch_stats").items()}
    stem = _flat(variables, "params").get(nnx_class.stem_kernel)
    if stem is None:
        raise ValueError(
            f"`variables` has no {'/'.join(nnx_class.stem_kernel)}; they are not the "
            f"variables of a {type(linen_model).__name__}"
        )
    options = _options(linen_model)
    in_features = int(jnp.shape(stem)[-2])
    rngs = nnx.Rngs(0) if rngs is None else rngs

    model = abstract_model(nnx_class, **options, in_features=in_features)
    expected: dict[tuple[str, ...], nnx.Variable] = {}
    dropouts: list[nnx.Dropout] = []
    for graph_path, node in nnx.iter_graph(model):
        path = tuple(str(p) for p in graph_path)
        if isinstance(node, nnx.Param):
            expected[("params", *path)] = node
        elif isinstance(node, nnx.BatchStat):
            expected[("batch_stats", *path)] = node
        elif isinstance(node, nnx.Dropout) and node.rngs is not None:
            dropouts.append(node)
    missing = sorted("/".join(k) for k in expected.keys() - weights.keys())
    extra = sorted("/".join(k) for k in weights.keys() - expected.keys())
    wrong = sorted(
        f"{'/'.join(k)}: {jnp.shape(weights[k])} (expected {expected[k].shape})"
        for k in expected.keys() & weights.keys()
        if tuple(jnp.shape(weights[k])) != tuple(expected[k].shape)
    )
    if missing or extra or wrong:
        raise ValueError(
            f"`variables` do not fit {type(linen_model).__name__}: missing {missing[:5]}, "
            f"unexpected {extra[:5]}, wrong shapes {wrong[:5]}"
        )
    # The model was built abstractly (no parameter initialized): fill in the weights,
    # and give each dropout its own stream forked from `rngs`, as building does.
    for key, variable in expected.items():
        variable.set_value(jnp.asarray(weights[key]))
    for dropout in dropouts:
        dropout.rngs = rngs[dropout.rng_collection].fork()
    return model
