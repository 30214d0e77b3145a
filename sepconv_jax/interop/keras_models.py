"""Whole-model import from ``keras.applications``: a Keras model in, a Flax model out.

:func:`convert` recognizes the Keras applications ``MobileNet``, ``MobileNetV2``,
``MobileNetV3Large``, ``MobileNetV3Small`` (and their minimalistic forms),
``EfficientNetB0`` ... ``EfficientNetB7``, ``Xception`` and ``ConvNeXtTiny`` /
``Small`` / ``Base`` (any ``alpha``, ``depth_multiplier``,
``classes``, ``include_top``, ``pooling``, ``classifier_activation`` and input size
Keras accepts), builds the matching :mod:`sepconv_jax.models` module and copies every
weight into its ``params`` and ``batch_stats``, so that
``module.apply(variables, x, train=False)`` computes ``keras_model(x,
training=False)``. Keras is only needed to call it; nothing is downloaded.

Weight layouts (Keras -> ours):

* ``Conv2D`` kernel ``(kh, kw, in, out)``: unchanged (``flax.linen.Conv``); a 1x1
  ``Conv2D`` that is a pointwise step becomes ``(in, out)``.
* ``DepthwiseConv2D`` kernel ``(kh, kw, C, M)`` -> ``(kh, kw, 1, C * M)``.
* ``SeparableConv2D``: ``depthwise_kernel`` as above, ``pointwise_kernel``
  ``(1, 1, C * M, out)`` -> ``(C * M, out)``.
* ``BatchNormalization``: ``gamma``, ``beta`` -> ``params`` ``scale``, ``bias``;
  ``moving_mean``, ``moving_variance`` -> ``batch_stats`` ``mean``, ``var``.
* ``Dense``: unchanged; ``LayerNormalization``: ``gamma``, ``beta`` -> ``scale``,
  ``bias``; ConvNeXt's ``LayerScale`` -> ``layer_scale``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import numpy as np

from sepconv_jax import models
from sepconv_jax.interop._model_import import (
    Variables,
    _check_channels_last,
    _class,
    _Collector,
    _head_options,
    _named_alpha,
    _spatial,
    _stride2_padding,
    _weights,
    check_shapes,
    efficientnet_row,
    find_multiplier,
    variables_from_flat,
)
from sepconv_jax.models import mobilenet_v1 as mobilenet_v1_lib
from sepconv_jax.models import mobilenet_v2 as mobilenet_v2_lib
from sepconv_jax.models import mobilenet_v3 as mobilenet_v3_lib
from sepconv_jax.models import spec
from sepconv_jax.models._common import NORMALIZATION_EPSILON
from sepconv_jax.models.efficientnet import round_filters

__all__ = ["check_shapes", "convert", "find_multiplier", "variables_from_flat"]

# ----------------------------------------------------------------------------- per model


def _mobilenet_v1(keras_model: Any, c: _Collector) -> nn.Module:
    dw1 = c.layer("conv_dw_1").get_config()
    observed = (
        int(_weights(c.layer("conv1"))["kernel"].shape[-1]),
        *(int(_weights(c.layer(f"conv_pw_{i}"))["kernel"].shape[-1]) for i in range(1, 14)),
    )
    alpha = find_multiplier(
        mobilenet_v1_lib.mobilenet_v1_widths, observed, [32, 1024], _named_alpha(keras_model)
    )
    options = _head_options(
        c, keras_model, "conv_preds", activation_layer="predictions", dropout="dropout"
    )
    module = models.MobileNetV1(
        width_multiplier=alpha, depth_multiplier=int(dw1["depth_multiplier"]), **options
    )
    c.conv("conv1", ("conv1",))
    c.bn("conv1_bn", ("conv1_bn",))
    for i in range(1, 14):
        c.depthwise(f"conv_dw_{i}", (f"block{i}", "depthwise"))
        c.bn(f"conv_dw_{i}_bn", (f"block{i}", "depthwise_bn"))
        c.pointwise(f"conv_pw_{i}", (f"block{i}", "pointwise"))
        c.bn(f"conv_pw_{i}_bn", (f"block{i}", "pointwise_bn"))
    if module.include_top:
        c.pointwise("conv_preds", ("predictions",))
    return module


def _mobilenet_v2(keras_model: Any, c: _Collector) -> nn.Module:
    names = ["expanded_conv_"] + [f"block_{i}_" for i in range(1, 17)]
    observed = (
        int(_weights(c.layer("Conv1"))["kernel"].shape[-1]),
        *(int(_weights(c.layer(f"{n}project"))["kernel"].shape[-1]) for n in names),
        int(_weights(c.layer("Conv_1"))["kernel"].shape[-1]),
    )
    bases = [32, 1280, *(ch for _, ch, _, _ in mobilenet_v2_lib.STAGES)]
    alpha = find_multiplier(
        mobilenet_v2_lib.mobilenet_v2_widths, observed, bases, _named_alpha(keras_model)
    )
    options = _head_options(c, keras_model, "predictions")
    module = models.MobileNetV2(
        width_multiplier=alpha, stride2_padding=_stride2_padding(keras_model), **options
    )
    c.conv("Conv1", ("conv1",))
    c.bn("bn_Conv1", ("conv1_bn",))
    for i, name in enumerate(names):
        block = f"block{i}"
        if i > 0:
            c.pointwise(f"{name}expand", (block, "expand"))
            c.bn(f"{name}expand_BN", (block, "expand_bn"))
        c.depthwise(f"{name}depthwise", (block, "depthwise"))
        c.bn(f"{name}depthwise_BN", (block, "depthwise_bn"))
        c.pointwise(f"{name}project", (block, "project"))
        c.bn(f"{name}project_BN", (block, "project_bn"))
    c.pointwise("Conv_1", ("conv_last",))
    c.bn("Conv_1_bn", ("conv_last_bn",))
    if module.include_top:
        c.dense("predictions", ("predictions",))
    return module


def _affine_input(keras_model: Any, c: _Collector) -> tuple[np.ndarray, np.ndarray] | None:
    """The Rescaling/Normalization layers before the stem as ``x * a + b`` per channel."""
    channels = int(keras_model.input_shape[-1])
    a = np.ones(channels)
    b = np.zeros(channels)
    found = False
    for layer in keras_model.layers:
        kind = _class(layer)
        if kind == "InputLayer":
            continue
        if kind == "Rescaling":
            config = layer.get_config()
            scale = np.broadcast_to(np.asarray(config["scale"], np.float64), (channels,))
            offset = np.broadcast_to(np.asarray(config["offset"], np.float64), (channels,))
            a, b = a * scale, b * scale + offset
        elif kind == "Normalization":
            if getattr(layer, "invert", False):
                raise ValueError(f"layer {layer.name!r} inverts a normalization; not supported")
            mean = np.asarray(layer.mean, np.float64).reshape(-1)
            var = np.asarray(layer.variance, np.float64).reshape(-1)
            std = np.maximum(np.sqrt(var), NORMALIZATION_EPSILON)
            a, b = a / std, (b - mean) / std
        else:
            break
        c.used.add(layer.name)
        found = True
    return (a, b) if found else None


def _preprocessing(keras_model: Any, c: _Collector) -> dict[str, Any]:
    """EfficientNet: the input layers folded into ``input_mean`` / ``input_variance``.

    The chain is an affine map ``x * a + b`` per channel; ours is
    ``(x / 255 - mean) / sqrt(variance)``, so ``sqrt(variance) = 1 / (255 a)`` and
    ``mean = -b sqrt(variance)``.
    """
    affine = _affine_input(keras_model, c)
    if affine is None:
        return {"include_preprocessing": False}
    a, b = affine
    std = 1.0 / (255.0 * a)
    return {
        "include_preprocessing": True,
        "input_mean": tuple(float(v) for v in -b * std),
        "input_variance": tuple(float(v) for v in std**2),
    }


def _efficientnet(keras_model: Any, c: _Collector) -> nn.Module:
    """EfficientNetB0 ... B7: the variant whose stage depths and widths the model has."""
    stem = int(_weights(c.layer("stem_conv"))["kernel"].shape[-1])
    top = int(_weights(c.layer("top_conv"))["kernel"].shape[-1])
    present = {name.split("_")[0] for name in c.layers if re.fullmatch(r"block\d+[a-z]_.*", name)}

    def matches(arch: spec.Arch, table: list[tuple[str, dict[str, Any]]]) -> bool:
        width = arch.defaults["width_coefficient"]
        widths = (round_filters(32, width), round_filters(1280, width))
        return {name for name, _ in table} == present and widths == (stem, top)

    found = (
        f"`keras_model` has MBConv blocks {sorted(present)[:4]}... and stem and head "
        f"widths {(stem, top)}"
    )
    arch, table = efficientnet_row(matches, "same", found)
    names = [name for name, _ in table]
    drop_connect_rate = 0.0
    for index, name in enumerate(names):
        if f"{name}_drop" in c.layers and index > 0:
            rate = float(c.layer(f"{name}_drop").get_config()["rate"])
            drop_connect_rate = rate * len(names) / index
            break
    options = _head_options(c, keras_model, "predictions", dropout="top_dropout")
    module = models.from_name(
        arch.name,
        drop_connect_rate=drop_connect_rate,
        stride2_padding=_stride2_padding(keras_model),
        **_preprocessing(keras_model, c),
        **options,
    )
    c.conv("stem_conv", ("stem_conv",))
    c.bn("stem_bn", ("stem_bn",))
    for name in names:
        if f"{name}_expand_conv" in c.layers:
            c.pointwise(f"{name}_expand_conv", (name, "expand"))
            c.bn(f"{name}_expand_bn", (name, "expand_bn"))
        c.depthwise(f"{name}_dwconv", (name, "depthwise"))
        c.bn(f"{name}_bn", (name, "depthwise_bn"))
        c.pointwise(f"{name}_se_reduce", (name, "se", "reduce"))
        c.pointwise(f"{name}_se_expand", (name, "se", "expand"))
        c.pointwise(f"{name}_project_conv", (name, "project"))
        c.bn(f"{name}_project_bn", (name, "project_bn"))
    c.pointwise("top_conv", ("top_conv",))
    c.bn("top_bn", ("top_bn",))
    if module.include_top:
        c.dense("predictions", ("predictions",))
    return module


def _mobilenet_v3(keras_model: Any, c: _Collector) -> nn.Module:
    """MobileNetV3Large / Small: variant by depth, alpha by widths, minimalistic by SE."""
    prefixes = ["expanded_conv_"]
    while f"expanded_conv_{len(prefixes)}_project" in c.layers:
        prefixes.append(f"expanded_conv_{len(prefixes)}_")
    variant: spec.Variant = "large" if len(prefixes) == 15 else "small"
    if len(prefixes) != len(spec.MOBILENET_V3_TABLES[variant]):
        raise ValueError(f"`keras_model` has {len(prefixes)} blocks; MobileNetV3 has 15 or 11")
    minimalistic = not any("squeeze_excite" in name for name in c.layers)
    observed = tuple(int(_weights(c.layer(f"{p}project"))["kernel"].shape[-1]) for p in prefixes)
    padding = _stride2_padding(keras_model)

    def widths_of(alpha: float) -> tuple[int, ...]:
        table = mobilenet_v3_lib.mobilenet_v3_blocks(variant, alpha, minimalistic, padding)
        return tuple(kwargs["features"] for _, kwargs in table)

    bases = [row[1] for row in spec.MOBILENET_V3_TABLES[variant]]
    alpha = find_multiplier(widths_of, observed, bases)
    affine = _affine_input(keras_model, c)
    if affine is not None and not (
        np.allclose(affine[0], 1 / 127.5, rtol=1e-6) and np.allclose(affine[1], -1.0)
    ):
        raise ValueError("`keras_model` does not rescale its input as MobileNetV3 does")
    options = _head_options(c, keras_model, "logits", activation_layer="predictions")
    if options["include_top"]:
        dropouts = [layer for layer in c.layers.values() if _class(layer) == "Dropout"]
        options["dropout_rate"] = float(dropouts[0].rate) if dropouts else 0.0
    module = models.from_name(
        f"mobilenet_v3_{variant}",
        width_multiplier=alpha,
        minimalistic=minimalistic,
        include_preprocessing=affine is not None,
        stride2_padding=padding,
        **options,
    )
    c.conv("conv", ("stem_conv",))
    c.bn("conv_bn", ("stem_bn",))
    for i, prefix in enumerate(prefixes):
        block = f"block{i}"
        if i > 0:
            c.pointwise(f"{prefix}expand", (block, "expand"))
            c.bn(f"{prefix}expand_bn", (block, "expand_bn"))
        c.depthwise(f"{prefix}depthwise", (block, "depthwise"))
        c.bn(f"{prefix}depthwise_bn", (block, "depthwise_bn"))
        if f"{prefix}squeeze_excite_conv" in c.layers:
            c.pointwise(f"{prefix}squeeze_excite_conv", (block, "se", "reduce"))
            c.pointwise(f"{prefix}squeeze_excite_conv_1", (block, "se", "expand"))
        c.pointwise(f"{prefix}project", (block, "project"))
        c.bn(f"{prefix}project_bn", (block, "project_bn"))
    c.pointwise("conv_1", ("last_conv",))
    c.bn("conv_1_bn", ("last_bn",))
    if module.include_top:
        c.pointwise("conv_2", ("head_conv",))
        c.pointwise("logits", ("predictions",))
    return module


def _convnext(keras_model: Any, c: _Collector) -> nn.Module:
    """ConvNeXt (any depths and widths Keras builds), its prefix read from a block name."""
    suffix = "_stage_0_block_0_depthwise_conv"
    (first,) = [name for name in c.layers if name.endswith(suffix)]
    prefix = first.removesuffix(suffix)
    eps = spec.CONVNEXT_NORM_EPSILON
    depths: list[int] = []
    dims: list[int] = []
    while f"{prefix}_stage_{len(depths)}_block_0_depthwise_conv" in c.layers:
        i = len(depths)
        count = 0
        while f"{prefix}_stage_{i}_block_{count}_depthwise_conv" in c.layers:
            count += 1
        depths.append(count)
        dims.append(int(_weights(c.layer(f"{prefix}_stage_{i}_block_0_depthwise_conv"))["kernel"].shape[-1]))  # fmt: skip
    drop_path_rate = 0.0
    last = f"{prefix}_stage_{len(depths) - 1}_block_{depths[-1] - 1}_stochastic_depth"
    if last in c.layers:
        drop_path_rate = float(c.layer(last).get_config()["drop_path_rate"])
    affine = _affine_input(keras_model, c)
    preprocessing: dict[str, Any] = {"include_preprocessing": affine is not None}
    if affine is not None:  # (x - mean) / sqrt(variance) = x * a + b
        a, b = affine
        preprocessing["input_mean"] = tuple(float(v) for v in -b / a)
        preprocessing["input_variance"] = tuple(float(v) for v in 1.0 / a**2)
    head = f"{prefix}_head_dense"
    options = _head_options(c, keras_model, head)
    module = models.ConvNeXt(
        depths=tuple(depths),
        dims=tuple(dims),
        drop_path_rate=drop_path_rate,
        **preprocessing,
        **options,
    )
    c.conv(f"{prefix}_stem_conv", ("stem_conv",))
    c.layer_norm(f"{prefix}_stem_layernorm", ("stem_norm",), eps)
    for i, depth in enumerate(depths):
        if i > 0:
            c.layer_norm(f"{prefix}_downsampling_layernorm_{i - 1}", (f"downsample{i}_norm",), eps)
            c.conv(f"{prefix}_downsampling_conv_{i - 1}", (f"downsample{i}_conv",))
        for j in range(depth):
            name, path = f"{prefix}_stage_{i}_block_{j}", (f"stage{i}_block{j}",)
            c.depthwise(f"{name}_depthwise_conv", (*path, "depthwise"))
            c.layer_norm(f"{name}_layernorm", (*path, "norm"), eps)
            c.dense(f"{name}_pointwise_conv_1", (*path, "pointwise1"))
            c.dense(f"{name}_pointwise_conv_2", (*path, "pointwise2"))
            (gamma,) = c.layer(f"{name}_layer_scale").weights
            c.params[(*path, "layer_scale")] = np.asarray(getattr(gamma, "value", gamma))
    if module.include_top:
        c.layer_norm(f"{prefix}_head_layernorm", ("head_norm",), eps)
        c.dense(head, ("predictions",))
    else:
        norms = [n for n, layer in c.layers.items() if _class(layer) == "LayerNormalization" and n not in c.used]  # fmt: skip
        if len(norms) != 1:
            raise ValueError(f"`keras_model` has unexpected layer norms {norms}")
        c.layer_norm(norms[0], ("head_norm",), eps)
    return module


def _xception(keras_model: Any, c: _Collector) -> nn.Module:
    options = _head_options(c, keras_model, "predictions")
    module = models.Xception(**options)
    for name in ("block1_conv1", "block1_conv2"):
        c.conv(name, (name,))
        c.bn(f"{name}_bn", (f"{name}_bn",))
    residual_blocks: dict[int, str] = {}
    for i, (features, strides, _) in enumerate(spec.XCEPTION_BLOCKS, 2):
        for j in range(1, len(features) + 1):
            c.separable(f"block{i}_sepconv{j}", (f"block{i}", f"sepconv{j}"))
            c.bn(f"block{i}_sepconv{j}_bn", (f"block{i}", f"sepconv{j}_bn"))
        if strides != 1:
            residual_blocks[features[-1]] = f"block{i}"
    # The shortcut convolutions and their batch norms are unnamed in Keras (their
    # automatic names depend on what else was built); each has a distinct width.
    for layer in keras_model.layers:
        if layer.name.startswith("block") or layer.name in c.used:
            continue
        kind = _class(layer)
        if kind not in ("Conv2D", "BatchNormalization"):
            continue
        width = int(_weights(layer)["kernel" if kind == "Conv2D" else "gamma"].shape[-1])
        if width not in residual_blocks:
            raise ValueError(f"unexpected layer {layer.name!r} ({kind}, {width} channels)")
        block = residual_blocks[width]
        if kind == "Conv2D":
            c.pointwise(layer.name, (block, "residual"))
        else:
            c.bn(layer.name, (block, "residual_bn"))
    for j in (1, 2):
        c.separable(f"block14_sepconv{j}", (f"block14_sepconv{j}",))
        c.bn(f"block14_sepconv{j}_bn", (f"block14_sepconv{j}_bn",))
    if module.include_top:
        c.dense("predictions", ("predictions",))
    return module


_SIGNATURES: tuple[tuple[str, str, Callable[[Any, _Collector], nn.Module]], ...] = (
    ("MobileNet", "conv_dw_1", _mobilenet_v1),
    ("MobileNetV3Large/Small", "conv_bn", _mobilenet_v3),
    ("MobileNetV2", "expanded_conv_depthwise", _mobilenet_v2),
    ("EfficientNetB0...B7", "block1a_dwconv", _efficientnet),
    ("Xception", "block2_sepconv1", _xception),
    ("ConvNeXt", "_stage_0_block_0_depthwise_conv", _convnext),
)


def convert(keras_model: Any) -> tuple[nn.Module, Variables]:
    """Converts a ``keras.applications`` model to a :mod:`sepconv_jax.models` module.

    Supports ``MobileNet`` (v1), ``MobileNetV2``, ``MobileNetV3Large`` /
    ``MobileNetV3Small``, ``EfficientNetB0`` ... ``B7``, ``Xception`` and
    ``ConvNeXtTiny`` / ``Small`` / ``Base``,
    channels-last, with or without the top, with any ``alpha`` / ``depth_multiplier``
    / ``classes`` / ``pooling`` and input size Keras allows, including Keras' own
    preprocessing layers (EfficientNet) and its stride-2 padding conventions (which
    depend on whether the input size was known when the Keras model was built).
    The classifier's activation (``"softmax"`` by default in Keras) is reproduced.

    Args:
      keras_model: the Keras model, built (e.g. ``keras.applications.MobileNet(
        weights=None, input_shape=(32, 32, 3))``, then trained or loaded).

    Returns:
      ``(module, variables)`` with ``variables = {"params": ..., "batch_stats":
      ...}`` such that ``module.apply(variables, x, train=False)`` equals
      ``keras_model(x, training=False)`` for ``x`` of shape ``(batch, height,
      width, channels)``.

    Raises:
      ValueError: for a model that is not one of these (or was modified), a
        channels-first model, or an unsupported classifier activation.

    Example:
      >>> import os
      >>> os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported
      'jax'
      >>> import jax, keras, numpy as np
      >>> from sepconv_jax.interop.keras_models import convert
      >>> keras_model = keras.applications.MobileNet(
      ...     weights=None, alpha=0.25, input_shape=(32, 32, 3), classes=4,
      ...     classifier_activation=None)
      >>> module, variables = convert(keras_model)
      >>> type(module).__name__, module.width_multiplier, module.num_classes
      ('MobileNetV1', 0.25, 4)
      >>> x = np.zeros((2, 32, 32, 3), np.float32)
      >>> jax.eval_shape(lambda v: module.apply(v, x, train=False), variables).shape
      (2, 4)
    """
    if not hasattr(keras_model, "layers") or not hasattr(keras_model, "input_shape"):
        raise TypeError(
            f"`keras_model` must be a built Keras model, got {type(keras_model).__name__}"
        )
    _check_channels_last(keras_model)
    collector = _Collector(keras_model)
    names = set(collector.layers)
    for _, signature, build in _SIGNATURES:
        if signature in names or (
            signature.startswith("_") and any(n.endswith(signature) for n in names)
        ):
            module = build(keras_model, collector)
            break
    else:
        raise ValueError(
            f"`keras_model` ({getattr(keras_model, 'name', '?')}) is not one of the supported "
            f"keras.applications models: {', '.join(s[0] for s in _SIGNATURES)}"
        )
    leftover = collector.unused_weighted_layers()
    if leftover:
        raise ValueError(
            f"`keras_model` has weighted layers this conversion does not know: {leftover[:5]}"
        )
    variables = collector.variables()
    height, width = _spatial(keras_model)
    size = 299 if isinstance(module, models.Xception) else 224
    channels = keras_model.input_shape[-1]
    check_shapes(module, variables, (1, height or size, width or size, channels))
    return module, variables
