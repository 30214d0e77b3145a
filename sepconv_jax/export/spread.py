"""Depthwise channel ranges spread as in trained MobileNets, the float function kept.

In a trained MobileNet the batch-norm-folded depthwise kernels have channels whose
ranges differ by orders of magnitude (Sheng et al., 2018, Fig. 2; Krishnamoorthi,
2018, Section 3.1), which is what per-tensor weight scales cannot represent. A
randomly initialized model does not show it, so :func:`spread_depthwise_channels`
builds it into a MobileNet (v1) without changing what the model computes:

In each block, ``depthwise -> BN -> ReLU6 -> pointwise``, channel ``c`` of the
batch norm's ``gamma`` and ``beta`` is multiplied by ``a_c``, drawn log-uniformly
from ``[10**-decades, 1]``. After folding, the depthwise kernel's channel ``c`` and
its bias are multiplied by ``a_c`` (:mod:`sepconv_jax.export.fold`), so the folded
ranges spread over ``decades`` decades. The batch norm's output channel ``c`` is
then ``a_c`` times what it was; ReLU6 is positively homogeneous on ``[0, 6]``
(``relu6(a * y) = a * relu6(y)`` for ``0 < a <= 1`` and ``y <= 6``), and row ``c`` of
the following pointwise kernel is divided by ``a_c``, so the pointwise output is
unchanged wherever the original pre-activation stays at or below 6.
:func:`max_preactivation` measures that bound on given data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["spread_depthwise_channels"]


def _copy(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _copy(v) for k, v in tree.items()}
    return tree


def _blocks(params: Mapping[str, Any], prefix: tuple[str, ...] = ()):
    """Paths of every DepthwiseSeparableBlock's parameters (depthwise, BN, pointwise)."""
    if all(k in params for k in ("depthwise", "depthwise_bn", "pointwise")):
        yield prefix
        return
    for name, sub in params.items():
        if isinstance(sub, Mapping):
            yield from _blocks(sub, (*prefix, name))


def _bn_channel_max(model: nn.Module, variables: Mapping[str, Any], x: Any) -> dict:
    """The largest value of each channel of every batch norm's output on ``x``."""

    def run(x):
        found: dict[tuple[str, ...], jax.Array] = {}

        def interceptor(next_fun, args, kwargs, context):
            y = next_fun(*args, **kwargs)
            if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
                found[tuple(context.module.path)] = jnp.max(y.reshape(-1, y.shape[-1]), axis=0)
            return y

        with nn.intercept_methods(interceptor):
            model.apply(variables, x, train=False)
        return {"/".join(k): v for k, v in found.items()}

    return {tuple(k.split("/")): np.asarray(v) for k, v in jax.jit(run)(x).items()}


def spread_depthwise_channels(
    model: nn.Module,
    variables: Mapping[str, Any],
    x: Any,
    *,
    decades: float = 3.0,
    seed: int = 0,
) -> tuple[dict[str, Any], float]:
    """``variables`` with each block's depthwise channels spread, same float function.

    Args:
      model: a linen model built of
        :class:`~sepconv_jax.models.blocks.DepthwiseSeparableBlock` (MobileNetV1).
      variables: its variables (with ``batch_stats``).
      x: inputs on which the function must stay the same: a channel whose
        pre-activation exceeds 6 anywhere on ``x`` keeps factor 1.
      decades: the factors run over ``[10**-decades, 1]``.
      seed: seeds the factors.

    Returns:
      ``(new_variables, fraction)``: the variables, and the fraction of depthwise
      channels that were spread.

    Raises:
      ValueError: for a model without such blocks, or ``decades < 0``.
    """
    if isinstance(decades, bool) or not isinstance(decades, int | float) or decades < 0:
        raise ValueError(f"`decades` must be a number >= 0, got {decades!r}")
    params = _copy(variables["params"])
    blocks = list(_blocks(params))
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no DepthwiseSeparableBlock (depthwise, depthwise_bn, "
            f"pointwise) to spread; use a MobileNetV1 or a model built of such blocks"
        )
    peaks = _bn_channel_max(model, variables, x)
    rng = np.random.default_rng(seed)
    spread = total = 0
    for path in blocks:
        block = params
        for name in path:
            block = block[name]
        bn = block["depthwise_bn"]
        channels = bn["scale"].shape[0]
        factors = 10.0 ** rng.uniform(-decades, 0.0, channels)
        factors = np.where(peaks[(*path, "depthwise_bn")] <= 6.0, factors, 1.0)
        spread += int(np.sum(factors < 1.0))
        total += channels
        bn["scale"] = jnp.asarray(np.asarray(bn["scale"]) * factors, bn["scale"].dtype)
        bn["bias"] = jnp.asarray(np.asarray(bn["bias"]) * factors, bn["bias"].dtype)
        kernel = block["pointwise"]["kernel"]
        block["pointwise"]["kernel"] = jnp.asarray(
            np.asarray(kernel, np.float64) / factors[:, None], kernel.dtype
        )
    return dict(variables, params=params), spread / total
