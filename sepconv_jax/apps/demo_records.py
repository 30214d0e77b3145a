"""The records of ``sepconv-jax demo``: what :func:`~sepconv_jax.apps.demo.compare` returns.

:class:`Comparison` (the two trained networks, :class:`ModelRun` each, and their
settings) and :class:`TrainingFault` (a network stopped on a non-finite step). Both
:mod:`sepconv_jax.apps.demo`, which makes them, and
:mod:`sepconv_jax.apps.demo_report`, which renders them, import them from here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sepconv_jax import cost
from sepconv_jax.apps.non_finite import NonFiniteLossError

__all__ = ["Comparison", "ModelRun", "TrainingFault"]


@dataclasses.dataclass(frozen=True)
class ModelRun:
    """One trained network of a :class:`Comparison`.

    Attributes:
      name: ``"standard"`` or ``"separable"``.
      params: trainable parameters.
      mult_adds: mult-adds per example (:func:`sepconv_jax.cost.profile`).
      block_mult_adds: mult-adds per example in the blocks, the layers that differ.
      block_params: parameters of the blocks.
      step_ms: median wall time of one training step, in milliseconds.
      compile_s: compile time of the training step, in seconds.
      test_accuracy: accuracy on the test set after training, in ``[0, 1]``.
      test_predictions: the predicted label of every test example after training,
        in the test set's order (``test_accuracy`` is the fraction of them correct).
      epoch_accuracy: test accuracy after each epoch.
      losses: training loss of every step.
      predicted_step_ms: the roofline's time for the step's convolutions and matrix
        multiplies, forward and backward, on one device's share of the batch
        (:func:`sepconv_jax.cost.roofline` with this machine's measured
        :class:`~sepconv_jax.cost.Device`), in milliseconds.
    """

    name: str
    params: int
    mult_adds: int
    block_mult_adds: int
    block_params: int
    step_ms: float
    compile_s: float
    test_accuracy: float
    test_predictions: tuple[int, ...]
    epoch_accuracy: tuple[float, ...]
    losses: tuple[float, ...]
    predicted_step_ms: float | None = None


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`compare`: the two runs and their settings.

    Attributes:
      task: ``"digits"`` or ``"sequence"``.
      standard: the standard-convolution run.
      separable: the separable-convolution run.
      settings: epochs, batch size, seed, devices, backend, input shape, sizes.
      wall_s: wall time of the whole comparison (data, compile, training), seconds.
    """

    task: str
    standard: ModelRun
    separable: ModelRun
    settings: dict[str, Any]
    wall_s: float

    def ratios(self) -> dict[str, float]:
        """Standard over separable for params, mult-adds and step time; accuracy difference.

        ``accuracy_points`` is separable minus standard test accuracy, in
        percentage points. With roofline predictions, ``predicted_step_time`` is
        their ratio and ``gap_explained`` how much of the gap between the mult-add
        ratio and the step-time ratio the roofline accounts for
        (:func:`sepconv_jax.cost.gap_explained`: 1 all of it, 0 none).
        """
        s, p = self.standard, self.separable
        ratios = {
            "params": s.params / p.params,
            "mult_adds": s.mult_adds / p.mult_adds,
            "block_params": s.block_params / p.block_params,
            "block_mult_adds": s.block_mult_adds / p.block_mult_adds,
            "step_time": s.step_ms / p.step_ms,
            "accuracy_points": 100.0 * (p.test_accuracy - s.test_accuracy),
        }
        if s.predicted_step_ms and p.predicted_step_ms:
            ratios["predicted_step_time"] = s.predicted_step_ms / p.predicted_step_ms
            ratios["gap_explained"] = cost.gap_explained(
                ratios["mult_adds"], ratios["step_time"], ratios["predicted_step_time"]
            )
        return ratios

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: settings, both runs, ratios."""
        return {
            "task": self.task,
            "settings": self.settings,
            "wall_s": self.wall_s,
            "standard": dataclasses.asdict(self.standard),
            "separable": dataclasses.asdict(self.separable),
            "ratios": self.ratios(),
        }


class TrainingFault(RuntimeError):
    """One network of :func:`compare` stopped on a non-finite step.

    Attributes:
      task: the task.
      network: ``"standard"`` or ``"separable"``.
      settings: as in :class:`Comparison`.
      error: the :class:`~sepconv_jax.apps.train.NonFiniteLossError`.
    """

    def __init__(
        self, task: str, network: str, settings: dict[str, Any], error: NonFiniteLossError
    ):
        super().__init__(f"{network} network: {error}")
        self.task, self.network, self.settings, self.error = task, network, settings, error

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: task, settings, and the fault with its network."""
        fault = {"network": self.network, **self.error.to_dict()}
        fault["losses"] = [float(v) for v in self.error.losses]
        return {"task": self.task, "settings": self.settings, "fault": fault}
