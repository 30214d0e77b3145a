"""A model (linen, NNX or a plain function) as one pure inference function of its input.

For a linen model the function is ``module.apply(variables, x, train=False)`` (the
``train`` flag is passed when ``__call__`` takes one, as our models do; single
layers are called as ``module.apply(variables, x)``). For an NNX module it is
``module(x)`` on a copy put in evaluation mode (``.eval()``), with its state as
constants. A plain callable ``fn(x)`` is taken as it is.

Batch-norm folding and the int8 simulation both rewrite a linen model's layers
while it runs, through Flax's method interception (``nn.intercept_methods``):

1. a *discovery* pass traces the model once, tagging each layer's output and each
   inference-mode ``nn.BatchNorm``'s input; a batch norm folds into the layer before
   it when it receives that layer's output directly, that output has no other use
   in the traced graph, each of the two runs exactly once, and the batch norm
   normalizes the layer's channel axis;
2. the *rewritten* pass recomputes each layer from substituted parameters
   (:func:`sepconv_jax.export._layers.apply_layer`: folded kernel and bias, fake
   quantization at unit boundaries) and turns each folded batch norm into the
   identity.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from jax.extend import core as jcore
from jax.interpreters import mlir

from sepconv_jax.export import _layers
from sepconv_jax.export._apply import (
    Hooks,
    InferenceModel,
    Rewrite,
    linen_call,
    nnx_call,
    subtree,
)
from sepconv_jax.export.fold import fold_batch_norm

__all__ = ["Discovery", "LayerInfo", "discover", "inference_function", "kind_of_model"]

Path = tuple[str, ...]

# ----------------------------------------------------------------------------- tags

_tag_p = jcore.Primitive("sepconv_export_tag")
_tag_p.def_impl(lambda x, *, tag: x)
_tag_p.def_abstract_eval(lambda x, *, tag: x)
mlir.register_lowering(_tag_p, lambda ctx, x, *, tag: [x])


def _tag(x: jax.Array, tag: tuple[str, Path]) -> jax.Array:
    return _tag_p.bind(x, tag=tag)


# ----------------------------------------------------------------------------- kinds


def kind_of_model(module: Any, variables: Any) -> str:
    """``"linen"``, ``"nnx"`` or ``"function"``, or a ``TypeError`` naming what was given."""
    if isinstance(module, nn.Module):
        if not isinstance(variables, Mapping):
            raise TypeError(
                f"`variables` must be the dict of collections that {type(module).__name__}"
                f".init returned (e.g. {{'params': ..., 'batch_stats': ...}}), got "
                f"{type(variables).__name__}"
            )
        if "params" not in variables:
            raise ValueError(
                f"`variables` has collections {sorted(variables)} but no 'params'; pass what "
                f"{type(module).__name__}.init returned"
            )
        return "linen"
    if isinstance(module, nnx.Module):
        if variables is not None:
            raise TypeError(
                f"an NNX module carries its own state: pass `variables=None`, got "
                f"{type(variables).__name__}"
            )
        return "nnx"
    if callable(module):
        if variables is not None:
            raise TypeError(
                f"a plain function is exported as `fn(x)`: pass `variables=None`, got "
                f"{type(variables).__name__}"
            )
        return "function"
    raise TypeError(
        f"`module` must be a flax.linen Module, a flax.nnx Module or a function of one array, "
        f"got {type(module).__name__}"
    )


# ----------------------------------------------------------------------------- discovery


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """A layer met while tracing: its path, module, units and call count."""

    path: Path
    module: nn.Module
    units: tuple[_layers.Unit, ...]
    calls: int


@dataclasses.dataclass(frozen=True)
class Discovery:
    """What one traced call of a linen model showed.

    Attributes:
      layers: every layer, in the order of first call.
      folds: the layer path each foldable batch norm folds into, ``{layer: bn}``.
      batch_norms: every ``nn.BatchNorm`` path with its module.
      unfolded: batch norms that stay, with the reason.
    """

    layers: tuple[LayerInfo, ...]
    folds: dict[Path, Path]
    batch_norms: dict[Path, nn.BatchNorm]
    unfolded: dict[Path, str]


class _Discover:
    def __init__(self) -> None:
        self.layer_calls: collections.Counter[Path] = collections.Counter()
        self.layers: dict[Path, tuple[nn.Module, tuple[_layers.Unit, ...]]] = {}
        self.bn_calls: collections.Counter[Path] = collections.Counter()
        self.bns: dict[Path, nn.BatchNorm] = {}
        self.candidates: dict[Path, Path] = {}
        self.outputs: dict[int, tuple[Path, Any]] = {}
        self.busy = False

    def __call__(self, next_fun, args, kwargs, context):
        if context.method_name != "__call__" or self.busy:
            return next_fun(*args, **kwargs)
        module = context.module
        if isinstance(module, nn.BatchNorm):
            return self._batch_norm(module, next_fun, args, kwargs)
        params = module.variables.get("params", {}) if module.scope is not None else {}
        units = _layers.layer_units(module, params)
        if units is None:
            return next_fun(*args, **kwargs)
        self.busy = True
        try:
            y = next_fun(*args, **kwargs)
        finally:
            self.busy = False
        path = tuple(module.path)
        self.layer_calls[path] += 1
        self.layers.setdefault(path, (module, units))
        if not isinstance(y, jax.Array):
            return y
        y = _tag(y, ("layer", path))
        self.outputs[id(y)] = (path, y)
        return y

    def _batch_norm(self, module, next_fun, args, kwargs):
        path = tuple(module.path)
        self.bn_calls[path] += 1
        self.bns.setdefault(path, module)
        running = nn.merge_param(
            "use_running_average", module.use_running_average, kwargs.get("use_running_average")
        )
        x = args[0] if args else kwargs.get("x")
        entry = self.outputs.get(id(x))
        if running and entry is not None and entry[1] is x:
            self.candidates[path] = entry[0]
            x = _tag(x, ("bn", path))
            if args:
                args = (x, *args[1:])
            else:
                kwargs = dict(kwargs, x=x)
        return next_fun(*args, **kwargs)


def _all_jaxprs(jaxpr: jcore.Jaxpr):
    yield jaxpr
    for eqn in jaxpr.eqns:
        for sub in jcore.jaxprs_in_params(eqn.params):
            yield from _all_jaxprs(sub)


def _tag_uses(closed: jcore.ClosedJaxpr) -> dict[Path, tuple[list[jcore.JaxprEqn], Any]]:
    """For each tagged layer output: the equations that use it, and its aval."""
    found: dict[Path, tuple[list[jcore.JaxprEqn], Any]] = {}
    for jaxpr in _all_jaxprs(closed.jaxpr):
        uses: dict[Any, list[Any]] = collections.defaultdict(list)
        for eqn in jaxpr.eqns:
            for v in eqn.invars:
                if isinstance(v, jcore.Var):
                    uses[v].append(eqn)
        for v in jaxpr.outvars:
            if isinstance(v, jcore.Var):
                uses[v].append(None)  # returned: a use the fold cannot see
        for eqn in jaxpr.eqns:
            if eqn.primitive is _tag_p and eqn.params["tag"][0] == "layer":
                out = eqn.outvars[0]
                found[eqn.params["tag"][1]] = (uses[out], out.aval)
    return found


def discover(module: nn.Module, variables: Mapping[str, Any], example: Any) -> Discovery:
    """Traces ``module`` once and finds its layers and the batch norms that fold.

    Args:
      module: a linen model or layer.
      variables: its variables.
      example: an input (array or :class:`jax.ShapeDtypeStruct`).

    Returns:
      The :class:`Discovery`.
    """
    state = _Discover()
    call = linen_call(module, variables)

    def traced(x):
        with nn.intercept_methods(state):
            return call(x)

    closed = jax.make_jaxpr(traced)(example)
    uses = _tag_uses(closed)
    folds: dict[Path, Path] = {}
    unfolded: dict[Path, str] = {}
    for bn_path in state.bns:
        layer_path = state.candidates.get(bn_path)
        reason = _fold_refusal(state, uses, bn_path, layer_path)
        if reason is not None:
            unfolded[bn_path] = reason
        elif layer_path is not None:  # always: no layer is a refusal
            folds[layer_path] = bn_path
    layers = tuple(
        LayerInfo(path, m, units, state.layer_calls[path])
        for path, (m, units) in state.layers.items()
    )
    return Discovery(layers, folds, dict(state.bns), unfolded)


def _fold_refusal(state: _Discover, uses, bn_path: Path, layer_path: Path | None) -> str | None:
    """Why the batch norm at ``bn_path`` does not fold, or ``None`` when it does."""
    bn = state.bns[bn_path]
    running = bn.use_running_average
    if layer_path is None:
        if running is False:
            return "it normalizes with batch statistics (training mode)"
        return "its input is not a convolution or dense layer's output"
    if state.bn_calls[bn_path] != 1 or state.layer_calls[layer_path] != 1:
        return "the batch norm or its layer runs more than once (shared weights)"
    eqns, aval = uses[layer_path]
    is_bn_tag = [
        e is not None and e.primitive is _tag_p and e.params["tag"] == ("bn", bn_path) for e in eqns
    ]
    if len(eqns) != 1 or not is_bn_tag[0]:
        return "the layer's output has other uses besides the batch norm"
    layer = state.layers[layer_path][0]
    given = bn.axis if isinstance(bn.axis, tuple | list) else (bn.axis,)
    axes = tuple(a % len(aval.shape) for a in given)
    if axes != (_layers.output_channel_axis(layer, len(aval.shape)),):
        return f"it normalizes axes {axes}, not the layer's channel axis"
    return None


# ----------------------------------------------------------------------------- rewriting


def folded_parameters(
    variables: Mapping[str, Any], discovery: Discovery
) -> dict[Path, dict[str, Any]]:
    """The parameters of every layer that a batch norm folds into, folded."""
    out: dict[Path, dict[str, Any]] = {}
    layers = {info.path: info for info in discovery.layers}
    for layer_path, bn_path in discovery.folds.items():
        info = layers[layer_path]
        bn = discovery.batch_norms[bn_path]
        params = dict(subtree(variables["params"], layer_path))
        bn_params = subtree(variables["params"], bn_path)
        stats = subtree(variables["batch_stats"], bn_path)
        unit = info.units[-1]  # the batch norm sees the last unit's output
        kernel, bias = fold_batch_norm(
            params[unit.kernel],
            params.get(unit.bias),
            mean=stats["mean"],
            var=stats["var"],
            scale=bn_params.get("scale") if bn.use_scale else None,
            offset=bn_params.get("bias") if bn.use_bias else None,
            epsilon=bn.epsilon,
        )
        params[unit.kernel] = jnp.asarray(kernel)
        params[unit.bias] = jnp.asarray(bias)
        out[layer_path] = params
    return out


def _no_hooks(path: Path, module: nn.Module) -> None:
    del path, module


def inference_function(
    module: Any,
    variables: Any,
    example: Any,
    *,
    fold_batch_norm: bool = True,
    hooks: Hooks = _no_hooks,
    discovery: Discovery | None = None,
) -> Callable[[Any], Any]:
    """The model as a pure function ``f(x)`` in inference mode.

    Args:
      module, variables: a linen model and its variables, an NNX module and ``None``,
        or a function of one array and ``None``.
      example: an input array or :class:`jax.ShapeDtypeStruct`.
      fold_batch_norm: fold each inference-mode batch norm into the layer before it
        (linen models).
      hooks: ``hooks(path, layer)`` returns the unit hook of a layer, or ``None``.
      discovery: a :func:`discover` result to reuse.

    Returns:
      ``f(x)``.
    """
    if isinstance(module, InferenceModel):
        return lambda x: module.apply(variables, x)
    kind = kind_of_model(module, variables)
    if kind == "function":
        return module
    if kind == "nnx":
        return nnx_call(module)
    call = linen_call(module, variables)
    if not fold_batch_norm and hooks is _no_hooks:
        return call
    params: dict = {}
    identities: set = set()
    if fold_batch_norm:
        if discovery is None:
            discovery = discover(module, variables, example)
        params = folded_parameters(variables, discovery)
        identities = set(discovery.folds.values())
    rewrite = Rewrite(params, identities, hooks)

    def rewritten(x):
        with nn.intercept_methods(rewrite):
            return call(x)

    return rewritten
