"""The cost model: mult-adds and parameters of layers, JAX functions and Flax models.

Three levels, all in the convention of the MobileNet paper (Howard et al., 2017):
one *mult-add* is one multiply-accumulate of a convolution or a matrix multiply;
bias additions, batch norm, activations and pooling are not counted, and every
window tap counts, including taps that fall on padding (``D_K^2 * D_F^2`` per
filter, as the paper writes it).

* Closed forms for one layer: :func:`standard_conv_cost`, :func:`depthwise_conv_cost`,
  :func:`pointwise_conv_cost`, :func:`separable_conv_cost`, :func:`grouped_conv_cost`,
  each returning a :class:`Cost`, and the seed's :func:`savings_factor`
  ``k^2 N / (k^2 + N)``.
* :func:`count` traces any JAX function to a jaxpr (nothing is computed) and
  counts every ``conv_general_dilated`` and ``dot_general`` in it, through ``jit``,
  ``vmap``, ``scan`` (times its length), ``remat``, ``cond`` (the most expensive
  branch) and custom-derivative boundaries.
* :func:`profile` does the same for a Flax linen or NNX module and attributes each
  parameter to the operation that consumes it, giving a per-layer table and a
  per-kind summary (:class:`Profile`).

Relation to XLA: for a function made of convolutions with ``"VALID"`` padding and
matrix multiplies, ``jax.jit(f).lower(...).compile().cost_analysis()["flops"]`` is
exactly ``2 * count(f, ...).mult_adds``. With padding XLA skips the taps that land
on padding, so its figure is smaller by twice the number of such taps.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

from sepconv_jax import _spec

__all__ = [
    "KINDS",
    "OPAQUE_PRIMITIVES",
    "Cost",
    "Count",
    "LayerCost",
    "OpCost",
    "Profile",
    "UnattributedWarning",
    "count",
    "depthwise_conv_cost",
    "grouped_conv_cost",
    "layer_comparison",
    "model_profile",
    "pointwise_conv_cost",
    "profile",
    "register_cli",
    "savings_factor",
    "separable_conv_cost",
    "standard_conv_cost",
]

#: The kinds of counted operations, in display order. Parameters that no counted
#: operation consumes (batch norm scales and offsets, unused parameters) are of
#: kind ``"other"``.
KINDS: tuple[str, ...] = ("standard", "depthwise", "pointwise", "grouped", "dense")
OTHER = "other"


# ----------------------------------------------------------------------------- closed forms


@dataclasses.dataclass(frozen=True)
class Cost:
    """Mult-adds and parameters of one layer, one kind of layer or a whole model.

    Attributes:
      mult_adds: multiply-accumulates (biases and normalization not included).
      params: number of trainable parameters (biases included when present).
    """

    mult_adds: int
    params: int

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(self.mult_adds + other.mult_adds, self.params + other.params)

    @property
    def flops(self) -> int:
        """``2 * mult_adds``: one multiply and one add each, XLA's convention."""
        return 2 * self.mult_adds


def _dims(value: Any, name: str) -> tuple[int, ...] | int:
    """An int, or a non-empty sequence of positive ints, checked."""
    if _spec.is_int(value):
        return _spec.check_positive_int(value, name)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0:
        return tuple(_spec.check_positive_int(v, name) for v in value)
    raise TypeError(
        f"`{name}` must be a positive int or a non-empty sequence of positive ints, got "
        f"{type(value).__name__} {value!r}"
    )


def _window_and_positions(
    kernel_size: Any, output_spatial: Any, num_spatial_dims: int | None
) -> tuple[int, int]:
    """(taps per window, output positions), with ints broadcast over the spatial dims."""
    window = _dims(kernel_size, "kernel_size")
    out = _dims(output_spatial, "output_spatial")
    ranks = {len(v) for v in (window, out) if isinstance(v, tuple)}
    if num_spatial_dims is not None:
        ranks.add(_spec.check_positive_int(num_spatial_dims, "num_spatial_dims"))
    if len(ranks) > 1:
        raise ValueError(
            f"`kernel_size` {window!r}, `output_spatial` {out!r} and `num_spatial_dims` "
            f"{num_spatial_dims!r} disagree on the number of spatial dims ({sorted(ranks)}); "
            f"give ints or sequences of the same length"
        )
    n = ranks.pop() if ranks else 2
    window = window if isinstance(window, tuple) else (window,) * n
    out = out if isinstance(out, tuple) else (out,) * n
    return math.prod(window), math.prod(out)


def standard_conv_cost(
    kernel_size: int | Sequence[int],
    in_channels: int,
    out_channels: int,
    *,
    output_spatial: int | Sequence[int] = 1,
    use_bias: bool = False,
    num_spatial_dims: int | None = None,
) -> Cost:
    """Cost of a standard convolution: ``k^d * C * N`` mult-adds per output position.

    Args:
      kernel_size: the window, an int (the same in every spatial dim) or one per dim.
      in_channels: ``C``.
      out_channels: ``N``.
      output_spatial: the output's spatial shape, an int (the same in every dim) or
        one per dim. The default 1 gives the cost per output position.
      use_bias: count ``N`` bias parameters (biases add no mult-adds).
      num_spatial_dims: the number of spatial dims when both ``kernel_size`` and
        ``output_spatial`` are ints; default 2 (images).

    Returns:
      A :class:`Cost` with ``mult_adds = k^d * C * N * positions`` and
      ``params = k^d * C * N (+ N)``.

    Raises:
      ValueError: for non-positive sizes or disagreeing spatial ranks.
      TypeError: for non-integer sizes.

    Example:
      >>> from sepconv_jax.cost import standard_conv_cost
      >>> standard_conv_cost(3, 256, 256, output_spatial=28)
      Cost(mult_adds=462422016, params=589824)
    """
    taps, positions = _window_and_positions(kernel_size, output_spatial, num_spatial_dims)
    c = _spec.check_positive_int(in_channels, "in_channels")
    n = _spec.check_positive_int(out_channels, "out_channels")
    weights = taps * c * n
    return Cost(weights * positions, weights + (n if use_bias else 0))


