"""Calling a linen or NNX model in inference mode, and rewriting its layers as it runs.

Shared by :mod:`sepconv_jax.export._model` (tracing, batch-norm folding) and
:mod:`sepconv_jax.export.quantization` (the int8 simulation), which both import it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
from flax import nnx

from sepconv_jax.export import _layers

__all__ = ["Hooks", "InferenceModel", "Rewrite", "linen_call", "nnx_call", "subtree"]

Path = tuple[str, ...]
Hooks = Callable[[Path, nn.Module], _layers.Hook | None]


class InferenceModel:
    """A model already in its exported form, run as ``model.apply(variables, x)``
    (:class:`sepconv_jax.export.QuantizedModel`): the exporters take it as it is."""

    def apply(self, variables: Mapping[str, Any], x: Any) -> Any:  # pragma: no cover
        raise NotImplementedError


def _takes_train(module: nn.Module) -> bool:
    try:
        return "train" in inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def linen_call(module: nn.Module, variables: Mapping[str, Any]) -> Callable[[Any], Any]:
    """``x -> module.apply(variables, x, train=False)`` (``train`` only when taken)."""
    kwargs: dict[str, Any] = {"train": False} if _takes_train(module) else {}
    return lambda x: module.apply(variables, x, **kwargs)


def nnx_call(module: nnx.Module) -> Callable[[Any], Any]:
    """``x -> copy(x)`` on a copy of the NNX ``module`` in evaluation mode."""
    graphdef, state = nnx.split(module)

    def call(x: Any) -> Any:
        copy = nnx.merge(graphdef, state)
        copy.eval()
        return copy(x)

    return call


def subtree(tree: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    """``tree[path[0]][path[1]]...``."""
    for name in path:
        tree = tree[name]
    return tree


class Rewrite:
    """A method interceptor that recomputes each known layer from substituted
    parameters (with the layer's unit hook) and turns the given batch norms into
    the identity."""

    def __init__(self, params: dict[Path, dict[str, Any]], identities: set[Path], hooks: Hooks):
        self.params = params
        self.identities = identities
        self.hooks = hooks
        self.busy = False

    def __call__(self, next_fun, args, kwargs, context):
        if context.method_name != "__call__" or self.busy:
            return next_fun(*args, **kwargs)
        module = context.module
        if module.scope is None:
            return next_fun(*args, **kwargs)
        path = tuple(module.path)
        if isinstance(module, nn.BatchNorm) and path in self.identities:
            return args[0] if args else kwargs["x"]
        params = module.variables.get("params", {})
        if _layers.layer_units(module, params) is None:
            return next_fun(*args, **kwargs)
        x = args[0] if args else kwargs["x"]
        hook = self.hooks(path, module)
        if path not in self.params and hook is None:
            return next_fun(*args, **kwargs)
        layer_params = self.params.get(path, params)
        self.busy = True
        try:
            if hook is None:
                return _layers.apply_layer(module, layer_params, x)
            return _layers.apply_layer(module, layer_params, x, hook=hook)
        finally:
            self.busy = False
