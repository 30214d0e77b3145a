"""Whole-model import from timm (PyTorch Image Models): a timm model in, a Flax model out.

:func:`convert` recognizes timm's ``EfficientNet`` class (``mobilenetv2_*``,
``efficientnet_b*`` with PyTorch padding, ``tf_efficientnet_b*`` with TensorFlow
"same" padding), its ``MobileNetV3`` class (``mobilenetv3_large_*``,
``mobilenetv3_small_*``) and its ``ConvNeXt`` class (``convnext_tiny`` / ``small`` /
``base``), reads the architecture from the modules themselves (widths, depths,
kernels, padding, batch-norm epsilon, classifier), builds the matching
:mod:`sepconv_jax.models` module and copies every weight and running statistic, so
that ``module.apply(variables, x, train=False)`` computes ``timm_model.eval()(x)``
with ``x`` channels-last here and channels-first in PyTorch. Neither timm nor torch
is imported by this module; nothing is downloaded.

Weight layouts (PyTorch -> ours):

* ``Conv2d`` ``(out, in, kh, kw)`` -> ``(kh, kw, in, out)`` (``flax.linen.Conv``);
  a depthwise one ``(C, 1, kh, kw)`` -> ``(kh, kw, 1, C)``; a 1x1 one -> ``(in, out)``.
* ``Linear`` ``(out, in)`` -> ``(in, out)``.
* ``BatchNorm2d``: ``weight``, ``bias`` -> ``scale``, ``bias``; ``running_mean``,
  ``running_var`` -> ``batch_stats`` ``mean``, ``var``.
* ``LayerNorm`` / ``LayerNorm2d``: ``weight``, ``bias`` -> ``scale``, ``bias``; a
  ConvNeXt block's ``gamma`` -> ``layer_scale``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import numpy as np

from sepconv_jax import models
from sepconv_jax.interop import _model_import, keras_models
from sepconv_jax.models import mobilenet_v2 as mobilenet_v2_lib
from sepconv_jax.models import mobilenet_v3 as mobilenet_v3_lib
from sepconv_jax.models import spec
from sepconv_jax.models.blocks import Stride2Padding

__all__ = ["convert"]

Path = tuple[str, ...]
Variables = dict[str, Any]


def _array(tensor: Any) -> np.ndarray:
    return np.asarray(tensor.detach().cpu().numpy())


def _class(module: Any) -> str:
    return type(module).__name__


class _Collector:
    """Accumulates converted weights by our module path."""

    def __init__(self) -> None:
        self.params: dict[Path, np.ndarray] = {}
        self.stats: dict[Path, np.ndarray] = {}
        self.bn_epsilons: set[float] = set()

    def conv(self, module: Any, path: Path) -> None:
        """A standard ``Conv2d`` -> ``flax.linen.Conv``."""
        self.params[(*path, "kernel")] = _array(module.weight).transpose(2, 3, 1, 0)
        if module.bias is not None:
            self.params[(*path, "bias")] = _array(module.bias)

    def depthwise(self, module: Any, path: Path) -> None:
        """A depthwise ``Conv2d`` ``(C, 1, kh, kw)`` -> our ``(kh, kw, 1, C)``."""
        if module.groups != module.in_channels or module.out_channels != module.in_channels:
            raise ValueError(f"{_class(module)} {module} is not a depthwise convolution")
        self.conv(module, path)

    def pointwise(self, module: Any, path: Path) -> None:
        """A 1x1 ``Conv2d`` or a ``Linear`` -> ``(in, out)``."""
        weight = _array(module.weight)
        if weight.ndim == 4:
            if weight.shape[2:] != (1, 1) or getattr(module, "groups", 1) != 1:
                raise ValueError(f"{module} is not a pointwise (1x1, ungrouped) convolution")
            weight = weight[:, :, 0, 0]
        self.params[(*path, "kernel")] = weight.T
        if module.bias is not None:
            self.params[(*path, "bias")] = _array(module.bias)

    def bn(self, module: Any, path: Path) -> None:
        if not (module.affine and module.track_running_stats):
            raise ValueError(f"batch norm {module} must be affine and track running statistics")
        self.bn_epsilons.add(float(module.eps))
        self.params[(*path, "scale")] = _array(module.weight)
        self.params[(*path, "bias")] = _array(module.bias)
        self.stats[(*path, "mean")] = _array(module.running_mean)
        self.stats[(*path, "var")] = _array(module.running_var)

    def layer_norm(self, module: Any, path: Path) -> None:
        if not np.isclose(module.eps, spec.CONVNEXT_NORM_EPSILON, rtol=1e-6, atol=0):
            raise ValueError(f"layer norm {module} has epsilon {module.eps}; ConvNeXt uses 1e-6")
        self.params[(*path, "scale")] = _array(module.weight)
        self.params[(*path, "bias")] = _array(module.bias)

    def bn_epsilon(self) -> float:
        if len(self.bn_epsilons) != 1:
            raise ValueError(
                f"the batch norms of `timm_model` have epsilons {sorted(self.bn_epsilons)}; "
                f"the architectures here use one"
            )
        return self.bn_epsilons.pop()

    def variables(self) -> Variables:
        return keras_models.variables_from_flat(self.params, self.stats)


def _stride2_padding(conv: Any) -> Stride2Padding:
    """``"same"`` for timm's dynamic TensorFlow padding, ``"symmetric"`` for PyTorch's."""
    if _class(conv) == "Conv2dSame":
        return "same"
    kernel = conv.kernel_size[0]
    if tuple(conv.padding) == (kernel // 2, kernel // 2):
        return "symmetric"
    raise ValueError(
        f"`timm_model`'s strided convolution {conv} pads {conv.padding}; expected "
        f"{kernel // 2} (PyTorch) or timm's dynamic 'same' padding (Conv2dSame)"
    )


def _blocks(timm_model: Any) -> Iterator[Any]:
    for stage in timm_model.blocks:
        yield from stage


def _classifier(timm_model: Any) -> dict[str, Any]:
    classifier = timm_model.classifier
    if _class(classifier) == "Identity":
        return {"include_top": False, "pooling": "avg"}
    return {
        "include_top": True,
        "num_classes": int(classifier.out_features),
        "dropout_rate": float(getattr(timm_model, "drop_rate", 0.0)),
    }


def _drop_path_rate(block_list: list[Any]) -> float:
    """The stochastic depth rate of the last block, from the linear schedule's ``k``-th."""
    for k, block in enumerate(block_list):
        drop = getattr(block, "drop_path", None)
        if drop is not None and _class(drop) == "DropPath" and k > 0:
            return float(drop.drop_prob) * len(block_list) / k
    return 0.0


