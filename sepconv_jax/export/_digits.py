"""A few seconds of training on scikit-learn's digits, for the quantization reports.

The 8x8 digit images (1797 of them, bundled with scikit-learn, no download) are
scaled to ``[0, 1]`` and upsampled by pixel repetition; the last 20% are held out.
:func:`train` fits any linen classifier that takes ``(batch, h, w, 1)`` images and
a ``train`` flag with Adam on the cross-entropy, full batch norm statistics kept.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sepconv_jax.models.blocks import DepthwiseSeparableBlock

__all__ = ["SeparableDigitsNet", "digits", "train"]


def digits(upsample: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: images ``(n, 8u, 8u, 1)`` in ``[0, 1]``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    if upsample > 1:
        x = x.repeat(upsample, axis=1).repeat(upsample, axis=2)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    split = int(0.8 * len(y))
    return x[:split], y[:split], x[split:], y[split:]


class SeparableDigitsNet(nn.Module):
    """A 3x3 stem and two MobileNet (v1) blocks: depthwise, BN, ReLU6, pointwise, BN, ReLU6."""

    widths: tuple[int, ...] = (16, 32)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(8, (3, 3), use_bias=False, name="stem")(x)
        x = nn.relu6(nn.BatchNorm(not train, epsilon=1e-3, name="stem_bn")(x))
        for i, width in enumerate(self.widths):
            x = DepthwiseSeparableBlock(features=width, strides=2, name=f"block{i + 1}")(x, train)
        return nn.Dense(self.num_classes, name="predictions")(jnp.mean(x, axis=(1, 2)))


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 8,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Trains ``model`` on ``(x, y)`` and returns its variables."""
    variables = model.init(jax.random.key(seed), jnp.asarray(x[:2]), train=False)
    params, stats = variables["params"], variables["batch_stats"]
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)

    def loss(params, stats, xb, yb, key):
        logits, updates = model.apply(
            {"params": params, "batch_stats": stats},
            xb,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": key},
        )
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return ce, updates["batch_stats"]

    @jax.jit
    def step(params, stats, opt_state, xb, yb, key):
        (_, stats), grads = jax.value_and_grad(loss, has_aux=True)(params, stats, xb, yb, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed + 1)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            key, sub = jax.random.split(key)
            params, stats, opt_state = step(params, stats, opt_state, x[idx], y[idx], sub)
    return population_statistics(model, {"params": params, "batch_stats": stats}, x)


def population_statistics(model: nn.Module, variables: dict[str, Any], x: np.ndarray) -> dict:
    """``variables`` with every batch norm's running statistics set to those of ``x``.

    One training-mode call on all of ``x`` updates each running value to
    ``momentum * old + (1 - momentum) * batch``; solving that for ``batch`` gives
    the statistics of ``x`` itself (each layer normalized by batch statistics, as in
    training), which the short training run's moving averages have not reached.
    """
    momenta: dict[tuple[str, ...], float] = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm):
            momenta[tuple(context.module.path)] = context.module.momentum
        return next_fun(*args, **kwargs)

    def batch_stats(variables, x):
        with nn.intercept_methods(record):
            _, updates = model.apply(
                variables,
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(0)},
            )
        return updates

    updates = jax.jit(batch_stats)(variables, jnp.asarray(x))

    def solve(path, new, old):
        names = tuple(k.key for k in path[:-1])
        m = momenta[names]
        return (new - m * old) / (1.0 - m)

    stats = jax.tree_util.tree_map_with_path(
        solve, updates["batch_stats"], variables["batch_stats"]
    )
    return dict(variables, batch_stats=stats)
