"""The model zoo by name (:data:`sepconv_jax.models.spec.ARCHS`), for the command line,
configuration files and the importers; and the public classes generated from it."""

from __future__ import annotations

import functools
import importlib
from typing import Any, Literal

from sepconv_jax.models import spec

#: A model-zoo architecture's name (one of :data:`NAMES` or :data:`SPEECH_NAMES`).
Name = str

#: Every image architecture :func:`from_name` knows, in display order.
NAMES: tuple[str, ...] = tuple(n for n, a in spec.ARCHS.items() if not a.speech)
#: The speech architectures :func:`from_name` knows.
SPEECH_NAMES: tuple[str, ...] = tuple(n for n, a in spec.ARCHS.items() if a.speech)
#: Registry rows by public class name (the family classes included).
BY_CLASS: dict[str, spec.Arch] = {
    **{a.family_class: a for a in spec.ARCHS.values()},
    **{a.class_name: a for a in spec.ARCHS.values()},
}


@functools.cache
def linen_class(class_name: str) -> type[Any]:
    """The linen class called ``class_name``: a family class, or a row's generated variant."""
    from sepconv_jax.models._build import variant

    arch = BY_CLASS[class_name]
    family = getattr(
        importlib.import_module(f"sepconv_jax.models.{arch.family}"), arch.family_class
    )
    return family if class_name == arch.family_class else variant(family, arch)


def nnx_class(class_name: str) -> type[Any]:
    """The NNX class called ``class_name`` (generated once from the linen class)."""
    from sepconv_jax.models import _build

    arch = BY_CLASS[class_name]
    module = "sepconv_jax.models.speech_nnx" if arch.speech else "sepconv_jax.models.nnx"
    importlib.import_module(module)  # the speech module gives its own NNX bases
    return _build.nnx_class(linen_class(class_name), module)


def from_name(
    name: str,
    *,
    api: Literal["linen", "nnx"] = "linen",
    width_multiplier: float = 1.0,
    num_classes: int | None = None,
    full_convolution: bool = False,
    rngs: Any = None,
    **options: Any,
) -> Any:
    """The model-zoo architecture called ``name``, with the options it has, in either API.

    Args:
      name: one of :data:`NAMES` (``"mobilenet_v1"``, ``"mobilenet_v2"``,
        ``"mobilenet_v3_small"``, ``"mobilenet_v3_large"``, ``"efficientnet_b0"`` ...
        ``"efficientnet_b7"``, ``"xception"``, ``"convnext_tiny"``,
        ``"convnext_small"``, ``"convnext_base"``) or :data:`SPEECH_NAMES`
        (``"matchboxnet"``, ``"quartznet"``).
      api: ``"linen"`` (a ``flax.linen`` module, not initialized) or ``"nnx"`` (a
        ``flax.nnx`` module, initialized from ``rngs``).
      width_multiplier: the width multiplier (MobileNets only, ``alpha`` of
        MobileNetV3; 1.0 for the others).
      num_classes: classifier outputs (``None``: the architecture's default).
      full_convolution: standard convolutions in place of the separable ones
        (``"mobilenet_v1"`` only, the MobileNet paper's Table 4 comparison).
      rngs: the NNX model's ``flax.nnx.Rngs`` (``nnx.Rngs(0)`` when omitted).
      **options: any other field of the model (``stride2_padding``, ``dtype``, ...;
        ``in_features`` for NNX).

    Returns:
      The linen or NNX module.

    Raises:
      ValueError: for an unknown name or API, or an option the architecture does not have.

    Example:
      >>> from sepconv_jax import models
      >>> model = models.from_name("mobilenet_v2", width_multiplier=0.35, num_classes=10)
      >>> type(model).__name__, model.width_multiplier, model.num_classes
      ('MobileNetV2', 0.35, 10)
      >>> models.from_name("mobilenet_v2", api="nnx", width_multiplier=0.35).conv1.kernel.shape
      (3, 3, 3, 16)
    """
    arch = spec.ARCHS.get(name) if isinstance(name, str) else None
    if arch is None:
        known = ", ".join((*NAMES, *SPEECH_NAMES))
        raise ValueError(
            f"`name` must be one of {known} (the model-zoo architectures), got {name!r}"
        )
    if api not in ("linen", "nnx"):
        raise ValueError(f"`api` must be 'linen' or 'nnx', got {api!r}")
    if full_convolution:
        if name != "mobilenet_v1":
            raise ValueError(
                f"`full_convolution` is an option of mobilenet_v1 only (the MobileNet paper's "
                f"Table 4 comparison), not of {name}"
            )
        options["full_convolution"] = True
    if width_multiplier != 1.0:
        if arch.width_option is None:
            with_width = [n for n, a in spec.ARCHS.items() if a.width_option is not None]
            raise ValueError(
                f"{name} has no width multiplier; got `width_multiplier`={width_multiplier}, "
                f"only {' and '.join(with_width)} take one"
            )
        options[arch.width_option] = width_multiplier
    if num_classes is not None:
        options["num_classes"] = num_classes
    if api == "linen":
        return linen_class(arch.class_name)(**options)
    from flax import nnx

    return nnx_class(arch.class_name)(**options, rngs=nnx.Rngs(0) if rngs is None else rngs)