def _mbconv(c: _Collector, block: Any, path: Path) -> None:
    """timm's ``DepthwiseSeparableConv`` or ``InvertedResidual`` -> our InvertedResidual."""
    kind = _class(block)
    if kind == "DepthwiseSeparableConv":
        c.depthwise(block.conv_dw, (*path, "depthwise"))
        c.bn(block.bn1, (*path, "depthwise_bn"))
        project, project_bn = block.conv_pw, block.bn2
    elif kind == "InvertedResidual":
        c.pointwise(block.conv_pw, (*path, "expand"))
        c.bn(block.bn1, (*path, "expand_bn"))
        c.depthwise(block.conv_dw, (*path, "depthwise"))
        c.bn(block.bn2, (*path, "depthwise_bn"))
        project, project_bn = block.conv_pwl, block.bn3
    else:
        raise ValueError(f"`timm_model` has a block of kind {kind}, not convertible here")
    if _class(block.se) != "Identity":
        c.pointwise(block.se.conv_reduce, (*path, "se", "reduce"))
        c.pointwise(block.se.conv_expand, (*path, "se", "expand"))
    c.pointwise(project, (*path, "project"))
    c.bn(project_bn, (*path, "project_bn"))


def _strided_padding(blocks: list[Any]) -> Stride2Padding:
    for block in blocks:
        if block.conv_dw.stride[0] == 2:
            return _stride2_padding(block.conv_dw)
    raise ValueError("`timm_model` has no strided depthwise convolution")


# ----------------------------------------------------------------------------- per family


