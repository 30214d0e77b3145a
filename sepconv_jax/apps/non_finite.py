"""A training step that is not finite: the error that stops the loop, and where it began.

:class:`NonFiniteLossError` carries the failed step, the first layer whose output is
non-finite (:func:`first_non_finite_layer`) or the first parameter the update made
non-finite, and the last good checkpoint.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["NonFiniteLossError", "first_non_finite_layer"]


class NonFiniteLossError(FloatingPointError):
    """Training stopped: a step gave a NaN or infinite loss, or would have made a
    parameter non-finite.

    The parameters and optimizer state of the failed step are not applied, and no
    checkpoint is written for it, so the last checkpoint is the last good state.

    Attributes:
      step: the 1-based step that failed.
      layer: the path of the first layer (in call order) whose output is
        non-finite on the failing batch, ``"input"`` when the batch itself is, the
        name of the first parameter the update made non-finite, or ``None`` when
        every layer's output is finite (the loss itself is at fault).
      losses: the losses of the steps before, in order.
      checkpoint: the folder of the last checkpoint written, or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        step: int,
        layer: str | None,
        losses: np.ndarray,
        checkpoint: str | None,
    ):
        super().__init__(message)
        self.step, self.layer, self.losses, self.checkpoint = step, layer, losses, checkpoint

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: message, step, layer, checkpoint."""
        return {
            "message": str(self),
            "step": self.step,
            "layer": self.layer,
            "checkpoint": self.checkpoint,
        }


def _ordered_outputs(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(path, outputs)`` of captured intermediates, in the order the modules returned.

    Flax stores a module's output when its ``__call__`` returns, so a dict's keys are
    in completion order: children before their parent's own ``__call__`` entry.
    """
    found = []
    for key, value in tree.items():
        if key == "__call__":
            found.append((prefix or "<model>", value))
        elif isinstance(value, dict) or hasattr(value, "items"):
            found.extend(_ordered_outputs(value, f"{prefix}/{key}" if prefix else key))
    return found


def first_non_finite_layer(
    model: Any, variables: dict[str, Any], x: jax.Array, **apply_kwargs: Any
) -> str | None:
    """The path of the first module (in call order) whose output has a NaN or Inf.

    Runs ``model`` once on ``x`` with every module's output captured
    (``capture_intermediates=True``).

    Args:
      model: a ``flax.linen.Module``.
      variables: its variables, ``{"params": ..., ...}``.
      x: the input batch.
      **apply_kwargs: passed to ``model.apply``.

    Returns:
      A path such as ``"block2"`` or ``"encoder/conv1"``, ``"<model>"`` when only the
      model's own output is non-finite, or ``None`` when every output is finite.

    Example:
      >>> import flax.linen as nn, jax.numpy as jnp
      >>> from sepconv_jax.apps.non_finite import first_non_finite_layer
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         return nn.Dense(2, name="out")(jnp.log(nn.Dense(3, name="hidden")(x)))
      >>> model, x = Net(), jnp.ones((1, 2))
      >>> variables = model.init(jax.random.key(0), x)
      >>> first_non_finite_layer(model, variables, -1e30 * x)
      'out'
    """
    paths: list[str] = []

    def flags(variables, x):
        _, state = model.apply(
            variables, x, capture_intermediates=True, mutable=["intermediates"], **apply_kwargs
        )
        found = _ordered_outputs(state.get("intermediates", {}))
        paths[:] = [path for path, _ in found]
        return [
            jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(out)]))
            for _, out in found
        ]

    finite = jax.jit(flags)(variables, x)
    for path, ok in zip(paths, finite, strict=True):
        if not bool(ok):
            return path
    return None


def _first_non_finite_leaf(tree: Any) -> str | None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not bool(jnp.all(jnp.isfinite(leaf))):
            return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    return None
