"""The cost model: mult-adds and parameters of layers, JAX functions and Flax models.

Three levels, all in the convention of the MobileNet paper (Howard et al., 2017):
one *mult-add* is one multiply-accumulate of a convolution or a matrix multiply;
bias additions, batch norm, activations and pooling are not counted, and every
window tap counts, including taps that fall on padding (``D_K^2 * D_F^2`` per
filter, as the paper writes it).

* Closed forms for one layer: :func:`standard_conv_cost`, :func:`depthwise_conv_cost`,
  :func:`pointwise_conv_cost`, :func:`separable_conv_cost`, :func:`grouped_conv_cost`,
  each returning a :class:`Cost`, and the seed's :func:`savings_factor`
  ``k^2 N / (k^2 + N)`` (in ``_analytic``).
* :func:`count` traces any JAX function to a jaxpr (nothing is computed) and
  counts every ``conv_general_dilated`` and ``dot_general`` in it, through ``jit``,
  ``vmap``, ``scan`` (times its length), ``remat``, ``cond`` (the most expensive
  branch) and custom-derivative boundaries (in ``_count``).
* :func:`profile` does the same for a Flax linen or NNX module and attributes each
  parameter to the operation that consumes it, giving a per-layer table and a
  per-kind summary (:class:`Profile`, in ``_profile``).

Every counted operation has a :data:`Kind`, one of :data:`KINDS`, and the least
bytes it moves (its operands read once, its result written once), hence an
arithmetic intensity in mult-adds per byte; figures for the backward pass follow
from each op's two transposes.

* :func:`roofline` predicts each layer's time on a :class:`Device` as
  ``max(2 * mult_adds / peak_flops, bytes / bandwidth)``; :data:`DEVICES` holds
  datasheet figures (H100, A100, TPU v5e, TPU v4) and :meth:`Device.measure`
  measures this machine. ``profile(..., measure=True)`` times every layer alone,
  and the :class:`Roofline` sets the measured times beside the prediction (in
  ``_roofline`` and ``_measure``).

Relation to XLA: for a function made of convolutions with ``"VALID"`` padding and
matrix multiplies, ``jax.jit(f).lower(...).compile().cost_analysis()["flops"]`` is
exactly ``2 * count(f, ...).mult_adds``. With padding XLA skips the taps that land
on padding, so its figure is smaller by twice the number of such taps.
"""

from typing import Any

from sepconv_jax import _lazy
from sepconv_jax.cost._analytic import Cost as Cost
from sepconv_jax.cost._analytic import depthwise_conv_cost as depthwise_conv_cost
from sepconv_jax.cost._analytic import grouped_conv_cost as grouped_conv_cost
from sepconv_jax.cost._analytic import pointwise_conv_cost as pointwise_conv_cost
from sepconv_jax.cost._analytic import savings_factor as savings_factor
from sepconv_jax.cost._analytic import separable_conv_cost as separable_conv_cost
from sepconv_jax.cost._analytic import standard_conv_cost as standard_conv_cost
from sepconv_jax.cost._count import KINDS as KINDS
from sepconv_jax.cost._count import OPAQUE_PRIMITIVES as OPAQUE_PRIMITIVES
from sepconv_jax.cost._count import Count as Count
from sepconv_jax.cost._count import Kind as Kind
from sepconv_jax.cost._count import OpCost as OpCost
from sepconv_jax.cost._count import UnattributedWarning as UnattributedWarning
from sepconv_jax.cost._count import count as count
from sepconv_jax.cost._profile import LayerCost as LayerCost
from sepconv_jax.cost._profile import Profile as Profile
from sepconv_jax.cost._profile import profile as profile
from sepconv_jax.cost._roofline import DEVICES as DEVICES
from sepconv_jax.cost._roofline import Device as Device
from sepconv_jax.cost._roofline import Roofline as Roofline
from sepconv_jax.cost._roofline import RooflineRow as RooflineRow
from sepconv_jax.cost._roofline import gap_explained as gap_explained
from sepconv_jax.cost._roofline import pearson as pearson
from sepconv_jax.cost._roofline import roofline as roofline

__all__ = [
    "DEVICES",
    "KINDS",
    "OPAQUE_PRIMITIVES",
    "Cost",
    "Count",
    "Device",
    "Kind",
    "LayerCost",
    "OpCost",
    "Profile",
    "Roofline",
    "RooflineRow",
    "UnattributedWarning",
    "count",
    "depthwise_conv_cost",
    "gap_explained",
    "grouped_conv_cost",
    "pearson",
    "pointwise_conv_cost",
    "profile",
    "roofline",
    "savings_factor",
    "separable_conv_cost",
    "standard_conv_cost",
]


def __getattr__(name: str) -> Any:
    """Submodules not yet imported load on first access (PEP 562)."""
    return _lazy.submodule(__name__, __path__, globals(), name)


def __dir__() -> list[str]:
    return _lazy.listing(__path__, globals())
