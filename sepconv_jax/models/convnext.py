"""ConvNeXt: Liu et al., 2022, "A ConvNet for the 2020s", Section 3 and Table 9
(T/S/B), as in ``keras.applications.ConvNeXtTiny`` / ``Small`` / ``Base``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from sepconv_jax import _spec
from sepconv_jax.models import _common, spec
from sepconv_jax.models._build import Builder, Linen
from sepconv_jax.models.blocks import ConvNeXtBlock, check_image

__all__ = ["ConvNeXt", "convnext_blocks"]

NORM_EPSILON = spec.CONVNEXT_NORM_EPSILON
#: ImageNet's per-channel mean and variance in pixel units (Keras' ``PreStem``).
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_VARIANCE = ((0.229 * 255) ** 2, (0.224 * 255) ** 2, (0.225 * 255) ** 2)


def check_stages(depths: Any, dims: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``depths`` and ``dims`` as tuples of positive ints of the same length."""
    for value, name in ((depths, "depths"), (dims, "dims")):
        if isinstance(value, str) or not isinstance(value, Sequence) or len(value) == 0:
            raise TypeError(f"`{name}` must be a non-empty sequence of ints, got {value!r}")
    depths = tuple(_spec.check_positive_int(d, "depths") for d in depths)
    dims = tuple(_spec.check_positive_int(d, "dims") for d in dims)
    if len(depths) != len(dims):
        raise ValueError(
            f"`depths` has {len(depths)} stages but `dims` has {len(dims)}; give one width "
            f"per stage"
        )
    return depths, dims


def convnext_blocks(
    depths: Sequence[int],
    drop_path_rate: float,
    layer_scale_init_value: float | None,
) -> list[list[tuple[str, dict[str, Any]]]]:
    """Per stage, every block: ``(name, ConvNeXtBlock fields)``.

    Block ``j`` of stage ``i`` is ``stage{i}_block{j}``; the stochastic depth rate
    grows linearly from 0 to ``drop_path_rate`` over all blocks (``np.linspace``, as
    Keras and the reference code). One table for the linen and the NNX model.
    """
    rates = iter(np.linspace(0.0, drop_path_rate, sum(depths)))
    fields = {"layer_scale_init_value": layer_scale_init_value, "norm_epsilon": NORM_EPSILON}
    return [
        [(f"stage{i}_block{j}", {"drop_rate": float(next(rates)), **fields}) for j in range(depth)]
        for i, depth in enumerate(depths)
    ]


def _convnext(config: ConvNeXt, b: Builder, x: jax.Array) -> jax.Array:
    h = check_image(x, type(config).__name__)
    if config.include_preprocessing:
        h = _common.normalize_input(
            h, config.input_mean, config.input_variance, owner=type(config).__name__
        )
    eps = NORM_EPSILON
    for i, (dim, stage) in enumerate(zip(config.dims, config.blocks(), strict=True)):
        if i == 0:
            h = b.layer_norm("stem_norm", b.conv("stem_conv", h, dim, 4, 4, "VALID", True), eps)
        else:
            h = b.layer_norm(f"downsample{i}_norm", h, eps)
            h = b.conv(f"downsample{i}_conv", h, dim, 2, 2, "VALID", use_bias=True)
        for name, kwargs in stage:
            h = b.block(name, ConvNeXtBlock, h, **kwargs)
    h = _common.pool(h, "avg" if config.include_top else config.pooling)
    h = b.layer_norm("head_norm", h, eps)
    return _common.classify(config, b, h) if config.include_top else h


class ConvNeXt(Linen, _common.Classifier):
    """ConvNeXt: a patchify stem, four stages of ConvNeXt blocks, LayerNorm head.

    Layout (Liu et al., 2022): a 4x4 convolution of stride 4 and a layer norm (the
    stem), then per stage (after the first) a layer norm and a 2x2 convolution of
    stride 2 (downsampling), and ``depths[i]``
    :class:`~sepconv_jax.models.blocks.ConvNeXtBlock` of width ``dims[i]`` (7x7
    depthwise, LayerNorm, MLP with GELU, layer scale, stochastic depth). The head
    pools globally, normalizes and applies a dense layer. Layer norms use epsilon
    1e-6; preprocessing and names follow ``keras.applications.ConvNeXt*``, and the
    same model is timm's ``convnext_*`` (with ``include_preprocessing=False``).

    Use :class:`ConvNeXtTiny`, :class:`ConvNeXtSmall` or :class:`ConvNeXtBase`, or
    give ``depths`` and ``dims``.

    Attributes:
      num_classes: outputs of the classifier.
      include_top: end with the classifier. Without it, the features are pooled as
        ``pooling`` says and then layer-normalized, as Keras does.
      pooling: without the top: ``None``, ``"avg"`` or ``"max"``.
      dropout_rate: dropout before the dense layer (0 in Keras and timm).
      classifier_activation: applied to the logits; ``None`` returns logits.
      depths: blocks per stage.
      dims: width per stage (Keras' ``projection_dims``).
      drop_path_rate: the stochastic depth rate of the last block.
      layer_scale_init_value: initial layer scale; ``None`` disables it.
      include_preprocessing: normalize ``[0, 255]`` images with ``input_mean`` and
        ``input_variance`` first (Keras' ``Normalization``).
      input_mean, input_variance: per channel, in pixel units (ImageNet's).
      dtype, param_dtype, precision, impl: numerics, passed to every layer.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax.models import ConvNeXt
      >>> model = ConvNeXt(num_classes=10, depths=(1, 1), dims=(8, 16))
      >>> x = jnp.zeros((1, 32, 32, 3))
      >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
      >>> jax.eval_shape(lambda v: model.apply(v, x), variables).shape
      (1, 10)
    """

    depths: Sequence[int] = (3, 3, 9, 3)
    dims: Sequence[int] = (96, 192, 384, 768)
    drop_path_rate: float = 0.0
    layer_scale_init_value: float | None = 1e-6
    include_preprocessing: bool = True
    input_mean: Sequence[float] = IMAGENET_MEAN
    input_variance: Sequence[float] = IMAGENET_VARIANCE

    def __post_init__(self) -> None:
        super().__post_init__()
        check_stages(self.depths, self.dims)

    def blocks(self) -> list[list[tuple[str, dict[str, Any]]]]:
        """This model's blocks per stage, see :func:`convnext_blocks`."""
        return convnext_blocks(self.depths, self.drop_path_rate, self.layer_scale_init_value)

    forward = staticmethod(_convnext)