def _efficientnet_class(timm_model: Any, c: _Collector) -> nn.Module:
    """timm's ``EfficientNet`` class: MobileNetV2 (ReLU6) or EfficientNet (SiLU)."""
    blocks = list(_blocks(timm_model))
    act = _class(timm_model.bn1.act)
    padding = _stride2_padding(timm_model.conv_stem)
    if _strided_padding(blocks) != padding:
        raise ValueError("`timm_model` mixes 'same' and PyTorch padding; not convertible")
    widths = tuple(int(b.bn2.num_features if _class(b) == "DepthwiseSeparableConv" else b.bn3.num_features) for b in blocks)  # fmt: skip
    stem = int(timm_model.conv_stem.out_channels)
    head = int(timm_model.conv_head.out_channels)
    if act == "ReLU6":
        bases = [32, 1280, *(ch for _, ch, _, _ in spec.MOBILENET_V2_STAGES)]
        alpha = keras_models.find_multiplier(
            mobilenet_v2_lib.mobilenet_v2_widths, (stem, *widths, head), bases
        )
        module: nn.Module = models.MobileNetV2(
            width_multiplier=alpha, stride2_padding=padding, **_classifier(timm_model)
        )
        names = [name for name, _ in mobilenet_v2_lib.mobilenet_v2_blocks(alpha, padding)]
        stem_names, head_names = ("conv1", "conv1_bn"), ("conv_last", "conv_last_bn")
    elif act == "SiLU":
        repeats = tuple(len(stage) for stage in timm_model.blocks)

        def matches(arch: spec.Arch, table: list[tuple[str, dict[str, Any]]]) -> bool:
            stage_repeats = tuple(
                sum(1 for name, _ in table if re.fullmatch(rf"block{i + 1}[a-z]", name))
                for i in range(len(spec.EFFICIENTNET_STAGES))
            )
            return stage_repeats == repeats and tuple(k["features"] for _, k in table) == widths

        found = f"`timm_model` has stage depths {repeats} and widths {widths}"
        arch, table = _model_import.efficientnet_row(matches, padding, found)
        module = models.from_name(
            arch.name,
            stride2_padding=padding,
            include_preprocessing=False,
            drop_connect_rate=_drop_path_rate(blocks),
            **_classifier(timm_model),
        )
        names = [name for name, _ in table]
        stem_names, head_names = ("stem_conv", "stem_bn"), ("top_conv", "top_bn")
    else:
        raise ValueError(
            f"`timm_model` is a timm EfficientNet with {act} activations; supported: ReLU6 "
            f"(mobilenetv2_*) and SiLU (efficientnet_*, tf_efficientnet_*)"
        )
    c.conv(timm_model.conv_stem, (stem_names[0],))
    c.bn(timm_model.bn1, (stem_names[1],))
    if len(names) != len(blocks):
        raise ValueError(f"`timm_model` has {len(blocks)} blocks; expected {len(names)}")
    for name, block in zip(names, blocks, strict=True):
        _mbconv(c, block, (name,))
    c.pointwise(timm_model.conv_head, (head_names[0],))
    c.bn(timm_model.bn2, (head_names[1],))
    if module.include_top:
        c.pointwise(timm_model.classifier, ("predictions",))
    return module.clone(bn_epsilon=c.bn_epsilon())


def _mobilenet_v3(timm_model: Any, c: _Collector) -> nn.Module:
    *blocks, last = list(_blocks(timm_model))
    if _class(last) != "ConvBnAct":
        raise ValueError("`timm_model` does not end its blocks with a 1x1 ConvBnAct")
    variant: spec.Variant = "large" if len(blocks) == 15 else "small"
    if len(blocks) != len(spec.MOBILENET_V3_TABLES[variant]):
        raise ValueError(f"`timm_model` has {len(blocks)} blocks; MobileNetV3 has 15 or 11")
    minimalistic = all(_class(b.se) == "Identity" for b in blocks)
    widths = tuple(int(b.conv_pw.out_channels if _class(b) == "DepthwiseSeparableConv" else b.conv_pwl.out_channels) for b in blocks)  # fmt: skip
    padding = _stride2_padding(timm_model.conv_stem)

    def widths_of(alpha: float) -> tuple[int, ...]:
        table = mobilenet_v3_lib.mobilenet_v3_blocks(variant, alpha, minimalistic, padding)
        return tuple(kwargs["features"] for _, kwargs in table)

    bases = [row[1] for row in spec.MOBILENET_V3_TABLES[variant]]
    alpha = keras_models.find_multiplier(widths_of, widths, bases)
    options = _classifier(timm_model)
    if not options["include_top"]:
        raise ValueError(
            "`timm_model` has no classifier (num_classes=0); its features are the 1x1 head "
            "convolution's, which the models here compute only with the classifier"
        )
    c.conv(timm_model.conv_stem, ("stem_conv",))
    c.bn(timm_model.bn1, ("stem_bn",))
    for i, block in enumerate(blocks):
        _mbconv(c, block, (f"block{i}",))
    c.pointwise(last.conv, ("last_conv",))
    c.bn(last.bn1, ("last_bn",))
    c.pointwise(timm_model.conv_head, ("head_conv",))
    c.pointwise(timm_model.classifier, ("predictions",))
    return models.from_name(
        f"mobilenet_v3_{variant}",
        width_multiplier=alpha,
        minimalistic=minimalistic,
        include_preprocessing=False,
        stride2_padding=padding,
        bn_epsilon=c.bn_epsilon(),
        **options,
    )


