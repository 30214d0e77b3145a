"""Shared by the export tests: the tolerance, and model variables without ``init``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

#: The issue's tolerance: largest absolute difference over largest output magnitude.
REL = 1e-5


def relative_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def trained_like(variables, seed=0):
    """``variables`` with batch-norm statistics and affine terms away from their init."""
    rng = np.random.default_rng(seed)

    def perturb(path, leaf):
        names = [getattr(k, "key", "") for k in path]
        leaf = np.asarray(leaf)
        if names[-1] == "mean":
            return jnp.asarray(rng.normal(0.0, 0.2, leaf.shape), leaf.dtype)
        if names[-1] == "var":
            return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), leaf.dtype)
        if names[-1] == "scale":
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        if names[-1] == "bias" and names[-2].endswith("bn"):
            return jnp.asarray(rng.normal(0.0, 0.2, leaf.shape), leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(perturb, variables)


def random_variables(model, x, seed=0):
    """Variables of ``model`` for input ``x`` without running ``init``: kernels with
    variance ``1 / fan_in``, small random biases, batch norms away from their init."""
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "var":
            return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), leaf.dtype)
        if name == "scale":
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        if leaf.ndim >= 2:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0.0, fan_in**-0.5, leaf.shape), leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 0.2, leaf.shape), leaf.dtype)  # bias, mean

    return jax.tree_util.tree_map_with_path(draw, shapes)
