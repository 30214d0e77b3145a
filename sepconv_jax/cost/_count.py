"""The jaxpr counter: mult-adds of every convolution and matrix multiply in a function.

:func:`count` traces a function to a jaxpr (nothing is computed) and walks it,
through ``jit``, ``vmap``, ``scan`` (times its length), ``remat``, ``cond`` (the most
expensive branch) and custom-derivative boundaries, classifying each counted
operation by :data:`Kind`. The walker also follows which parameter each operation
consumes, which :func:`sepconv_jax.cost.profile` builds its per-layer table on.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import jax
import numpy as np
from jax.extend import core as jcore

#: The kind of a counted operation: a convolution by the shape of its kernel and
#: its feature groups, or ``"dense"`` for a matrix multiply.
Kind = Literal["standard", "depthwise", "pointwise", "grouped", "dense"]

#: The kinds of counted operations, in display order. Parameters that no counted
#: operation consumes (batch norm scales and offsets, unused parameters) are of
#: kind ``"other"`` in a profile.
KINDS: tuple[Kind, ...] = get_args(Kind)
OTHER: Literal["other"] = "other"


class BilinearTraffic:
    """Intensity and backward cost of a bilinear operation from its ``mult_adds``
    and ``bytes_moved`` (shared by :class:`OpCost` and the profile's layer rows)."""

    mult_adds: int
    bytes_moved: int

    @property
    def intensity(self) -> float:
        """Arithmetic intensity: mult-adds per byte moved (``nan`` when no bytes)."""
        return intensity(self.mult_adds, self.bytes_moved)

    @property
    def backward_mult_adds(self) -> int:
        """Mult-adds of its two transposes (input and weight gradients): ``2 * mult_adds``."""
        return 2 * self.mult_adds

    @property
    def backward_bytes_moved(self) -> int:
        """Least bytes of its two transposes: ``2 * bytes_moved`` (see :func:`count`)."""
        return 2 * self.bytes_moved


@dataclasses.dataclass(frozen=True)
class OpCost(BilinearTraffic):
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
      bytes_moved: the least memory traffic of all its executions: each operand
        (input and weight) read once and the result written once, each element at
        its dtype's size (see :func:`count`).
    """

    kind: Kind
    primitive: str
    mult_adds: int
    calls: int
    output_shape: tuple[int, ...]
    window: tuple[int, ...]
    feature_groups: int
    name: str
    bytes_moved: int = 0


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
      bytes_moved: the least bytes moved by the counted operations (each op's
        operands read once and result written once; :attr:`OpCost.bytes_moved`).
      bytes_by_kind: ``bytes_moved`` per kind, for every kind in :data:`KINDS`.
    """

    mult_adds: int
    by_kind: Mapping[Kind, int]
    ops: tuple[OpCost, ...]
    unattributed: Mapping[str, int] = dataclasses.field(default_factory=dict)
    bytes_moved: int = 0
    bytes_by_kind: Mapping[Kind, int] = dataclasses.field(default_factory=dict)

    @property
    def flops(self) -> int:
        """``2 * mult_adds``, comparable with XLA's ``cost_analysis()["flops"]``."""
        return 2 * self.mult_adds

    @property
    def intensity(self) -> float:
        """Mult-adds per byte moved, over all counted operations."""
        return intensity(self.mult_adds, self.bytes_moved)

    @property
    def training_mult_adds(self) -> int:
        """Forward plus backward mult-adds: ``3 * mult_adds`` (each op and its two
        transposes)."""
        return sum(op.mult_adds + op.backward_mult_adds for op in self.ops)

    @property
    def training_bytes_moved(self) -> int:
        """Forward plus backward least bytes: ``3 * bytes_moved``."""
        return sum(op.bytes_moved + op.backward_bytes_moved for op in self.ops)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict of the counts."""
        return {
            "mult_adds": self.mult_adds,
            "by_kind": dict(self.by_kind),
            "bytes_moved": self.bytes_moved,
            "bytes_by_kind": dict(self.bytes_by_kind),
            "training_mult_adds": self.training_mult_adds,
            "training_bytes_moved": self.training_bytes_moved,
            "ops": [dataclasses.asdict(op) for op in self.ops],
            "unattributed": dict(self.unattributed),
        }


def intensity(mult_adds: float, bytes_moved: float) -> float:
    """Arithmetic intensity, mult-adds per byte; ``nan`` when nothing is moved."""
    return mult_adds / bytes_moved if bytes_moved else math.nan


#: (kind, mult-adds of one call, output shape, window, feature groups, bytes of one
#: call) of an eqn.
_OpFacts = tuple[Kind, int, tuple[int, ...], tuple[int, ...], int, int]


def _nbytes(aval: Any) -> int:
    """Bytes of an array of ``aval``'s shape and dtype."""
    return math.prod(aval.shape) * np.dtype(aval.dtype).itemsize


def _eqn_bytes(eqn: Any) -> int:
    """Least bytes of a two-operand eqn: both operands read, the result written once."""
    return sum(_nbytes(v.aval) for v in eqn.invars[:2]) + _nbytes(eqn.outvars[0].aval)


@dataclasses.dataclass
class _Op:
    """A counted operation during the walk: its figures, and where a profile shows it.

    ``path`` (the module owning its parameters) and ``display_shape`` (the least
    flattened view of its result) are settled as the walk goes on.
    """

    cost: OpCost
    path: str = ""
    display_shape: tuple[int, ...] = ()
    # The equation it was counted from, and which of its steps it is (for a
    # primitive that counts as several ops), so that it can be run alone.
    eqn: Any = None
    step: int = 0


def _conv_op(eqn: Any) -> _OpFacts:
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
    kind: Kind
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
    return kind, mult_adds, out, window, max(groups, batch_groups), _eqn_bytes(eqn)


def _dot_op(eqn: Any) -> _OpFacts:
    lhs = eqn.invars[0].aval.shape
    out = tuple(eqn.outvars[0].aval.shape)
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    mult_adds = math.prod(out) * math.prod(int(lhs[d]) for d in lhs_contract)
    return "dense", mult_adds, out, (), 1, _eqn_bytes(eqn)


def _depthwise_op(eqn: Any) -> _OpFacts:
    """A primitive of :mod:`sepconv_jax.kernels.op`: the convolution or a transpose.

    Each of the three bilinear maps pairs every output element of the convolution
    with every tap of its window once, so each costs the forward's mult-adds:
    ``batch * prod(out_spatial) * C * M * prod(window)``, whatever kernel runs it.
    """
    spec = eqn.params["spec"]
    out = tuple(eqn.outvars[0].aval.shape)
    positions = math.prod(spec.batch_shape) * math.prod(spec.out_spatial)
    mult_adds = positions * spec.out_channels * math.prod(spec.window)
    return "depthwise", mult_adds, out, tuple(spec.window), spec.groups, _eqn_bytes(eqn)


def _separable_ops(eqn: Any) -> list[tuple[int, _OpFacts]]:
    """The separable primitive of :mod:`sepconv_jax.kernels.separable`: one equation
    in a jaxpr but two operations, counted and attributed as the unfused pair.

    Returns the depthwise step (its weight: the depthwise kernel, operand 1) and the
    pointwise step (its weight: the pointwise kernel, operand 2), in order. Its
    transposes are made of the depthwise primitives and 1x1 convolutions, counted by
    the rules above.

    Bytes are the unfused pair's too: the intermediate (in ``x``'s dtype, as the
    primitive rounds it) is written by the depthwise step and read by the pointwise
    step. A fused kernel saves those two passes; the figure is what the pair moves.
    """
    spec = eqn.params["spec"]
    x, dk, pk = (v.aval for v in eqn.invars[:3])
    out = tuple(eqn.outvars[0].aval.shape)
    out_channels = int(pk.shape[1])
    positions = math.prod(spec.batch_shape) * math.prod(spec.out_spatial)
    middle = spec.flat_shape(spec.out_spatial, spec.out_channels)
    middle_bytes = math.prod(middle) * np.dtype(x.dtype).itemsize
    depthwise: _OpFacts = (
        "depthwise",
        positions * spec.out_channels * math.prod(spec.window),
        middle,
        tuple(spec.window),
        spec.groups,
        _nbytes(x) + _nbytes(dk) + middle_bytes,
    )
    pointwise: _OpFacts = (
        "pointwise",
        positions * spec.out_channels * out_channels,
        out,
        (1,) * len(spec.window),
        1,
        middle_bytes + _nbytes(pk) + _nbytes(eqn.outvars[0].aval),
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
    found: list[Any] = []
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
            if prim in _COUNTED or prim in _COUNTED_SEVERAL:
                index = self._counted(eqn, ins, calls, name)
                outs = [_State(frozenset(), index)] * len(eqn.outvars)
                self.tails[eqn.outvars[0]] = index
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

    def _counted(self, eqn: Any, ins: list[_State], calls: int, name: str) -> int:
        """Records a counted eqn as a new op (or, for a multi-step primitive, one op
        per step, each step's input the previous step's result) and returns the
        index of its last op."""
        prim = eqn.primitive.name
        if prim in _COUNTED:
            index = self._record(prim, _COUNTED[prim](eqn), ins, calls, name)
            self.ops[index].eqn = eqn
            return index
        state = ins[0]
        for step, (weight, facts) in enumerate(_COUNTED_SEVERAL[prim](eqn)):
            index = self._record(prim, facts, [state, ins[weight]], calls, name)
            self.ops[index].eqn, self.ops[index].step = eqn, step
            state = _State(frozenset(), index)
        return index

    def _record(
        self, primitive: str, facts: _OpFacts, ins: list[_State], calls: int, name: str
    ) -> int:
        """Records one op whose operands (activation, weight) have states ``ins``."""
        kind, mult_adds, out, window, groups, nbytes = facts
        index = len(self.ops)
        figures = OpCost(
            kind, primitive, mult_adds * calls, calls, out, window, groups, name, nbytes * calls
        )
        op = _Op(figures, display_shape=out)
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
        return index

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
                totals.append(sum(op.cost.mult_adds for op in dry.ops))
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

    **Bytes.** Each op also gets ``bytes_moved``, the least memory traffic it can
    have: its two operands (activation and weight) read once and its result written
    once, ``(size(lhs) + size(rhs) + size(out))`` elements, each at its dtype's
    itemsize (so a bfloat16 op moves half a float32 op's bytes). Caches, re-reads of
    a window's overlapping taps and padding copies are not in it: real kernels move
    at least this much. The separable primitive's two steps each count the
    intermediate once (written, then read). ``OpCost.intensity`` is mult-adds per
    byte: about ``prod(window)`` for a depthwise op and ``C`` or more for a
    pointwise or standard one, which is why fewer mult-adds need not mean less time.

    **Backward.** The gradient of a bilinear op ``y = f(x, w)`` is its two
    transposes: ``dx`` from ``(dy, w)`` and ``dw`` from ``(x, dy)``. Each pairs the
    same output elements with the same taps as the forward, so each costs the
    forward's mult-adds, and each reads two of ``x, w, y``-sized arrays and writes
    the third: ``backward_mult_adds = 2 * mult_adds`` and ``backward_bytes_moved =
    2 * bytes_moved`` per op, and ``Count.training_*`` is three times the forward.
    This counts ``dx`` for every op, also the first layer's, whose input gradient a
    training step skips.

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
    bytes_by_kind = dict.fromkeys(KINDS, 0)
    for op in walker.ops:
        by_kind[op.cost.kind] += op.cost.mult_adds
        bytes_by_kind[op.cost.kind] += op.cost.bytes_moved
    return Count(
        mult_adds=sum(by_kind.values()),
        by_kind=by_kind,
        ops=tuple(op.cost for op in walker.ops),
        unattributed=dict(walker.unattributed),
        bytes_moved=sum(bytes_by_kind.values()),
        bytes_by_kind=bytes_by_kind,
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
