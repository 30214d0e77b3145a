"""The whole-model line of ``sepconv-jax bench``: images per second of a training
step (forward, backward, SGD update) with each impl, MobileNetV2 by default."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

from sepconv_jax.apps.bench_layers import resolved_impl
from sepconv_jax.apps.bench_shapes import Layer
from sepconv_jax.apps.timing import time_step
from sepconv_jax.apps.train import train_step
from sepconv_jax.kernels.dispatch import Impl

__all__ = ["MODEL_ARCHITECTURES", "measure_model"]

#: The architectures :func:`measure_model` builds: two of the reference models, and
#: ``"blocks"`` (two of MobileNetV2's inverted residuals and a head, for ``--quick``).
MODEL_ARCHITECTURES = ("MobileNetV2", "EfficientNetB0", "blocks")


def _model(
    architecture: str, impl: Impl, num_classes: int, width_multiplier: float, dtype: Any = None
):
    """A model of :data:`MODEL_ARCHITECTURES` with ``impl`` in every layer."""
    import flax.linen as nn

    from sepconv_jax.models import EfficientNetB0, MobileNetV2
    from sepconv_jax.models.blocks import InvertedResidual

    if architecture == "MobileNetV2":
        return MobileNetV2(
            num_classes=num_classes, width_multiplier=width_multiplier, impl=impl, dtype=dtype
        )
    if architecture == "EfficientNetB0":
        return EfficientNetB0(num_classes=num_classes, impl=impl, dtype=dtype)
    if architecture != "blocks":
        raise ValueError(
            f"`architecture` must be one of {MODEL_ARCHITECTURES}, got {architecture!r}"
        )

    class Blocks(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = InvertedResidual(features=16, expand_ratio=1, impl=impl, dtype=dtype)(x, train)
            x = InvertedResidual(features=24, expand_ratio=6, strides=2, impl=impl, dtype=dtype)(
                x, train
            )
            return nn.Dense(num_classes, dtype=dtype)(x.mean(axis=(1, 2)))

    return Blocks()


def measure_model(
    impls: Sequence[Impl],
    *,
    architecture: str = "MobileNetV2",
    batch: int,
    image_size: int,
    width_multiplier: float,
    num_classes: int,
    min_time: float,
    max_reps: int,
    dtype: str | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Images per second of a training step (forward, backward, SGD update).

    ``architecture`` is one of :data:`MODEL_ARCHITECTURES`; ``"blocks"`` compiles in
    seconds (``--quick``). ``dtype`` is the models' compute dtype (``None``: float32;
    ``"bfloat16"`` for mixed precision, parameters staying float32). A step that
    fails to compile or run is recorded with its error and no time.

    Returns:
      One record per impl with ``seconds`` per step, ``images_per_second`` and the
      compile time.
    """
    import optax

    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    images = jax.random.normal(k1, (batch, image_size, image_size, 3))
    labels = jax.random.randint(k2, (batch,), 0, num_classes)
    optimizer = optax.sgd(0.01, momentum=0.9)
    records = []
    for impl in impls:
        record: dict[str, Any] = {
            "model": architecture,
            "impl": impl,
            # The models' depthwise layers are 3x3 and 5x5 at strides 1 and 2: the
            # kernels the rule picks for them, joined by "+" where they differ.
            "resolved_impl": impl
            if impl != "auto"
            else "+".join(
                sorted(
                    {
                        resolved_impl(Layer(112, 32, k, s, 16), 1, "float32")
                        for k in (3, 5)
                        for s in (1, 2)
                    }
                )
            ),
            "batch": batch,
            "image_size": image_size,
            "width_multiplier": width_multiplier,
            "num_classes": num_classes,
            "dtype": dtype or "float32",
        }
        records.append(record)

        def build(impl: Impl = impl) -> tuple[Callable, list]:
            model = _model(architecture, impl, num_classes, width_multiplier, dtype)
            variables = model.init(k3, images, train=False)
            params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
            # Dropout and stochastic depth (EfficientNet) draw from one fixed key: the
            # same masks every step, the same work as fresh ones.
            step = train_step(model, optimizer, train=True, rngs={"dropout": jax.random.key(1)})
            return step, [params, state, optimizer.init(params), images, labels]

        time_step(
            record, batch, build, max_reps=max_reps, min_time=min_time,
            label=f"{architecture} train step impl={impl}", log=log,
            detail=f"batch {batch}, {image_size}x{image_size}, {record['dtype']}, ",
        )  # fmt: skip
    return records