def grouped_conv_cost(
    kernel_size: int | Sequence[int],
    in_channels: int,
    out_channels: int,
    *,
    groups: int = 1,
    output_spatial: int | Sequence[int] = 1,
    use_bias: bool = False,
    num_spatial_dims: int | None = None,
) -> Cost:
    """Cost of a grouped convolution: ``k^d * (C / groups) * N`` mult-adds per position.

    Args:
      kernel_size, in_channels, out_channels, output_spatial, use_bias,
        num_spatial_dims: as in :func:`standard_conv_cost`.
      groups: feature groups; must divide ``in_channels`` and ``out_channels``.

    Returns:
      A :class:`Cost`; ``groups=1`` is :func:`standard_conv_cost`.

    Raises:
      ValueError: when ``groups`` does not divide the channel counts, and as
        :func:`standard_conv_cost`.
      TypeError: as :func:`standard_conv_cost`.

    Example:
      >>> from sepconv_jax.cost import grouped_conv_cost
      >>> grouped_conv_cost(3, 64, 128, groups=4)  # 9 * 16 * 128
      Cost(mult_adds=18432, params=18432)
    """
    taps, positions = _window_and_positions(kernel_size, output_spatial, num_spatial_dims)
    c = _spec.check_positive_int(in_channels, "in_channels")
    n = _spec.check_positive_int(out_channels, "out_channels")
    g = _spec.check_positive_int(groups, "groups")
    if c % g or n % g:
        raise ValueError(f"`groups`={g} must divide both `in_channels`={c} and `out_channels`={n}")
    weights = taps * (c // g) * n
    return Cost(weights * positions, weights + (n if use_bias else 0))


def depthwise_conv_cost(
    kernel_size: int | Sequence[int],
    in_channels: int,
    out_channels: int | None = None,
    *,
    depth_multiplier: int | None = None,
    output_spatial: int | Sequence[int] = 1,
    use_bias: bool = False,
    num_spatial_dims: int | None = None,
) -> Cost:
    """Cost of a depthwise convolution: ``k^d * C * M`` mult-adds per output position.

    Args:
      kernel_size, in_channels, output_spatial, num_spatial_dims: as in
        :func:`standard_conv_cost`.
      out_channels: ``C * M``; may be left out when ``depth_multiplier`` is given
        (or both left out for ``M = 1``).
      depth_multiplier: ``M``, output channels per input channel.
      use_bias: count ``C * M`` bias parameters.

    Returns:
      A :class:`Cost` with ``mult_adds = k^d * C * M * positions``.

    Raises:
      ValueError: when ``out_channels`` is not ``in_channels * depth_multiplier``,
        and as :func:`standard_conv_cost`.
      TypeError: as :func:`standard_conv_cost`.

    Example:
      >>> from sepconv_jax.cost import depthwise_conv_cost
      >>> depthwise_conv_cost(3, 256, output_spatial=28)  # 9 * 256 * 28 * 28
      Cost(mult_adds=1806336, params=2304)
    """
    taps, positions = _window_and_positions(kernel_size, output_spatial, num_spatial_dims)
    c = _spec.check_positive_int(in_channels, "in_channels")
    m = (
        None
        if depth_multiplier is None
        else _spec.check_positive_int(depth_multiplier, "depth_multiplier")
    )
    if out_channels is not None:
        n = _spec.check_positive_int(out_channels, "out_channels")
        if n % c or (m is not None and n != c * m):
            expected = f"{c} * {m} = {c * m}" if m is not None else f"a multiple of {c}"
            raise ValueError(
                f"`out_channels`={n} but a depthwise conv of `in_channels`={c} has "
                f"`in_channels * depth_multiplier` outputs: expected {expected}"
            )
        m = n // c
    m = 1 if m is None else m
    weights = taps * c * m
    return Cost(weights * positions, weights + (c * m if use_bias else 0))


def pointwise_conv_cost(
    in_channels: int,
    out_channels: int,
    *,
    output_spatial: int | Sequence[int] = 1,
    use_bias: bool = False,
    num_spatial_dims: int | None = None,
) -> Cost:
    """Cost of a pointwise (1x1) convolution: ``C * N`` mult-adds per output position.

    Args:
      in_channels, out_channels, output_spatial, use_bias, num_spatial_dims: as in
        :func:`standard_conv_cost`.

    Returns:
      A :class:`Cost` with ``mult_adds = C * N * positions``.

    Raises:
      ValueError, TypeError: as :func:`standard_conv_cost`.

    Example:
      >>> from sepconv_jax.cost import pointwise_conv_cost
      >>> pointwise_conv_cost(256, 256, output_spatial=28, use_bias=True)
      Cost(mult_adds=51380224, params=65792)
    """
    return standard_conv_cost(
        1,
        in_channels,
        out_channels,
        output_spatial=output_spatial,
        use_bias=use_bias,
        num_spatial_dims=num_spatial_dims,
    )


def separable_conv_cost(
    kernel_size: int | Sequence[int],
    in_channels: int,
    out_channels: int,
    *,
    depth_multiplier: int = 1,
    output_spatial: int | Sequence[int] = 1,
    use_bias: bool = False,
    use_depthwise_bias: bool = False,
    num_spatial_dims: int | None = None,
) -> Cost:
    """Cost of a depthwise separable convolution: ``k^d * C * M + C * M * N`` per position.

    The depthwise step (stride and padding apply there) and the pointwise step
    produce the same number of positions, ``output_spatial``.

    Args:
      kernel_size, in_channels, out_channels, output_spatial, num_spatial_dims: as in
        :func:`standard_conv_cost`.
      depth_multiplier: ``M`` of the depthwise step.
      use_bias: count the ``N`` biases of the output.
      use_depthwise_bias: count ``C * M`` biases between the steps.

    Returns:
      A :class:`Cost`, the sum of :func:`depthwise_conv_cost` and
      :func:`pointwise_conv_cost`.

    Raises:
      ValueError, TypeError: as :func:`standard_conv_cost`.

    Example:
      >>> from sepconv_jax.cost import separable_conv_cost
      >>> separable_conv_cost(3, 256, 256, output_spatial=28)  # (9 * 256 + 256 * 256) * 784
      Cost(mult_adds=53186560, params=67840)
    """
    m = _spec.check_positive_int(depth_multiplier, "depth_multiplier")
    depthwise = depthwise_conv_cost(
        kernel_size,
        in_channels,
        depth_multiplier=m,
        output_spatial=output_spatial,
        use_bias=use_depthwise_bias,
        num_spatial_dims=num_spatial_dims,
    )
    pointwise = pointwise_conv_cost(
        _spec.check_positive_int(in_channels, "in_channels") * m,
        out_channels,
        output_spatial=output_spatial,
        use_bias=use_bias,
        num_spatial_dims=num_spatial_dims
        if num_spatial_dims is not None
        else _rank_of(kernel_size, output_spatial),
    )
    return depthwise + pointwise


def _rank_of(kernel_size: Any, output_spatial: Any) -> int | None:
    for value in (kernel_size, output_spatial):
        if isinstance(value, Sequence) and not isinstance(value, str):
            return len(value)
    return None


def savings_factor(kernel_size: int | Sequence[int], out_channels: int) -> float:
    """The seed's savings factor of a separable over a standard conv: ``k^2 N / (k^2 + N)``.

    It is the ratio of :func:`standard_conv_cost` to :func:`separable_conv_cost`
    mult-adds (depth multiplier 1), independent of the input channels and of the
    output size: ``k^2 C N / (k^2 C + C N)``. An int ``kernel_size`` means a square
    ``k x k`` window (``k^2`` taps); a sequence gives the taps as its product.

    Args:
      kernel_size: ``k``, or the window's shape.
      out_channels: ``N``.

    Returns:
      ``taps * N / (taps + N)`` as a float.

    Raises:
      ValueError, TypeError: for non-positive or non-integer sizes.

    Example:
      >>> from sepconv_jax.cost import savings_factor
      >>> round(savings_factor(3, 256), 3)  # 9 * 256 / 265
      8.694
    """
    window = _dims(kernel_size, "kernel_size")
    taps = window * window if isinstance(window, int) else math.prod(window)
    n = _spec.check_positive_int(out_channels, "out_channels")
    return taps * n / (taps + n)


# ----------------------------------------------------------------------------- count


@dataclasses.dataclass(frozen=True)
class OpCost:
    """One counted operation of a traced function.

    Attributes:
      kind: ``"standard"``, ``"depthwise"`` (feature groups equal to the input
        channels), ``"pointwise"`` (every window dim 1, one group), ``"grouped"``
        (any other grouping) or ``"dense"`` (``dot_general``).
      primitive: the jaxpr primitive it was found in: ``"conv_general_dilated"``,
        ``"dot_general"``, ``"depthwise_conv"`` (or one of its transposes) or
        ``"separable_conv"`` (which gives two ops, its depthwise and pointwise steps).
      mult_adds: mult-adds of all its executions (``calls`` times one call's).
      calls: how many times it runs per call of the function (a ``scan`` length;
        1 otherwise).
      output_shape: the shape of one execution's result.
      window: the kernel's spatial shape (empty for ``dot_general``).
      feature_groups: ``feature_group_count`` (1 for ``dot_general``).
      name: the JAX name stack where it was traced (the Flax linen module path
        under ``apply``), ``""`` when there is none.
    """

    kind: str
    primitive: str
    mult_adds: int
    calls: int
    output_shape: tuple[int, ...]
    window: tuple[int, ...]
    feature_groups: int
    name: str


@dataclasses.dataclass(frozen=True)
class Count:
    """What :func:`count` found in a function.

    Attributes:
      mult_adds: total mult-adds.
      by_kind: mult-adds per kind, for every kind in :data:`KINDS` (zeros included).
      ops: every counted operation in trace order.
      unattributed: opaque primitives met (name -> executions per call), whose
        arithmetic the jaxpr does not show (:data:`OPAQUE_PRIMITIVES`); their
        mult-adds are missing from the totals. Empty when everything was seen.
    """

    mult_adds: int
    by_kind: Mapping[str, int]
    ops: tuple[OpCost, ...]
    unattributed: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @property
    def flops(self) -> int:
        """``2 * mult_adds``, comparable with XLA's ``cost_analysis()["flops"]``."""
        return 2 * self.mult_adds

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict of the counts."""
        return {
            "mult_adds": self.mult_adds,
            "by_kind": dict(self.by_kind),
            "ops": [dataclasses.asdict(op) for op in self.ops],
            "unattributed": dict(self.unattributed),
        }


@dataclasses.dataclass
class _Op:
    kind: str
    primitive: str
    mult_adds: int
    calls: int
    output_shape: tuple[int, ...]
    window: tuple[int, ...]
    feature_groups: int
    name: str
    path: str = ""
    display_shape: tuple[int, ...] = ()

    def public(self) -> OpCost:
        return OpCost(
            kind=self.kind,
            primitive=self.primitive,
            mult_adds=self.mult_adds,
            calls=self.calls,
            output_shape=self.output_shape,
            window=self.window,
            feature_groups=self.feature_groups,
            name=self.name,
        )


def _conv_op(eqn: Any) -> tuple[str, int, tuple[int, ...], tuple[int, ...], int]:
    """(kind, mult-adds of one call, output shape, window, groups) of a conv eqn."""
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    out = tuple(eqn.outvars[0].aval.shape)
    dn = eqn.params["dimension_numbers"]
    lhs_spec, rhs_spec = dn.lhs_spec, dn.rhs_spec
    window = tuple(int(rhs[d]) for d in rhs_spec[2:])
    rhs_in = int(rhs[rhs_spec[1]])
    channels = int(lhs[lhs_spec[1]])
    groups = int(eqn.params.get("feature_group_count", 1))
    batch_groups = int(eqn.params.get("batch_group_count", 1))
    # Every output element accumulates one window of taps over the kernel's in-dim
    # (channels // groups); with batch groups the in-dim is already per group.
    mult_adds = math.prod(out) * math.prod(window) * rhs_in
    if batch_groups > 1:
        kind = "grouped"
    elif groups > 1 and groups == channels:
        kind = "depthwise"
    elif groups > 1:
        kind = "grouped"
    elif all(w == 1 for w in window):
        kind = "pointwise"
    else:
        kind = "standard"
    return kind, mult_adds, out, window, max(groups, batch_groups)


def _dot_op(eqn: Any) -> tuple[str, int, tuple[int, ...], tuple[int, ...], int]:
    lhs = eqn.invars[0].aval.shape
    out = tuple(eqn.outvars[0].aval.shape)
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    mult_adds = math.prod(out) * math.prod(int(lhs[d]) for d in lhs_contract)
    return "dense", mult_adds, out, (), 1


def _depthwise_op(eqn: Any) -> tuple[str, int, tuple[int, ...], tuple[int, ...], int]:
    """A primitive of :mod:`sepconv_jax.kernels.op`: the convolution or a transpose.

    Each of the three bilinear maps pairs every output element of the convolution
    with every tap of its window once, so each costs the forward's mult-adds:
    ``batch * prod(out_spatial) * C * M * prod(window)``, whatever kernel runs it.
    """
    spec = eqn.params["spec"]
    out = tuple(eqn.outvars[0].aval.shape)
    positions = math.prod(spec.batch_shape) * math.prod(spec.out_spatial)
    mult_adds = positions * spec.out_channels * math.prod(spec.window)
    return "depthwise", mult_adds, out, tuple(spec.window), spec.groups


# ----------------------------------------------------------------------------- separable op
# The separable primitive of :mod:`sepconv_jax.kernels.separable` is one equation in
# a jaxpr but two operations: the depthwise step and the pointwise step, counted and
# attributed exactly as the unfused pair (its transposes are made of the depthwise
# primitives and 1x1 convolutions, counted by the rules above).


def _separable_ops(
    eqn: Any,
) -> list[tuple[int, tuple[str, int, tuple[int, ...], tuple[int, ...], int]]]:
    """The separable primitive's two operations, each with the operand index of its
    weight: the depthwise step (weight: the depthwise kernel, operand 1) and the
    pointwise step (weight: the pointwise kernel, operand 2)."""
    spec = eqn.params["spec"]
    out = tuple(eqn.outvars[0].aval.shape)
    out_channels = int(eqn.invars[2].aval.shape[1])
    positions = math.prod(spec.batch_shape) * math.prod(spec.out_spatial)
    depthwise = (
        "depthwise",
        positions * spec.out_channels * math.prod(spec.window),
        spec.flat_shape(spec.out_spatial, spec.out_channels),
        tuple(spec.window),
        spec.groups,
    )
    pointwise = (
        "pointwise",
        positions * spec.out_channels * out_channels,
        out,
        (1,) * len(spec.window),
        1,
    )
    return [(1, depthwise), (2, pointwise)]


#: Primitives that count as several operations, in order (see :func:`_separable_ops`).
_COUNTED_SEVERAL = {"separable_conv": _separable_ops}

_COUNTED = {
    "conv_general_dilated": _conv_op,
    "dot_general": _dot_op,
    "depthwise_conv": _depthwise_op,
    "depthwise_conv_input_transpose": _depthwise_op,
    "depthwise_conv_kernel_transpose": _depthwise_op,
}
#: Primitives whose arithmetic is hidden from the jaxpr (a hand-written kernel, a
#: foreign function, a host callback): :func:`count` cannot attribute their work,
#: reports them in ``unattributed`` and warns, rather than counting them as zero.
OPAQUE_PRIMITIVES = frozenset(
    {
        "pallas_call",
        "custom_call",
        "ffi_call",
        "pure_callback",
        "io_callback",
        "callback",
        "triton_kernel_call",
    }
)
_SHAPE_FOLLOWERS = frozenset({"reshape", "convert_element_type", "add", "copy", "squeeze"})


@dataclasses.dataclass(frozen=True)
class _State:
    """Dataflow facts about one jaxpr variable.

    ``params``: parameter leaves it derives from without passing a counted op;
    ``last_op``: the latest counted op it derives from (an activation), or None.
    """

    params: frozenset[int] = frozenset()
    last_op: int | None = None


_EMPTY = _State()


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix and name else (prefix or name)


def _subjaxprs(params: Mapping[str, Any]) -> list[Any]:
    found = []
    for value in params.values():
        values = value if isinstance(value, tuple | list) else (value,)
        found.extend(v for v in values if isinstance(v, jcore.Jaxpr | jcore.ClosedJaxpr))
    return found


def _open(jaxpr: Any) -> jcore.Jaxpr:
    return jaxpr.jaxpr if isinstance(jaxpr, jcore.ClosedJaxpr) else jaxpr


class _Walker:
    """Walks a jaxpr, recording counted ops and which op consumes which parameter."""

    def __init__(self, param_paths: Sequence[tuple[str, ...]] = (), track: bool = True):
        self.ops: list[_Op] = []
        self.param_paths = list(param_paths)
        self.track = track
        # parameter leaf -> ("op", op index) or ("other", index of the op it met).
        self.owner: dict[int, tuple[str, int]] = {}
        # The latest variable holding an op's result, up to reshapes, casts and bias
        # adds: its shape is the layer's output shape (e.g. a pointwise conv traced
        # on flattened positions and reshaped back).
        self.tails: dict[Any, int] = {}
        # Opaque primitives met (name -> executions per call), see OPAQUE_PRIMITIVES.
        self.unattributed: dict[str, int] = {}

    # -- attribution

    def _module(self, leaf: int) -> str:
        return "/".join(self.param_paths[leaf][:-1])

    def _attach(self, leaves: frozenset[int], op: int) -> None:
        """Gives unowned leaves to ``op`` when they live in its module, else to "other"."""
        for leaf in sorted(leaves):
            if leaf in self.owner:
                continue
            same = self._module(leaf) == self.ops[op].path
            self.owner[leaf] = ("op" if same else OTHER, op)

    def _combine(self, states: Sequence[_State]) -> _State:
        ops = [s.last_op for s in states if s.last_op is not None]
        params = frozenset().union(*(s.params for s in states))
        if not ops:
            return _State(params, None)
        last = max(ops)
        if params and self.track:
            self._attach(params, last)
        return _State(frozenset(), last)

    # -- walking

    def walk(
        self, jaxpr: Any, in_states: Sequence[_State], calls: int, prefix: str
    ) -> list[_State]:
        jaxpr = _open(jaxpr)
        env: dict[Any, _State] = {}
        for var, state in zip(jaxpr.invars, in_states, strict=True):
            env[var] = state

        def read(var: Any) -> _State:
            if isinstance(var, jcore.Literal):
                return _EMPTY
            return env.get(var, _EMPTY)

        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            name = _join(prefix, str(eqn.source_info.name_stack))
            prim = eqn.primitive.name
            if prim in _COUNTED:
                outs = [self._counted(eqn, ins, calls, name)] * len(eqn.outvars)
                self.tails[eqn.outvars[0]] = outs[0].last_op
            elif prim in _COUNTED_SEVERAL:
                outs = [self._counted_several(eqn, ins, calls, name)] * len(eqn.outvars)
                self.tails[eqn.outvars[0]] = outs[0].last_op
            elif prim in OPAQUE_PRIMITIVES:
                self.unattributed[prim] = self.unattributed.get(prim, 0) + calls
                outs = [self._combine(ins)] * len(eqn.outvars)
            else:
                outs = self._higher_order(eqn, ins, calls, name)
                self._follow_shape(eqn, ins)
            for var, state in zip(eqn.outvars, outs, strict=True):
                env[var] = state
        return [read(v) for v in jaxpr.outvars]

    def _follow_shape(self, eqn: Any, ins: list[_State]) -> None:
        if eqn.primitive.name not in _SHAPE_FOLLOWERS or len(eqn.outvars) != 1:
            return
        tails = [
            self.tails[v]
            for v in eqn.invars
            if not isinstance(v, jcore.Literal) and v in self.tails
        ]
        activations = [s for s in ins if s.last_op is not None]
        if len(tails) == 1 and len(activations) == 1:
            self.tails[eqn.outvars[0]] = tails[0]
            op, shape = self.ops[tails[0]], tuple(eqn.outvars[0].aval.shape)
            if len(shape) >= len(op.display_shape):  # the least flattened view
                op.display_shape = shape

    def _counted(self, eqn: Any, ins: list[_State], calls: int, name: str) -> _State:
        facts = _COUNTED[eqn.primitive.name](eqn)
        return self._record(eqn.primitive.name, facts, ins, calls, name)

    def _counted_several(self, eqn: Any, ins: list[_State], calls: int, name: str) -> _State:
        """One op per step of a multi-step primitive; each step's input is the
        previous step's result (the first step's, the primitive's first operand) and
        its weight the operand the rule names."""
        state = ins[0]
        for weight, facts in _COUNTED_SEVERAL[eqn.primitive.name](eqn):
            state = self._record(eqn.primitive.name, facts, [state, ins[weight]], calls, name)
        return state

    def _record(
        self, primitive: str, facts: tuple, ins: list[_State], calls: int, name: str
    ) -> _State:
        """Records one counted op whose operands (activation, weight) have ``ins``."""
        kind, mult_adds, out, window, groups = facts
        index = len(self.ops)
        op = _Op(kind, primitive, mult_adds * calls, calls, out, window, groups, name)
        op.display_shape = out
        self.ops.append(op)
        if self.track:
            lhs, rhs = ins[0], ins[1]
            weight = rhs if rhs.params or not lhs.params else lhs
            if weight.params:
                op.path = _common_prefix([self.param_paths[i][:-1] for i in weight.params])
                for leaf in weight.params:
                    self.owner.setdefault(leaf, ("op", index))
            else:
                op.path = name
            self._attach(frozenset().union(*(s.params for s in ins)), index)
        return _State(frozenset(), index)

    def _higher_order(self, eqn: Any, ins: list[_State], calls: int, name: str) -> list[_State]:
        prim, params = eqn.primitive.name, eqn.params
        n_out = len(eqn.outvars)
        if prim == "scan":
            return self.walk(params["jaxpr"], ins, calls * int(params["length"]), name)
        if prim == "while":
            nc, nb = params["cond_nconsts"], params["body_nconsts"]
            carry = ins[nc + nb :]
            self.walk(params["cond_jaxpr"], ins[:nc] + carry, calls, name)
            return self.walk(params["body_jaxpr"], ins[nc : nc + nb] + carry, calls, name)
        if prim == "cond":
            branches = params["branches"]
            totals = []
            for branch in branches:
                dry = _Walker(track=False)
                dry.walk(branch, [_EMPTY] * len(ins[1:]), calls, name)
                totals.append(sum(op.mult_adds for op in dry.ops))
            chosen = branches[int(np.argmax(totals))]
            return self.walk(chosen, ins[1:], calls, name)
        subs = _subjaxprs(params)
        if not subs:
            return [self._combine(ins)] * n_out
        outs = None
        for sub in subs:
            inner = _open(sub)
            sub_ins = (
                ins if len(inner.invars) == len(ins) else [self._combine(ins)] * len(inner.invars)
            )
            result = self.walk(sub, sub_ins, calls, name)
            if outs is None and len(result) == n_out:
                outs = result
        return outs if outs is not None else [self._combine(ins)] * n_out


def _common_prefix(paths: Sequence[tuple[str, ...]]) -> str:
    first = paths[0]
    size = len(first)
    for path in paths[1:]:
        size = min(size, len(path))
        for i in range(size):
            if path[i] != first[i]:
                size = i
                break
    return "/".join(first[:size])


def _is_array_leaf(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct)


def _trace(fn: Callable, args: tuple, kwargs: dict) -> tuple[jcore.ClosedJaxpr, int]:
    """Traces ``fn(*args, **kwargs)`` with array leaves abstract and the rest static.

    Returns the closed jaxpr and the number of traced leaves (the jaxpr's invars,
    in ``jax.tree.flatten((args, kwargs))`` order).
    """
    leaves, treedef = jax.tree.flatten((args, kwargs))
    dynamic = [i for i, leaf in enumerate(leaves) if _is_array_leaf(leaf)]

    def flat_fn(*dynamic_leaves):
        full = list(leaves)
        for i, leaf in zip(dynamic, dynamic_leaves, strict=True):
            full[i] = leaf
        a, k = jax.tree.unflatten(treedef, full)
        return fn(*a, **k)

    closed = jax.make_jaxpr(flat_fn)(*(leaves[i] for i in dynamic))
    return closed, len(dynamic)


def _check_callable(fn: Any, name: str) -> None:
    if not callable(fn):
        raise TypeError(f"`{name}` must be a callable, got {type(fn).__name__} {fn!r}")


def count(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Count:
    """Counts the mult-adds of every convolution and matrix multiply in ``fn``.

    ``fn(*args, **kwargs)`` is traced to a jaxpr with :func:`jax.make_jaxpr`; nothing
    is computed, so ``args`` may be :class:`jax.ShapeDtypeStruct` placeholders. Array
    leaves of ``args``/``kwargs`` are traced; every other leaf (ints, strings,
    ``None``) is passed through unchanged, so options such as ``strides=2`` stay
    static. The walk descends into ``jit``, ``remat``/``checkpoint``,
    ``custom_vjp``/``custom_jvp`` and any other call-like primitive; ``vmap`` needs
    nothing special (its batch dims are in the traced shapes); a ``scan`` (and a
    ``fori_loop`` with static bounds, which becomes one) multiplies its body by its
    length; a ``cond``/``switch`` counts its most expensive branch; a ``while_loop``
    body is counted once, since its trip count is not known when tracing.

    Per call, a ``conv_general_dilated`` with output shape ``out`` and a kernel of
    window ``w`` and in-dim ``c_g`` (channels per group) costs
    ``prod(out) * prod(w) * c_g`` mult-adds: every tap counts, including taps on
    padding and on the zeros of an input dilation. A ``dot_general`` costs
    ``prod(out) * prod(contracted dims)``. Kinds: ``"depthwise"`` when the feature
    groups equal the input channels (and exceed 1), ``"grouped"`` for other
    groupings (and for ``batch_group_count > 1``, as in a depthwise kernel's
    gradient), ``"pointwise"`` for one group and an all-ones window, ``"standard"``
    otherwise, ``"dense"`` for every ``dot_general`` (including ``jnp.einsum`` and
    ``@``). Elementwise work (bias, normalization, activations) is not counted.

    A depthwise convolution of :mod:`sepconv_jax` is one primitive in the jaxpr
    (:mod:`sepconv_jax.kernels.op`), whichever kernel ``impl`` names: it and its two
    transposes (the input and kernel gradients) count ``prod(out) * prod(w)`` each,
    with ``out`` the convolution's output, of kind ``"depthwise"``. Hand-written
    elementwise multiply-accumulates are elementwise work and not counted. A
    separable convolution without depthwise bias is one primitive too
    (:mod:`sepconv_jax.kernels.separable`, fused or not): it counts as its two steps,
    a ``"depthwise"`` op and a ``"pointwise"`` op with the unfused pair's mult-adds
    and parameters (primitive ``"separable_conv"`` on both).
    Primitives whose arithmetic the jaxpr hides (``pallas_call``, foreign function
    calls, host callbacks: :data:`OPAQUE_PRIMITIVES`) are listed in
    ``Count.unattributed`` with a warning, never counted as zero in silence.

    Args:
      fn: any function of arrays.
      *args: its positional arguments: arrays, :class:`jax.ShapeDtypeStruct`, or
        pytrees of them, plus any static values.
      **kwargs: its keyword arguments, treated the same way.

    Returns:
      A :class:`Count` with the total, a per-kind total and every operation.

    Raises:
      TypeError: when ``fn`` is not callable.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sepconv_jax import separable_conv
      >>> from sepconv_jax.cost import count, separable_conv_cost
      >>> x = jax.ShapeDtypeStruct((1, 28, 28, 256), jnp.float32)
      >>> dk = jax.ShapeDtypeStruct((3, 3, 1, 256), jnp.float32)
      >>> pk = jax.ShapeDtypeStruct((256, 256), jnp.float32)
      >>> c = count(separable_conv, x, dk, pk)
      >>> c.by_kind["depthwise"], c.by_kind["pointwise"]
      (1806336, 51380224)
      >>> c.mult_adds == separable_conv_cost(3, 256, 256, output_spatial=28).mult_adds
      True
    """
    _check_callable(fn, "fn")
    closed, n_in = _trace(fn, args, kwargs)
    walker = _Walker(track=False)
    walker.walk(closed, [_EMPTY] * n_in, 1, "")
    _warn_unattributed(walker.unattributed)
    by_kind = dict.fromkeys(KINDS, 0)
    for op in walker.ops:
        by_kind[op.kind] += op.mult_adds
    return Count(
        mult_adds=sum(by_kind.values()),
        by_kind=by_kind,
        ops=tuple(op.public() for op in walker.ops),
        unattributed=dict(walker.unattributed),
    )


class UnattributedWarning(UserWarning):
    """Some of a counted function's arithmetic is hidden in opaque primitives."""


def _warn_unattributed(unattributed: Mapping[str, int]) -> None:
    if unattributed:
        found = ", ".join(f"{name} x{n}" for name, n in sorted(unattributed.items()))
        warnings.warn(
            f"the traced function calls primitives whose arithmetic is not visible to the "
            f"cost model ({found}); their mult-adds are not in the totals",
            UnattributedWarning,
            stacklevel=3,
        )


# ----------------------------------------------------------------------------- profile


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """One row of a :class:`Profile`: a counted operation, or uncounted parameters.

    Attributes:
      path: the module path (``"block1/depthwise"``), from the parameters the
        operation consumes or, for an operation without parameters, from the
        linen name stack.
      kind: one of :data:`KINDS`, or ``"other"`` for parameters no counted
        operation consumes (batch norm, unused parameters).
      output_shape: the operation's result shape (``None`` for ``"other"`` rows).
      mult_adds: mult-adds of this row.
      params: parameters attributed to this row (its kernel and bias).
    """

    path: str
    kind: str
    output_shape: tuple[int, ...] | None
    mult_adds: int
    params: int


def _fmt_int(value: int) -> str:
    return f"{value:,}"


def _pct(part: int, total: int) -> str:
    return f"{100 * part / total:.2f}%" if total else "-"


@dataclasses.dataclass(frozen=True)
class Profile:
    """Where a model's mult-adds and parameters go.

    Attributes:
      mult_adds: total mult-adds of one call (for the batch given to :func:`profile`).
      params: total parameters of the ``params`` collection (or the NNX ``Param``
        state), counted or not.
      layers: one :class:`LayerCost` per counted operation in trace order, each
        followed by the ``"other"`` parameters (per module) first met on its output.
      by_kind: a :class:`Cost` per kind present, in :data:`KINDS` order, then
        ``"other"``.
      unattributed: opaque primitives met, as in :attr:`Count.unattributed`.

    ``print(profile)`` shows both tables; ``rich.print(profile)`` renders them in
    colour; :meth:`to_dict` gives plain data.
    """

    mult_adds: int
    params: int
    layers: tuple[LayerCost, ...]
    by_kind: Mapping[str, Cost]
    unattributed: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict: totals, ``by_kind`` and ``layers``."""
        return {
            "mult_adds": self.mult_adds,
            "params": self.params,
            "by_kind": {k: dataclasses.asdict(v) for k, v in self.by_kind.items()},
            "layers": [dataclasses.asdict(row) for row in self.layers],
            "unattributed": dict(self.unattributed),
        }

    def kind_table(self, title: str | None = "Cost by kind"):
        """The per-kind summary as a :class:`rich.table.Table`, with shares."""
        from rich.table import Table

        table = Table(title=title)
        for col in ("kind", "mult-adds", "share", "params", "share "):
            table.add_column(col, justify="left" if col == "kind" else "right")
        for kind, cost in self.by_kind.items():
            table.add_row(
                kind,
                _fmt_int(cost.mult_adds),
                _pct(cost.mult_adds, self.mult_adds),
                _fmt_int(cost.params),
                _pct(cost.params, self.params),
            )
        table.add_row(
            "total", _fmt_int(self.mult_adds), "", _fmt_int(self.params), "", style="bold"
        )
        return table

    def table(self, title: str | None = "Cost by layer"):
        """The per-layer table as a :class:`rich.table.Table`."""
        from rich.table import Table

        table = Table(title=title)
        for col in ("module", "kind", "output shape", "mult-adds", "params"):
            table.add_column(col, justify="right" if col in ("mult-adds", "params") else "left")
        for row in self.layers:
            shape = "" if row.output_shape is None else "x".join(map(str, row.output_shape))
            table.add_row(
                row.path or "(root)",
                row.kind,
                shape,
                _fmt_int(row.mult_adds),
                _fmt_int(row.params),
            )
        return table

    def __rich_console__(self, console, options):
        yield self.kind_table()
        yield self.table()

    def render(self, width: int = 100) -> str:
        """Both tables as plain text."""
        from rich.console import Console

        buffer = io.StringIO()
        console = Console(
            file=buffer, width=width, color_system=None, force_terminal=False, force_jupyter=False
        )
        console.print(self)
        return buffer.getvalue()

    def __str__(self) -> str:
        return self.render()


def _path_strings(path: Sequence[Any]) -> tuple[str, ...]:
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        else:
            parts.append(str(key))
    return tuple(parts)


def _leaf_size(leaf: Any) -> int:
    return int(math.prod(np.shape(leaf)))


def _linen_program(module: Any, inputs: tuple, apply_kwargs: dict, variables: Any):
    """(function of (params, rest, inputs), params, rest, name of the root scope)."""
    if variables is None:
        init_kwargs = {k: v for k, v in apply_kwargs.items() if k not in ("rngs", "mutable")}
        rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
        rngs.update(apply_kwargs.get("rngs") or {})
        variables = jax.eval_shape(lambda *a: module.init(rngs, *a, **init_kwargs), *inputs)
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError(
            f"`variables` must be a mapping with a 'params' collection, got "
            f"{type(variables).__name__} with keys {list(getattr(variables, 'keys', list)())}"
        )
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    def program(params, rest, *args):
        return module.apply({"params": params, **rest}, *args, **apply_kwargs)

    return program, params, rest


def _nnx_program(module: Any, inputs: tuple, apply_kwargs: dict):
    from flax import nnx

    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def program(params, rest, *args):
        return nnx.merge(graphdef, params, rest)(*args, **apply_kwargs)

    return program, params, rest


def profile(module: Any, *inputs: Any, variables: Any = None, **apply_kwargs: Any) -> Profile:
    """Profiles a Flax module: mult-adds and parameters per layer and per kind.

    The module's call is traced (never run), as in :func:`count`. Each parameter
    leaf is attributed by following the dataflow: a kernel belongs to the counted
    operation that consumes it; a parameter of the same module combined with that
    operation's output (a bias) belongs to it too; parameters of another module met
    there (batch norm's scale and offset), or never met at all, are ``"other"``.

    Args:
      module: a ``flax.linen.Module`` (initialized abstractly with
        :func:`jax.eval_shape` unless ``variables`` is given) or a ``flax.nnx.Module``.
      *inputs: the call's inputs: arrays or :class:`jax.ShapeDtypeStruct`
        placeholders. Counts are for this batch size; use batch 1 for per-example
        figures.
      variables: linen only: the variables to use instead of an abstract init.
      **apply_kwargs: passed to ``module.apply`` (linen: call keywords such as
        ``train=False``, and ``rngs``, ``mutable``, ``method``) or to the NNX call.

    Returns:
      A :class:`Profile`.

    Raises:
      TypeError: when ``module`` is not a Flax linen or NNX module.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import flax.linen as nn
      >>> from sepconv_jax.cost import profile
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         x = nn.Conv(8, (3, 3), feature_group_count=8, use_bias=False)(x)
      ...         x = nn.Conv(16, (1, 1))(x)
      ...         return nn.Dense(10)(x.mean((1, 2)))
      >>> p = profile(Net(), jax.ShapeDtypeStruct((1, 4, 4, 8), jnp.float32))
      >>> [(row.path, row.kind, row.mult_adds, row.params) for row in p.layers]
      [('Conv_0', 'depthwise', 1152, 72), ('Conv_1', 'pointwise', 2048, 144), ('Dense_0', 'dense', 160, 170)]
      >>> p.by_kind["pointwise"]
      Cost(mult_adds=2048, params=144)
    """
    import flax.linen as nn
    from flax import nnx

    if variables is not None and not isinstance(module, nn.Module):
        raise TypeError("`variables` is only accepted with a flax.linen.Module")
    if isinstance(module, nn.Module):
        program, params, rest = _linen_program(module, inputs, apply_kwargs, variables)
        root = type(module).__name__ if module.name is None else module.name
    elif isinstance(module, nnx.Module):
        program, params, rest = _nnx_program(module, inputs, apply_kwargs)
        root = None
    else:
        raise TypeError(
            f"`module` must be a flax.linen.Module or a flax.nnx.Module, got "
            f"{type(module).__name__}; for a plain function use `sepconv_jax.cost.count`"
        )

    leaves_with_paths = jax.tree_util.tree_flatten_with_path(params)[0]
    paths = []
    for path, _ in leaves_with_paths:
        parts = _path_strings(path)
        if parts and parts[-1] == "value" and root is None:  # nnx.Variable's value
            parts = parts[:-1]
        paths.append(parts)
    for parts, (_, leaf) in zip(paths, leaves_with_paths, strict=True):
        if not _is_array_leaf(leaf):
            raise TypeError(
                f"`variables` parameter {'/'.join(parts)} must be an array or a "
                f"jax.ShapeDtypeStruct, got {type(leaf).__name__}"
            )
    sizes = [_leaf_size(leaf) for _, leaf in leaves_with_paths]

    closed, n_in = _trace(program, (params, rest, *inputs), {})
    walker = _Walker(paths)
    states = [_State(frozenset({i}), None) for i in range(len(paths))]
    states += [_EMPTY] * (n_in - len(paths))
    walker.walk(closed, states, 1, "")
    _warn_unattributed(walker.unattributed)

    for op in walker.ops:  # a linen name stack starts with the root module's name
        if root is not None and op.path == op.name:
            head, _, tail = op.name.partition("/")
            op.path = tail if head == root else op.name

    op_params = [0] * len(walker.ops)
    others: dict[int | None, dict[str, int]] = {}
    for leaf, size in enumerate(sizes):
        where, index = walker.owner.get(leaf, (OTHER, None))
        if where == "op":
            op_params[index] += size
        else:
            group = others.setdefault(index, {})
            module_path = "/".join(paths[leaf][:-1])
            group[module_path] = group.get(module_path, 0) + size

    rows: list[LayerCost] = []
    for i, op in enumerate(walker.ops):
        rows.append(LayerCost(op.path, op.kind, op.display_shape, op.mult_adds, op_params[i]))
        for path, size in others.get(i, {}).items():
            rows.append(LayerCost(path, OTHER, None, 0, size))
    for path, size in others.get(None, {}).items():
        rows.append(LayerCost(path, OTHER, None, 0, size))

    by_kind: dict[str, Cost] = {}
    for kind in (*KINDS, OTHER):
        picked = [row for row in rows if row.kind == kind]
        if picked:
            by_kind[kind] = Cost(sum(r.mult_adds for r in picked), sum(r.params for r in picked))
    return Profile(
        mult_adds=sum(c.mult_adds for c in by_kind.values()),
        params=sum(sizes),
        layers=tuple(rows),
        by_kind=by_kind,
        unattributed=dict(walker.unattributed),
    )


# ----------------------------------------------------------------------------- CLI


def _parse_layer(spec: str) -> dict[str, Any]:
    """``"k=3,c=256,n=256,hw=28"`` -> keyword values (``m`` and ``hw`` optional)."""
    allowed = {"k", "c", "n", "hw", "m"}
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in allowed:
            raise ValueError(
                f"`--layer` entry {item!r} is not KEY=VALUE with KEY in k, c, n, hw, m; "
                f"e.g. --layer k=3,c=256,n=256,hw=28"
            )
        try:
            parts = tuple(int(p) for p in value.lower().split("x"))
        except ValueError:
            raise ValueError(f"`--layer` value {item!r} must be an int (or HxW for hw)") from None
        if key != "hw" and len(parts) != 1:
            raise ValueError(f"`--layer` value {item!r} must be one int")
        values[key] = parts if len(parts) > 1 else parts[0]
    missing = [k for k in ("k", "c", "n") if k not in values]
    if missing:
        raise ValueError(
            f"`--layer` {spec!r} lacks {', '.join(missing)}; e.g. --layer k=3,c=256,n=256,hw=28"
        )
    return values


def layer_comparison(spec: str) -> dict[str, Any]:
    """Standard vs separable cost of the layer described by a ``--layer`` spec.

    Args:
      spec: ``"k=KERNEL,c=IN,n=OUT"`` plus optional ``hw=SIZE`` (or ``hw=HxW``, the
        output's spatial size; default 1, i.e. per position) and ``m=MULTIPLIER``.

    Returns:
      A dict with the parsed sizes, a :class:`Cost` for ``"standard"``,
      ``"depthwise"``, ``"pointwise"`` and ``"separable"``, the measured ``"ratio"``
      of standard to separable mult-adds and the seed's ``"savings_factor"``.

    Raises:
      ValueError: for a malformed spec or invalid sizes.

    Example:
      >>> from sepconv_jax.cost import layer_comparison
      >>> r = layer_comparison("k=3,c=256,n=256,hw=28")
      >>> r["standard"].mult_adds, r["separable"].mult_adds, round(r["ratio"], 3)
      (462422016, 53186560, 8.694)
    """
    v = _parse_layer(spec)
    k, c, n, hw, m = v["k"], v["c"], v["n"], v.get("hw", 1), v.get("m", 1)
    standard = standard_conv_cost(k, c, n, output_spatial=hw)
    depthwise = depthwise_conv_cost(k, c, depth_multiplier=m, output_spatial=hw)
    pointwise = pointwise_conv_cost(c * m, n, output_spatial=hw)
    separable = separable_conv_cost(k, c, n, depth_multiplier=m, output_spatial=hw)
    return {
        "k": k,
        "c": c,
        "n": n,
        "hw": hw,
        "m": m,
        "standard": standard,
        "depthwise": depthwise,
        "pointwise": pointwise,
        "separable": separable,
        "ratio": standard.mult_adds / separable.mult_adds,
        "savings_factor": savings_factor(k, n),
    }


def _print_layer(spec: str, console) -> None:
    from rich.table import Table

    r = layer_comparison(spec)
    hw = r["hw"] if isinstance(r["hw"], int) else "x".join(map(str, r["hw"]))
    title = f"k={r['k']}, C={r['c']}, N={r['n']}, output {hw}" + (
        f"x{hw}" if isinstance(r["hw"], int) else ""
    )
    if r["m"] != 1:
        title += f", depth multiplier {r['m']}"
    table = Table(title=title)
    for col in ("layer", "mult-adds", "params"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for key, label in (
        ("standard", "standard conv"),
        ("depthwise", "  depthwise"),
        ("pointwise", "  pointwise"),
        ("separable", "separable conv"),
    ):
        cost = r[key]
        table.add_row(label, _fmt_int(cost.mult_adds), _fmt_int(cost.params))
    console.print(table)
    console.print(
        f"standard / separable mult-adds: {r['ratio']:.3f}; "
        f"savings factor k^2 N / (k^2 + N) = {r['savings_factor']:.3f}"
    )


MODELS = ("mobilenet_v1", "mobilenet_v2", "efficientnet_b0", "xception")


def _model(name: str, width: float, full_convolution: bool, num_classes: int):
    from sepconv_jax import models

    if name not in MODELS:
        raise ValueError(f"`model` must be one of {MODELS}, got {name!r}")
    if full_convolution and name != "mobilenet_v1":
        raise ValueError(
            f"`full_convolution` is an option of mobilenet_v1 only (the MobileNet paper's "
            f"Table 4 comparison), not of {name}"
        )
    if width != 1.0 and name in ("efficientnet_b0", "xception"):
        raise ValueError(f"{name} has no width multiplier; got `width`={width}")
    if name == "mobilenet_v1":
        return models.MobileNetV1(
            num_classes=num_classes, width_multiplier=width, full_convolution=full_convolution
        )
    if name == "mobilenet_v2":
        return models.MobileNetV2(num_classes=num_classes, width_multiplier=width)
    if name == "efficientnet_b0":
        return models.EfficientNetB0(num_classes=num_classes)
    return models.Xception(num_classes=num_classes)


def model_profile(
    name: str,
    *,
    resolution: int = 224,
    width: float = 1.0,
    full_convolution: bool = False,
    num_classes: int = 1000,
) -> Profile:
    """The :class:`Profile` of a model-zoo model for one image of ``resolution``.

    Args:
      name: one of ``MODELS``: ``"mobilenet_v1"``, ``"mobilenet_v2"``,
        ``"efficientnet_b0"`` or ``"xception"``.
      resolution: input height and width.
      width: the width multiplier (MobileNets only).
      full_convolution: standard convolutions in place of separable ones
        (``"mobilenet_v1"`` only).
      num_classes: classifier outputs.

    Returns:
      The model's :class:`Profile` at batch 1, traced abstractly.

    Raises:
      ValueError: for an unknown model name or an option the model does not have.

    Example:
      >>> from sepconv_jax.cost import model_profile
      >>> p = model_profile("mobilenet_v1", resolution=128, width=0.25)
      >>> p.by_kind["depthwise"].mult_adds, p.params
      (1419264, 470072)
    """
    model = _model(name, width, full_convolution, num_classes)
    r = _spec.check_positive_int(resolution, "resolution")
    x = jax.ShapeDtypeStruct((1, r, r, 3), np.float32)
    return profile(model, x, train=False)


def _cli(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    try:
        if args.layer is not None:
            _print_layer(args.layer, console)
        else:
            p = model_profile(
                args.model,
                resolution=args.resolution,
                width=args.width,
                full_convolution=args.full_convolution,
                num_classes=args.num_classes,
            )
            what = "full-convolution " if args.full_convolution else ""
            console.print(
                f"{args.model} ({what}width {args.width}, {args.resolution}x{args.resolution}): "
                f"{p.mult_adds / 1e6:.1f}M mult-adds, {p.params / 1e6:.2f}M parameters"
            )
            console.print(p)
    except (ValueError, TypeError) as e:
        print(f"sepconv-jax cost: error: {e}", file=sys.stderr)
        return 2
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the ``cost`` subcommand to an ``argparse`` subparsers object.

    ``sepconv-jax cost --layer k=3,c=256,n=256,hw=28`` compares one layer's standard
    and separable cost; ``sepconv-jax cost --model mobilenet_v1 --resolution 224
    --width 1.0`` prints a model's per-kind and per-layer tables.

    Args:
      subparsers: the object returned by ``ArgumentParser.add_subparsers``.

    Returns:
      The ``cost`` parser; its ``func`` default takes the parsed args and returns
      an exit code.
    """
    parser = subparsers.add_parser(
        "cost",
        help="mult-adds and parameters of a layer or a model",
        description="Mult-adds and parameters: one layer standard vs separable, or a "
        "model's per-kind and per-layer tables.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--layer",
        metavar="SPEC",
        help="k=KERNEL,c=IN,n=OUT[,hw=OUTPUT_SIZE or HxW][,m=DEPTH_MULTIPLIER], "
        "e.g. k=3,c=256,n=256,hw=28",
    )
    what.add_argument("--model", choices=MODELS, help="a model-zoo architecture")
    parser.add_argument("--resolution", type=int, default=224, help="input size (default 224)")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1)")
    parser.add_argument(
        "--full-convolution",
        action="store_true",
        help="standard convolutions in place of the separable ones",
    )
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs")
    parser.set_defaults(func=_cli)
    return parser
