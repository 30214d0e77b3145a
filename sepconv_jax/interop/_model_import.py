"""What the whole-model importers share: weights collected by path, and the model options
read from an imported model (for :mod:`sepconv_jax.interop.keras_models` and
:mod:`sepconv_jax.interop.timm`)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from sepconv_jax.models import spec
from sepconv_jax.models.blocks import BN_EPSILON, Stride2Padding
from sepconv_jax.models.efficientnet import efficientnet_blocks

Path = tuple[str, ...]
Variables = dict[str, Any]

#: Keras activation names of a classifier -> the function applied to our logits.
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array] | None] = {
    "linear": None,
    "softmax": jax.nn.softmax,
    "sigmoid": jax.nn.sigmoid,
}


# ----------------------------------------------------------------------------- layers


def _weights(layer: Any) -> dict[str, np.ndarray]:
    return {w.name: np.asarray(getattr(w, "value", w)) for w in layer.weights}


def _class(layer: Any) -> str:
    return type(layer).__name__


def _activation_name(value: Any) -> str:
    if value is None:
        return "linear"
    if isinstance(value, str):
        return value
    return getattr(value, "__name__", repr(value))


class _Collector:
    """Accumulates converted weights by our module path, tracking which layers were used."""

    def __init__(self, keras_model: Any) -> None:
        # nested models (ConvNeXt's stem and downsampling are Sequential) are flattened
        self.layers: dict[str, Any] = {}
        pending = list(keras_model.layers)
        while pending:
            layer = pending.pop(0)
            if hasattr(layer, "layers") and _class(layer) in ("Sequential", "Functional"):
                pending = list(layer.layers) + pending
            else:
                self.layers[layer.name] = layer
        self.used: set[str] = set()
        self.params: dict[Path, np.ndarray] = {}
        self.stats: dict[Path, np.ndarray] = {}

    def layer(self, name: str) -> Any:
        if name not in self.layers:
            raise ValueError(
                f"`keras_model` has no layer {name!r}; it does not look like an unmodified "
                f"keras.applications model of the recognized kind"
            )
        self.used.add(name)
        return self.layers[name]

    def _bias(self, w: dict[str, np.ndarray], path: Path) -> None:
        if "bias" in w:
            self.params[(*path, "bias")] = w["bias"]

    def conv(self, name: str, path: Path) -> None:
        """A standard ``Conv2D`` -> ``flax.linen.Conv``."""
        w = _weights(self.layer(name))
        self.params[(*path, "kernel")] = w["kernel"]
        self._bias(w, path)

    def pointwise(self, name: str, path: Path) -> None:
        """A 1x1 ``Conv2D`` -> our ``PointwiseConv`` (or a ``Dense``)."""
        w = _weights(self.layer(name))
        kernel = w["kernel"]
        if kernel.shape[:2] != (1, 1):
            raise ValueError(f"layer {name!r} has a {kernel.shape[:2]} kernel, expected 1x1")
        self.params[(*path, "kernel")] = kernel.reshape(kernel.shape[2:])
        self._bias(w, path)

    def depthwise(self, name: str, path: Path) -> None:
        """``DepthwiseConv2D`` ``(kh, kw, C, M)`` -> our ``(kh, kw, 1, C * M)``."""
        w = _weights(self.layer(name))
        kh, kw, c, m = w["kernel"].shape
        self.params[(*path, "kernel")] = w["kernel"].reshape(kh, kw, 1, c * m)
        self._bias(w, path)

    def separable(self, name: str, path: Path) -> None:
        """``SeparableConv2D`` -> our ``SeparableConv``."""
        w = _weights(self.layer(name))
        kh, kw, c, m = w["depthwise_kernel"].shape
        self.params[(*path, "depthwise_kernel")] = w["depthwise_kernel"].reshape(kh, kw, 1, c * m)
        pointwise = w["pointwise_kernel"]
        self.params[(*path, "pointwise_kernel")] = pointwise.reshape(pointwise.shape[2:])
        self._bias(w, path)

    def layer_norm(self, name: str, path: Path, epsilon: float) -> None:
        """``LayerNormalization`` -> ``flax.linen.LayerNorm``, checking its epsilon."""
        layer = self.layer(name)
        if not np.isclose(layer.get_config()["epsilon"], epsilon, rtol=1e-6, atol=0):
            raise ValueError(f"layer norm {name!r} has epsilon {layer.epsilon}; expected {epsilon}")
        w = _weights(layer)
        self.params[(*path, "scale")] = w["gamma"]
        self.params[(*path, "bias")] = w["beta"]

    def dense(self, name: str, path: Path) -> None:
        w = _weights(self.layer(name))
        self.params[(*path, "kernel")] = w["kernel"]
        self._bias(w, path)

    def bn(self, name: str, path: Path) -> None:
        """``BatchNormalization`` -> ``flax.linen.BatchNorm``, checking its constants."""
        layer = self.layer(name)
        config = layer.get_config()
        if not np.isclose(config["epsilon"], BN_EPSILON, rtol=1e-6, atol=0):
            raise ValueError(
                f"batch norm {name!r} has epsilon {config['epsilon']}; the reference "
                f"architectures use Keras' 1e-3"
            )
        if not (config.get("center", True) and config.get("scale", True)):
            raise ValueError(f"batch norm {name!r} must have both `center` and `scale`")
        w = _weights(layer)
        self.params[(*path, "scale")] = w["gamma"]
        self.params[(*path, "bias")] = w["beta"]
        self.stats[(*path, "mean")] = w["moving_mean"]
        self.stats[(*path, "var")] = w["moving_variance"]

    def unused_weighted_layers(self) -> list[str]:
        return [
            name
            for name, layer in self.layers.items()
            if name not in self.used and layer.weights and _class(layer) != "Normalization"
        ]

    def variables(self) -> Variables:
        return variables_from_flat(self.params, self.stats)


def variables_from_flat(params: dict[Path, np.ndarray], stats: dict[Path, np.ndarray]) -> Variables:
    """``{"params": ..., "batch_stats": ...}`` from arrays keyed by module path."""
    out: Variables = {
        "params": traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in params.items()})
    }
    if stats:
        out["batch_stats"] = traverse_util.unflatten_dict(
            {k: jnp.asarray(v) for k, v in stats.items()}
        )
    return out


# ----------------------------------------------------------------------------- model options


def _spatial(keras_model: Any) -> tuple[int | None, int | None]:
    shape = tuple(keras_model.input_shape)
    if len(shape) != 4:
        raise ValueError(
            f"`keras_model` takes inputs of shape {shape}; expected images "
            f"(batch, height, width, channels)"
        )
    return shape[1], shape[2]


def _check_channels_last(keras_model: Any) -> None:
    for layer in keras_model.layers:
        data_format = getattr(layer, "data_format", None)
        if data_format is not None and data_format != "channels_last":
            raise ValueError(
                f"layer {layer.name!r} of `keras_model` uses data_format={data_format!r}; only "
                f"channels_last Keras models can be converted (build it with "
                f"keras.config.set_image_data_format('channels_last'))"
            )


def _stride2_padding(keras_model: Any) -> Stride2Padding:
    """``"same"`` when Keras knew the input size when building (its ``correct_pad``)."""
    height, width = _spatial(keras_model)
    return "fixed" if height is None or width is None else "same"


def _head_options(
    collector: _Collector,
    keras_model: Any,
    top: str,
    *,
    activation_layer: str | None = None,
    dropout: str | None = None,
) -> dict[str, Any]:
    """``include_top``, ``num_classes``, ``pooling``, ``classifier_activation``, dropout."""
    options: dict[str, Any] = {}
    if top in collector.layers:
        top_layer = collector.layers[top]
        options["include_top"] = True
        options["num_classes"] = int(_weights(top_layer)["kernel"].shape[-1])
        act_layer = top_layer if activation_layer is None else collector.layer(activation_layer)
        act = _activation_name(act_layer.get_config().get("activation"))
        if act not in _ACTIVATIONS:
            raise ValueError(
                f"the classifier of `keras_model` ends with activation {act!r}; "
                f"supported: {sorted(_ACTIVATIONS)}"
            )
        options["classifier_activation"] = _ACTIVATIONS[act]
        if dropout is not None:
            rate = 0.0
            if dropout in collector.layers:
                rate = float(collector.layer(dropout).get_config()["rate"])
            options["dropout_rate"] = rate
        return options
    options["include_top"] = False
    last = _class(keras_model.layers[-1])
    options["pooling"] = {"GlobalAveragePooling2D": "avg", "GlobalMaxPooling2D": "max"}.get(last)
    return options


def _named_alpha(keras_model: Any) -> float | None:
    """The ``alpha`` in a Keras application's name (``mobilenetv2_0.35_224``, ``..._None``)."""
    match = re.fullmatch(
        r"mobilenet(?:v2)?_(\d+\.\d+)_(?:\d+|None)", str(getattr(keras_model, "name", ""))
    )
    return float(match.group(1)) if match else None


