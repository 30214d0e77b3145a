"""One forward per block and network, built as flax.linen and as flax.nnx from the same code.

A block or model is a linen class (its fields are its options, checked when it is
constructed) and one function ``forward(config, b, x)`` written over the small
:class:`Builder` interface: ``b.conv(name, x, ...)``, ``b.batch_norm(name, x, ...)``,
``b.block(name, BlockClass, x, **fields)``, ... each returning the layer's output.

* :class:`LinenBuilder` creates each layer inline under its name in the linen
  module's ``nn.compact`` method and calls it.
* The NNX class of the same name (:func:`nnx_class`) runs the forward twice: once
  when it is built, under ``jax.eval_shape`` with a :class:`_Recorder` that only
  notes each layer and its input width (no parameter is made and no layer is run),
  after which the layers are built from those explicit widths; and on every call,
  with a :class:`_Caller` that calls the layers built.

So the two APIs have the same layers under the same names: their parameter and
batch-statistics trees are identical by construction, and every option of the linen
class (``model_axis`` included) reaches both.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from sepconv_jax import _spec
from sepconv_jax.models import _common


def numerics(config: _common.Numerics) -> dict[str, Any]:
    """The numerics fields of ``config``, for a block it builds."""
    keys = ("dtype", "param_dtype", "precision", "impl")
    return {k: getattr(config, k) for k in keys}


def _recipe(kind: str, config: Any, *args: Any, **kw: Any) -> tuple[Any, Any, int | None, dict]:
    """(linen class, NNX class, output width or None, options both take) of one layer.

    The linen class takes the width as ``features=`` and a ``name``; the NNX class
    takes the input width and the output width first, and ``rngs``.
    """
    from sepconv_jax import linen as ours_linen
    from sepconv_jax import nnx as ours_nnx

    dt = {"dtype": config.dtype, "param_dtype": config.param_dtype}
    num = {**dt, "precision": config.precision}
    if kind == "conv":
        features, k, s, padding, use_bias = args
        kw = {"kernel_size": (k, k), "strides": (s, s), "padding": padding, "use_bias": use_bias}
        return nn.Conv, nnx.Conv, features, {**kw, **num}
    if kind == "depthwise":
        k, s, padding, multiplier, use_bias, axis = args
        kw = {"kernel_size": (k, k), "strides": (s, s), "padding": padding,
              "depth_multiplier": multiplier, "use_bias": use_bias, "channel_axis": axis}  # fmt: skip
        kw |= {**num, "impl": config.impl}
        return ours_linen.DepthwiseConv, ours_nnx.DepthwiseConv, None, kw
    if kind == "pointwise":
        features, use_bias, in_axis, out_axis = args
        kw = {"use_bias": use_bias, "in_axis": in_axis, "out_axis": out_axis}
        return ours_linen.PointwiseConv, ours_nnx.PointwiseConv, features, {**kw, **num}
    if kind == "separable":
        options = {"kernel_size": (3, 3), "padding": "SAME", "use_bias": False, **kw}
        return (ours_linen.SeparableConv, ours_nnx.SeparableConv, args[0],
                {**options, **num, "impl": config.impl})  # fmt: skip
    if kind == "batch_norm":
        momentum, epsilon = args
        return nn.BatchNorm, nnx.BatchNorm, None, {"momentum": momentum, "epsilon": epsilon, **dt}
    if kind == "layer_norm":
        kw = {"epsilon": args[0], "use_fast_variance": False, **dt}
        return nn.LayerNorm, nnx.LayerNorm, None, kw
    if kind == "dense":
        return nn.Dense, nnx.Linear, args[0], num
    raise ValueError(f"unknown layer kind {kind!r}")


class Builder:
    """The operations a forward builds from; each takes the layer's input, returns its output.

    Every layer method notes one layer of a kind of :func:`_recipe` under ``name``;
    :class:`LinenBuilder`, the NNX recorder and the NNX caller say how it is made or
    run. ``building`` is True only while the NNX side notes the layers (inputs then
    have size 1 along every axis but the channels: skip checks of spatial sizes).
    ``train`` is the mode (``None`` on the NNX side of an image model: each layer's
    own mode, set by ``.train()`` / ``.eval()``), ``decode`` whether a causal model
    streams.
    """

    building = False
    config: Any
    train: bool | None
    decode: bool

    def _layer(self, kind: str, name: str, x: jax.Array, *args: Any, **kw: Any) -> jax.Array:
        raise NotImplementedError

    def conv(
        self, name: str, x: jax.Array, features: int, kernel_size: int, strides: int,
        padding: Any, use_bias: bool = False,
    ) -> jax.Array:  # fmt: skip
        """A standard square convolution (``flax.linen.Conv`` / ``flax.nnx.Conv``)."""
        return self._layer("conv", name, x, features, kernel_size, strides, padding, use_bias)

    def depthwise(
        self, name: str, x: jax.Array, kernel_size: int, strides: int, padding: Any,
        multiplier: int = 1, use_bias: bool = False, channel_axis: str | None = None,
    ) -> jax.Array:  # fmt: skip
        """A square depthwise convolution (our ``DepthwiseConv``)."""
        args = (kernel_size, strides, padding, multiplier, use_bias, channel_axis)
        return self._layer("depthwise", name, x, *args)

    def pointwise(
        self, name: str, x: jax.Array, features: int, use_bias: bool = False,
        in_axis: str | None = None, out_axis: str | None = None,
    ) -> jax.Array:  # fmt: skip
        """A 1x1 convolution (our ``PointwiseConv``)."""
        return self._layer("pointwise", name, x, features, use_bias, in_axis, out_axis)

    def separable(self, name: str, x: jax.Array, features: int, **options: Any) -> jax.Array:
        """Our ``SeparableConv``: 3x3 ``SAME`` without bias unless ``options`` say otherwise."""
        return self._layer("separable", name, x, features, **options)

    def batch_norm(self, name: str, x: jax.Array, momentum: float, epsilon: float) -> jax.Array:
        """Batch norm in Keras' convention (``momentum`` weighs the old running value)."""
        return self._layer("batch_norm", name, x, momentum, epsilon)

    def layer_norm(self, name: str, x: jax.Array, epsilon: float) -> jax.Array:
        """Layer norm over the channels, the variance as the mean of squared deviations."""
        return self._layer("layer_norm", name, x, epsilon)

    def dense(self, name: str, x: jax.Array, features: int) -> jax.Array:
        """A dense layer with bias."""
        return self._layer("dense", name, x, features)

    def dropout(self, name: str, x: jax.Array, rate: float, per_sample: bool = False) -> jax.Array:
        """Dropout of ``rate`` (none when 0); ``per_sample`` drops whole samples."""
        dims = tuple(range(1, x.ndim)) if per_sample else ()
        return x if rate <= 0 else self._dropout(name, x, rate, dims)

    def _dropout(self, name: str, x: jax.Array, rate: float, dims: tuple[int, ...]) -> jax.Array:
        raise NotImplementedError

    def layer_scale(self, name: str, x: jax.Array, init: float) -> jax.Array:
        """``x`` times a learned per-channel scale, initialized to ``init``."""
        raise NotImplementedError

    def block(self, name: str, cls: type[Any], x: jax.Array, **fields: Any) -> jax.Array:
        """The block ``cls(**fields)`` (with this builder's numerics) under ``name``."""
        raise NotImplementedError

    def cache(self, init: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The streaming state named in ``init`` (``init`` at a stream's start)."""
        raise NotImplementedError

    def update_cache(self, values: dict[str, jax.Array]) -> None:
        """Stores the streaming state ``values``."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- linen


class LinenBuilder(Builder):
    """Creates each layer inline, under its name, in ``module``'s compact method."""

    def __init__(self, module: _common.Numerics, train: bool, decode: bool = False) -> None:
        self.m, self.config, self.train, self.decode = module, module, train, decode

    def _layer(self, kind: str, name: str, x: jax.Array, *args: Any, **kw: Any) -> jax.Array:
        cls, _, width, options = _recipe(kind, self.m, *args, **kw)
        layer = cls(**options, **({} if width is None else {"features": width}), name=name)
        if kind == "batch_norm":
            return layer(x, use_running_average=not self.train)
        return layer(x, decode=True) if self.decode and kind == "separable" else layer(x)

    def _dropout(self, name, x, rate, dims):
        return nn.Dropout(rate, broadcast_dims=dims, deterministic=not self.train, name=name)(x)

    def layer_scale(self, name, x, init):
        c = x.shape[-1]
        gamma = self.m.param(name, nn.initializers.constant(init), (c,), self.m.param_dtype)
        return x * gamma.astype(x.dtype).reshape((1,) * (x.ndim - 1) + (c,))

    def block(self, name, cls, x, **fields):
        child = cls(**fields, **numerics(self.m), name=name)
        return child(x, self.train, decode=True) if self.decode else child(x, self.train)

    def cache(self, init: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The values of the ``"cache"`` variables named in ``init`` (``init`` when new)."""
        if not self.m.is_mutable_collection("cache"):
            raise ValueError(
                f"`decode=True` reads and updates {type(self.m).__name__}'s `cache` collection, "
                f"which this call cannot change: call `apply(variables, x, decode=True, "
                f"mutable=['cache'])`"
            )
        return {k: self.m.variable("cache", k, lambda v=v: v).value for k, v in init.items()}

    def update_cache(self, values: dict[str, jax.Array]) -> None:
        if not self.m.is_initializing():
            for k, v in values.items():
                self.m.put_variable("cache", k, v)


class Linen(_common.Numerics):
    """A linen block or model whose ``__call__`` is its ``forward`` over a :class:`LinenBuilder`."""

    forward: ClassVar[Any]  # Forward: (config, builder, x) -> y

    @nn.compact
    def __call__(self, x: ArrayLike, train: bool = False) -> jax.Array:
        """``(batch, *spatial, channels)`` -> the block's or model's output."""
        return type(self).forward(self, LinenBuilder(self, train), jnp.asarray(x))


class LinenStream(Linen):
    """A linen model or block over time that streams: ``decode=True`` (``mutable=["cache"]``)."""

    @nn.compact
    def __call__(self, x: ArrayLike, train: bool = False, decode: bool = False) -> jax.Array:
        """``(batch, time, channels)`` -> the output; ``decode=True`` streams a chunk."""
        return type(self).forward(self, LinenBuilder(self, train, decode), jnp.asarray(x))


# ----------------------------------------------------------------------------- NNX


_ABSTRACT = contextvars.ContextVar("abstract_build", default=False)


@contextlib.contextmanager
def abstract_build() -> Iterator[None]:
    """Within it, NNX models and blocks are built with abstract parameters.

    Each layer is built under its own ``nnx.eval_shape`` (``jax.ShapeDtypeStruct``
    in place of its parameters), so no initializer runs. Dropout streams are real.
    """
    token = _ABSTRACT.set(True)
    try:
        yield
    finally:
        _ABSTRACT.reset(token)


@dataclasses.dataclass
class _Layer:
    """One layer noted while building: its kind, input width and options."""

    path: tuple[str, ...]
    kind: str
    in_features: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class _Recorder(Builder):
    """Notes every layer and its input width; returns zeros of the layer's output shape."""

    building = True
    decode = False

    def __init__(self, config: Any, path: tuple[str, ...], layers: list[_Layer]) -> None:
        self.config, self.path, self.layers = config, path, layers
        self.train: bool | None = False

    def _note(self, kind: str, name: str, x: jax.Array, out: int | None, *args: Any, **kw: Any):
        self.layers.append(_Layer((*self.path, name), kind, int(x.shape[-1]), args, kw))
        return x if out is None else jnp.zeros((*x.shape[:-1], out), x.dtype)

    def _layer(self, kind: str, name: str, x: jax.Array, *args: Any, **kw: Any) -> jax.Array:
        _, _, width, options = _recipe(kind, self.config, *args, **kw)
        if kind == "depthwise":
            width = x.shape[-1] * options["depth_multiplier"]
        return self._note(kind, name, x, width, *args, **kw)

    def _dropout(self, name, x, rate, dims):
        return self._note("dropout", name, x, None, rate, dims)

    def layer_scale(self, name, x, init):
        return self._note("layer_scale", name, x, None, init)

    def block(self, name, cls, x, **fields):
        config = cls(**fields, **numerics(self.config), parent=None)
        self.layers.append(_Layer((*self.path, name), "block", int(x.shape[-1]), (cls,), fields))
        return cls.forward(config, _Recorder(config, (*self.path, name), []), x)


def _make_layer(layer: _Layer, config: Any, rngs: nnx.Rngs) -> Any:
    """The NNX layer ``layer`` notes, with ``config``'s numerics."""
    c, a, kw = layer.in_features, layer.args, layer.kwargs
    if layer.kind == "block":
        return NNX_CLASSES[a[0]](c, **kw, **numerics(config), rngs=rngs)
    if layer.kind == "dropout":
        return nnx.Dropout(a[0], broadcast_dims=a[1], rngs=rngs)
    if layer.kind == "layer_scale":
        return nnx.Param(jnp.full((c,), a[0], config.param_dtype))
    _, cls, width, options = _recipe(layer.kind, config, *a, **kw)
    widths = (c,) if width is None else (c, width)
    if _ABSTRACT.get():
        return nnx.eval_shape(lambda: cls(*widths, **options, rngs=nnx.Rngs(0)))
    return cls(*widths, **options, rngs=rngs)


class _Scope(nnx.Module):
    """A container of named layers: a level of the parameter tree with no forward of its own."""


def _record(config: Any, in_features: int, rank: int) -> list[_Layer]:
    """The layers ``config``'s forward makes on an input of ``in_features`` channels."""
    layers: list[_Layer] = []
    x = jax.ShapeDtypeStruct((1,) * (rank - 1) + (in_features,), jnp.float32)
    jax.eval_shape(lambda x: type(config).forward(config, _Recorder(config, (), layers), x), x)
    return layers


def input_kernel(config: Any, rank: int) -> tuple[tuple[str, ...], Callable[[Any], int]]:
    """The path of the kernel that reads the input, and how its shape gives the input width."""
    prefix: tuple[str, ...] = ()
    width = len(getattr(config, "input_mean", ())) or 1  # a width the preprocessing takes
    layer = _record(config, width, rank)[0]
    while layer.kind == "block":
        prefix += layer.path
        config = layer.args[0](**layer.kwargs, **numerics(config), parent=None)
        layer = _record(config, 1, rank)[0]
    path = prefix + layer.path
    kind, multiplier = layer.kind, layer.args[3] if layer.kind == "depthwise" else 1
    if kind == "conv":
        return (*path, "kernel"), lambda shape: int(shape[-2])
    if kind == "pointwise":
        return (*path, "kernel"), lambda shape: int(shape[0])
    name = "depthwise_kernel" if kind == "separable" else "kernel"
    return (*path, name), lambda shape: int(shape[-1]) // multiplier


def _build(module: nnx.Module, config: Any, in_features: int, rank: int, rngs: nnx.Rngs) -> None:
    """Notes ``config``'s layers on an input of ``in_features`` channels, then builds them."""
    for layer in _record(config, in_features, rank):
        owner = module
        for part in layer.path[:-1]:
            if not hasattr(owner, part):
                setattr(owner, part, _Scope())
            owner = getattr(owner, part)
        setattr(owner, layer.path[-1], _make_layer(layer, config, rngs))


class _Caller(Builder):
    """Calls the layers built by :func:`_build`, by name."""

    def __init__(self, module: nnx.Module, config: Any, train: bool | None, decode: bool) -> None:
        self.m, self.config, self.train, self.decode = module, config, train, decode

    def _layer(self, kind: str, name: str, x: jax.Array, *args: Any, **kw: Any) -> jax.Array:
        layer = getattr(self.m, name)
        if kind == "batch_norm":
            return layer(x, use_running_average=None if self.train is None else not self.train)
        return layer(x, decode=True) if self.decode and kind == "separable" else layer(x)

    def _dropout(self, name, x, rate, dims):
        return getattr(self.m, name)(
            x, deterministic=None if self.train is None else not self.train
        )

    def layer_scale(self, name, x, init):
        gamma = getattr(self.m, name)[...].astype(x.dtype)
        return x * gamma.reshape((1,) * (x.ndim - 1) + (x.shape[-1],))

    def block(self, name, cls, x, **fields):
        return getattr(self.m, name)._run(x, self.train, self.decode)

    def cache(self, init: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The values of the ``nnx.Cache`` attributes named in ``init`` (made by ``init_cache``)."""
        if any(getattr(self.m, k, None) is None for k in init):
            raise ValueError(
                f"`decode=True` needs the {type(self.m).__name__}'s cache: call "
                f"`init_cache(input_shape)` with the shape of a chunk before streaming"
            )
        return {k: getattr(self.m, k)[...] for k in init}

    def update_cache(self, values: dict[str, jax.Array]) -> None:
        for k, v in values.items():
            getattr(self.m, k)[...] = v


class NNXModule(nnx.Module):
    """What every generated NNX block and model shares: options from the linen class,
    layers built from the linen forward (:func:`_build`), and that forward as its call.

    The options are kept as attributes of the same names. Like ``flax.nnx.BatchNorm``
    and ``flax.nnx.Dropout``, a module is built in training mode; ``.eval()`` switches
    it to inference (running statistics, no dropout) and ``.train()`` back.
    """

    linen_class: ClassVar[type[Any]]
    rank: ClassVar[int] = 4

    @classmethod
    def option_names(cls) -> list[str]:
        """The linen class's fields: the options this class takes."""
        return [
            f.name
            for f in dataclasses.fields(cls.linen_class)
            if f.init and f.name not in ("parent", "name")
        ]

    def _setup(self, config: Any, in_features: Any, rngs: Any) -> None:
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"`rngs` must be a flax.nnx.Rngs, got {type(rngs).__name__}")
        self.in_features = _spec.check_positive_int(in_features, "in_features")
        self.config = config
        _build(self, config, self.in_features, self.rank, rngs)
        for key in self.option_names():  # a layer of the same name wins
            value = getattr(config, key)
            if not hasattr(self, key):
                setattr(self, key, tuple(value) if isinstance(value, list) else value)

    def _run(self, x: ArrayLike, train: bool | None, decode: bool = False) -> jax.Array:
        x = jnp.asarray(x)
        if x.ndim == self.rank and x.shape[-1] != self.in_features:
            raise ValueError(
                f"`x` has {x.shape[-1]} channels but this {type(self).__name__} was built with "
                f"in_features={self.in_features}"
            )
        return self.linen_class.forward(self.config, _Caller(self, self.config, train, decode), x)


class NNXBlock(NNXModule):
    """An NNX block: input width first, then the linen block's fields, and ``rngs=``."""

    def __init__(self, in_features: int, *args: Any, rngs: nnx.Rngs, **options: Any) -> None:
        self._setup(self.linen_class(*args, **options), in_features, rngs)

    def __call__(self, x: ArrayLike) -> jax.Array:
        """The linen block's forward, in this block's mode (``.train()`` / ``.eval()``)."""
        return self._run(x, None)


class NNXModel(NNXModule):
    """An NNX model: the linen model's options, ``in_features`` (image channels) and ``rngs=``."""

    def __init__(self, *args: Any, in_features: int = 3, rngs: nnx.Rngs, **options: Any) -> None:
        self._setup(self.linen_class(*args, **options), in_features, rngs)

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Classifies images ``(batch, height, width, in_features)``, in this model's mode.

        Returns:
          ``(batch, num_classes)``, or the features when ``include_top=False``.
        """
        return self._run(x, None)


#: linen class -> its NNX class, for every generated pair.
NNX_CLASSES: dict[type[Any], type[Any]] = {}


def nnx_class(
    linen_class: type[Any], module: str, base: type[NNXModule] = NNXModel, doc: str | None = None
) -> type[Any]:
    """The NNX class of ``linen_class`` (same name, same options), created once."""
    if linen_class not in NNX_CLASSES:
        name = linen_class.__name__
        text = doc or f":class:`{linen_class.__module__}.{name}` as an NNX module (same options)."
        namespace = {"linen_class": linen_class, "__doc__": text, "__module__": module}
        NNX_CLASSES[linen_class] = type(name, (base,), namespace)
    return NNX_CLASSES[linen_class]


def variant(family: type[Any], arch: Any) -> type[Any]:
    """The linen class of a registry row: a subclass of ``family`` with the row's defaults.

    ``arch`` is a :class:`sepconv_jax.models.spec.Arch`; a default of a field changes
    the field's default, any other (``variant``) is a class attribute.
    """
    types = {f.name: f.type for f in dataclasses.fields(family)}
    namespace: dict[str, Any] = {
        "__module__": family.__module__,
        "__qualname__": arch.class_name,
        "__annotations__": {k: types[k] for k in arch.defaults if k in types},
        "__doc__": f"{arch.doc}\n\n    All attributes as :class:`{family.__name__}`.",
        **arch.defaults,
    }
    if hasattr(family, "default_size"):
        namespace["default_size"] = arch.default_size
    return type(arch.class_name, (family,), namespace)