def _convnext(timm_model: Any, c: _Collector) -> nn.Module:
    head = timm_model.head
    if _class(head.pre_logits) != "Identity" or _class(timm_model.norm_pre) != "Identity":
        raise ValueError("`timm_model` has a head MLP or a pre-head norm; not convertible")
    stem_conv, stem_norm = timm_model.stem
    c.conv(stem_conv, ("stem_conv",))
    c.layer_norm(stem_norm, ("stem_norm",))
    depths, dims, all_blocks = [], [], []
    for i, stage in enumerate(timm_model.stages):
        if i > 0:
            norm, conv = stage.downsample
            c.layer_norm(norm, (f"downsample{i}_norm",))
            c.conv(conv, (f"downsample{i}_conv",))
        elif _class(stage.downsample) != "Identity":
            raise ValueError("`timm_model`'s first stage downsamples; not convertible")
        for j, block in enumerate(stage.blocks):
            path = (f"stage{i}_block{j}",)
            if block.conv_dw.kernel_size != (7, 7):
                raise ValueError(f"`timm_model` has a {block.conv_dw.kernel_size} depthwise conv")
            c.depthwise(block.conv_dw, (*path, "depthwise"))
            c.layer_norm(block.norm, (*path, "norm"))
            c.pointwise(block.mlp.fc1, (*path, "pointwise1"))
            c.pointwise(block.mlp.fc2, (*path, "pointwise2"))
            if block.gamma is None:
                raise ValueError("`timm_model` has no layer scale; not convertible")
            c.params[(*path, "layer_scale")] = _array(block.gamma)
            all_blocks.append(block)
        depths.append(len(stage.blocks))
        dims.append(int(stage.blocks[0].conv_dw.out_channels))
    c.layer_norm(head.norm, ("head_norm",))
    options: dict[str, Any] = {"include_top": False, "pooling": "avg"}
    if _class(head.fc) != "Identity":
        c.pointwise(head.fc, ("predictions",))
        options = {"num_classes": int(head.fc.out_features)}
        options["dropout_rate"] = float(getattr(head.drop, "p", 0.0))
    return models.ConvNeXt(
        depths=tuple(depths),
        dims=tuple(dims),
        drop_path_rate=_drop_path_rate(all_blocks),
        include_preprocessing=False,
        **options,
    )


_FAMILIES = {"EfficientNet": _efficientnet_class, "MobileNetV3": _mobilenet_v3}
_FAMILIES["ConvNeXt"] = _convnext


def convert(timm_model: Any) -> tuple[nn.Module, Variables]:
    """Converts a timm model to a :mod:`sepconv_jax.models` module and its variables.

    Supports timm's ``mobilenetv2_*``, ``mobilenetv3_large_*``,
    ``mobilenetv3_small_*``, ``efficientnet_b0`` ... ``b7``, ``tf_efficientnet_b0``
    ... ``b7`` and ``convnext_tiny`` / ``small`` / ``base`` (any ``num_classes``;
    ``num_classes=0`` gives the pooled features where timm's model returns them).
    PyTorch's symmetric padding (``efficientnet_*``, ``mobilenetv*``) and timm's
    TensorFlow "same" padding (``tf_*``) are both reproduced exactly, and so is each
    model's batch-norm epsilon (1e-5, or 1e-3 for ``tf_*``). The returned module takes
    what timm's model takes, but channels-last: no preprocessing is added (timm's
    models expect normalized images).

    Args:
      timm_model: the timm model, e.g. ``timm.create_model("efficientnet_b0")``,
        with weights of any origin.

    Returns:
      ``(module, variables)`` such that ``module.apply(variables, x, train=False)``
      equals ``timm_model.eval()(torch.from_numpy(x).permute(0, 3, 1, 2))`` for
      ``x`` of shape ``(batch, height, width, channels)``.

    Raises:
      TypeError: for an object that is not a timm model of a supported class.
      ValueError: for a supported class built with options the models here lack.
    """
    family = _FAMILIES.get(_class(timm_model))
    if family is None or not hasattr(timm_model, "state_dict"):
        raise TypeError(
            f"`timm_model` must be a timm EfficientNet, MobileNetV3 or ConvNeXt model, got "
            f"{_class(timm_model)}"
        )
    collector = _Collector()
    module = family(timm_model, collector)
    variables = collector.variables()
    stem = "conv1" if "conv1" in variables["params"] else "stem_conv"
    channels = int(variables["params"][stem]["kernel"].shape[-2])
    keras_models.check_shapes(module, variables, (1, 64, 64, channels))
    return module, variables