def efficientnet_row(
    matches: Callable[[spec.Arch, list[tuple[str, dict[str, Any]]]], bool],
    padding: Stride2Padding,
    found: str,
) -> tuple[spec.Arch, list[tuple[str, dict[str, Any]]]]:
    """The EfficientNet row of the registry whose MBConv table (at the row's scaling,
    ``padding``, no stochastic depth) ``matches`` the imported model, and the table.

    Raises:
      ValueError: naming what the model has (``found``) when no B0-B7 matches.
    """
    for arch in (a for a in spec.ARCHS.values() if a.family == "efficientnet"):
        width, depth = arch.defaults["width_coefficient"], arch.defaults["depth_coefficient"]
        table = efficientnet_blocks(width, depth, 0.0, padding)
        if matches(arch, table):
            return arch, table
    raise ValueError(f"{found}, which no EfficientNet B0-B7 has")


def find_multiplier(
    widths_of: Callable[[float], tuple[int, ...]],
    observed: tuple[int, ...],
    bases: Iterable[int],
    preferred: float | None = None,
) -> float:
    """A width multiplier that reproduces the ``observed`` channel counts.

    ``preferred`` (the ``alpha`` in the Keras model's name) is returned when it
    gives those widths. Otherwise: the widths are piecewise-constant functions of
    the multiplier that change only at ``k / base`` and ``k / (0.9 * base)``; a
    multiplier strictly between two consecutive breakpoints stands for its whole
    interval.
    """
    if preferred is not None and widths_of(preferred) == observed:
        return preferred
    bases = sorted(set(bases))
    biggest = max(observed) + 16
    points = {0.0}
    for base in bases:
        for k in range(1, 2 * biggest + 1):
            points.add(k / base)
            points.add(k / (0.9 * base))
    ordered = sorted(points)
    candidates = [1.0]
    candidates += [(a + b) / 2 for a, b in itertools.pairwise(ordered)]
    candidates += ordered[1:]
    for alpha in candidates:
        if widths_of(alpha) == observed:
            # the shortest decimal that gives the same widths (0.25, not 0.2503)
            for digits in range(1, 8):
                if widths_of(round(alpha, digits)) == observed:
                    return round(alpha, digits)
            return float(alpha)
    raise ValueError(
        f"no width multiplier gives the channel counts of `keras_model` {observed}; it is not "
        f"an unmodified keras.applications model"
    )


def check_shapes(module: nn.Module, variables: Variables, input_shape: tuple[int, ...]) -> None:
    """Raises unless ``variables`` has exactly the tree and shapes ``module`` expects."""
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    expected = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)
    want = {k: v.shape for k, v in traverse_util.flatten_dict(dict(expected)).items()}
    got = {k: v.shape for k, v in traverse_util.flatten_dict(variables).items()}
    if want != got:
        missing = sorted("/".join(k) for k in want.keys() - got.keys())
        extra = sorted("/".join(k) for k in got.keys() - want.keys())
        wrong = sorted(
            f"{'/'.join(k)}: {got[k]} (expected {want[k]})"
            for k in want.keys() & got.keys()
            if want[k] != got[k]
        )
        raise ValueError(
            f"converted weights do not fit {type(module).__name__}: missing {missing[:5]}, "
            f"unexpected {extra[:5]}, wrong shapes {wrong[:5]}"
        )
