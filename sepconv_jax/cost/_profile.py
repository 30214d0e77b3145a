"""Profiles of Flax models: mult-adds, parameters, bytes and time per layer and kind.

:func:`profile` traces a linen or NNX module with the counter of
:mod:`sepconv_jax.cost._count`, attributes every parameter leaf to the operation
that consumes it, optionally times every operation alone
(:mod:`sepconv_jax.cost._measure`), and returns a :class:`Profile` that prints as
two tables.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import numpy as np

from sepconv_jax.cost import _measure
from sepconv_jax.cost._analytic import Cost
from sepconv_jax.cost._count import (
    _EMPTY,
    KINDS,
    OTHER,
    BilinearTraffic,
    Kind,
    _is_array_leaf,
    _State,
    _trace,
    _Walker,
    _warn_unattributed,
    intensity,
)

#: A row's kind in a profile: a counted :data:`Kind`, or ``"other"`` for parameters
#: that no counted operation consumes.
RowKind = Kind | Literal["other"]


@dataclasses.dataclass(frozen=True)
class LayerCost(BilinearTraffic):
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
      bytes_moved: the least bytes the operation moves (operands read once, result
        written once; :attr:`OpCost.bytes_moved`); 0 for ``"other"`` rows.
      measured_s: seconds of the operation compiled and run alone on the current
        backend, best of several calls (``profile(..., measure=True)``); ``None``
        when not measured and for ``"other"`` rows.
    """

    path: str
    kind: RowKind
    output_shape: tuple[int, ...] | None
    mult_adds: int
    params: int
    bytes_moved: int = 0
    measured_s: float | None = None


def _fmt_int(value: int) -> str:
    return f"{value:,}"


def _pct(part: float, total: float) -> str:
    return f"{100 * part / total:.2f}%" if total else "-"


def _fmt_intensity(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1f}"


def _fmt_ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{1e3 * seconds:.3f}"


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
      bytes_moved: the least bytes moved by the counted operations.
      bytes_by_kind: ``bytes_moved`` per kind present in ``by_kind``.
      time_by_kind: measured seconds per counted kind (empty unless measured).

    ``print(profile)`` shows both tables; ``rich.print(profile)`` renders them in
    colour; :meth:`to_dict` gives plain data.
    """

    mult_adds: int
    params: int
    layers: tuple[LayerCost, ...]
    by_kind: Mapping[RowKind, Cost]
    unattributed: Mapping[str, int] = dataclasses.field(default_factory=dict)
    bytes_moved: int = 0
    bytes_by_kind: Mapping[RowKind, int] = dataclasses.field(default_factory=dict)
    time_by_kind: Mapping[RowKind, float] = dataclasses.field(default_factory=dict)

    @property
    def measured(self) -> bool:
        """Whether the layers were timed (``profile(..., measure=True)``)."""
        return bool(self.time_by_kind)

    @property
    def measured_s(self) -> float | None:
        """Sum of the layers' measured times, ``None`` when not measured."""
        return sum(self.time_by_kind.values()) if self.measured else None

    @property
    def intensity(self) -> float:
        """Mult-adds per byte moved, over all counted operations."""
        return intensity(self.mult_adds, self.bytes_moved)

    @property
    def training_mult_adds(self) -> int:
        """Forward plus backward mult-adds (each op and its two transposes)."""
        return 3 * self.mult_adds

    @property
    def training_bytes_moved(self) -> int:
        """Forward plus backward least bytes (each op and its two transposes)."""
        return 3 * self.bytes_moved

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict: totals, ``by_kind`` and ``layers``."""
        return {
            "mult_adds": self.mult_adds,
            "params": self.params,
            "bytes_moved": self.bytes_moved,
            "training_mult_adds": self.training_mult_adds,
            "training_bytes_moved": self.training_bytes_moved,
            "by_kind": {k: dataclasses.asdict(v) for k, v in self.by_kind.items()},
            "bytes_by_kind": dict(self.bytes_by_kind),
            "time_by_kind": dict(self.time_by_kind),
            "layers": [dataclasses.asdict(row) for row in self.layers],
            "unattributed": dict(self.unattributed),
        }

    def kind_table(self, title: str | None = "Cost by kind"):
        """The per-kind summary as a :class:`rich.table.Table`, with shares."""
        from rich.table import Table

        table = Table(title=title)
        cols = ["kind", "mult-adds", "share", "params", "share ", "bytes", "MA/byte"]
        if self.measured:
            cols += ["time ms", "time share"]
        for col in cols:
            table.add_column(col, justify="left" if col == "kind" else "right")
        total_s = self.measured_s or 0.0
        for kind, cost in self.by_kind.items():
            nbytes = self.bytes_by_kind.get(kind, 0)
            cells = [
                kind,
                _fmt_int(cost.mult_adds),
                _pct(cost.mult_adds, self.mult_adds),
                _fmt_int(cost.params),
                _pct(cost.params, self.params),
                _fmt_int(nbytes) if nbytes else "",
                _fmt_intensity(intensity(cost.mult_adds, nbytes)),
            ]
            if self.measured:
                seconds = self.time_by_kind.get(kind)
                cells += [_fmt_ms(seconds), "" if seconds is None else _pct(seconds, total_s)]
            table.add_row(*cells)
        cells = ["total", _fmt_int(self.mult_adds), "", _fmt_int(self.params), ""]
        cells += [_fmt_int(self.bytes_moved), _fmt_intensity(self.intensity)]
        if self.measured:
            cells += [_fmt_ms(total_s), ""]
        table.add_row(*cells, style="bold")
        return table

    def table(self, title: str | None = "Cost by layer"):
        """The per-layer table as a :class:`rich.table.Table`."""
        from rich.table import Table

        table = Table(title=title)
        cols = ["module", "kind", "output shape", "mult-adds", "params", "bytes", "MA/byte"]
        if self.measured:
            cols.append("time ms")
        for col in cols:
            table.add_column(col, justify="left" if col in cols[:3] else "right")
        for row in self.layers:
            shape = "" if row.output_shape is None else "x".join(map(str, row.output_shape))
            cells = [
                row.path or "(root)",
                row.kind,
                shape,
                _fmt_int(row.mult_adds),
                _fmt_int(row.params),
                _fmt_int(row.bytes_moved) if row.bytes_moved else "",
                _fmt_intensity(row.intensity),
            ]
            if self.measured:
                cells.append(_fmt_ms(row.measured_s))
            table.add_row(*cells)
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

    graphdef, *states = nnx.split(module, nnx.Param, ...)
    params, rest = states

    def program(params, rest, *args):
        return nnx.merge(graphdef, params, rest)(*args, **apply_kwargs)

    return program, params, rest


def profile(
    module: Any,
    *inputs: Any,
    variables: Any = None,
    measure: bool = False,
    measure_repeats: int = 5,
    **apply_kwargs: Any,
) -> Profile:
    """Profiles a Flax module: mult-adds, parameters and bytes per layer and per kind.

    The module's call is traced (never run), as in :func:`count`. Each parameter
    leaf is attributed by following the dataflow: a kernel belongs to the counted
    operation that consumes it; a parameter of the same module combined with that
    operation's output (a bias) belongs to it too; parameters of another module met
    there (batch norm's scale and offset), or never met at all, are ``"other"``.
    Bytes and arithmetic intensity are :func:`count`'s.

    With ``measure=True`` every counted operation is also compiled alone
    (``jax.jit`` of its one primitive, on random operands of its shapes and dtypes)
    and timed on JAX's default backend, best of ``measure_repeats`` calls after a
    warm-up; :func:`sepconv_jax.cost.roofline` puts those times beside its
    prediction. Elementwise work (bias, normalization, activations) between the
    operations is not timed, and a layer alone runs without the fusions XLA makes
    across layers of a whole model.

    Args:
      module: a ``flax.linen.Module`` (initialized abstractly with
        :func:`jax.eval_shape` unless ``variables`` is given) or a ``flax.nnx.Module``.
      *inputs: the call's inputs: arrays or :class:`jax.ShapeDtypeStruct`
        placeholders. Counts are for this batch size; use batch 1 for per-example
        figures.
      variables: linen only: the variables to use instead of an abstract init.
      measure: time every counted operation alone (see above).
      measure_repeats: timed calls per operation when measuring (the best is kept).
      **apply_kwargs: passed to ``module.apply`` (linen: call keywords such as
        ``train=False``, and ``rngs``, ``mutable``, ``method``) or to the NNX call.

    Returns:
      A :class:`Profile`.

    Raises:
      TypeError: when ``module`` is not a Flax linen or NNX module.
      ValueError: when ``measure_repeats`` is not a positive int.

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
    if measure:
        measure_repeats = _measure.check_repeats(measure_repeats, "measure_repeats")
    program, params, rest, root = _program(module, inputs, apply_kwargs, variables)
    paths, sizes = _param_paths(params, root)
    walker = _walk(program, (params, rest, *inputs), paths, root)
    op_params, others = _attribute(walker, paths, sizes)
    times: list[float | None] = [None] * len(walker.ops)
    if measure:
        for i, op in enumerate(walker.ops):
            times[i] = _measure.time_op(op.eqn, op.step, op.cost.calls, measure_repeats, i)
    rows = _rows(walker, op_params, others, times)
    return _summarize(rows, sum(sizes), dict(walker.unattributed), measure)


def _program(module: Any, inputs: tuple, apply_kwargs: dict, variables: Any):
    """(function of (params, rest, inputs), params, rest, name of the linen root or None)."""
    import flax.linen as nn
    from flax import nnx

    if variables is not None and not isinstance(module, nn.Module):
        raise TypeError("`variables` is only accepted with a flax.linen.Module")
    if isinstance(module, nn.Module):
        program, params, rest = _linen_program(module, inputs, apply_kwargs, variables)
        root = type(module).__name__ if module.name is None else module.name
        return program, params, rest, root
    if isinstance(module, nnx.Module):
        program, params, rest = _nnx_program(module, inputs, apply_kwargs)
        return program, params, rest, None
    raise TypeError(
        f"`module` must be a flax.linen.Module or a flax.nnx.Module, got "
        f"{type(module).__name__}; for a plain function use `sepconv_jax.cost.count`"
    )


def _param_paths(params: Any, root: str | None) -> tuple[list[tuple[str, ...]], list[int]]:
    """The path and the size of every parameter leaf, in flattening order."""
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
    return paths, [_leaf_size(leaf) for _, leaf in leaves_with_paths]


def _walk(program: Any, args: tuple, paths: list[tuple[str, ...]], root: str | None) -> _Walker:
    """Traces ``program(*args)`` and walks it, each parameter leaf followed by its index."""
    closed, n_in = _trace(program, args, {})
    walker = _Walker(paths)
    states = [_State(frozenset({i}), None) for i in range(len(paths))]
    states += [_EMPTY] * (n_in - len(paths))
    walker.walk(closed, states, 1, "")
    _warn_unattributed(walker.unattributed)

    for op in walker.ops:  # a linen name stack starts with the root module's name
        name = op.cost.name
        if root is not None and op.path == name:
            head, _, tail = name.partition("/")
            op.path = tail if head == root else name
    return walker


def _attribute(
    walker: _Walker, paths: list[tuple[str, ...]], sizes: list[int]
) -> tuple[list[int], dict[int | None, dict[str, int]]]:
    """Parameters per counted op, and the others per module, keyed by the op they follow.

    ``None`` keys the parameters no operation met.
    """
    op_params = [0] * len(walker.ops)
    others: dict[int | None, dict[str, int]] = {}
    for leaf, size in enumerate(sizes):
        owner = walker.owner.get(leaf)
        if owner is not None and owner[0] == "op":
            op_params[owner[1]] += size
        else:
            group = others.setdefault(None if owner is None else owner[1], {})
            module_path = "/".join(paths[leaf][:-1])
            group[module_path] = group.get(module_path, 0) + size
    return op_params, others


def _rows(
    walker: _Walker,
    op_params: list[int],
    others: dict[int | None, dict[str, int]],
    times: list[float | None],
) -> list[LayerCost]:
    """One row per counted op, each followed by the ``"other"`` rows first met on its output."""
    rows: list[LayerCost] = []
    for i, op in enumerate(walker.ops):
        rows.append(
            LayerCost(
                op.path,
                op.cost.kind,
                op.display_shape,
                op.cost.mult_adds,
                op_params[i],
                op.cost.bytes_moved,
                times[i],
            )
        )
        for module_path, size in others.get(i, {}).items():
            rows.append(LayerCost(module_path, OTHER, None, 0, size))
    for module_path, size in others.get(None, {}).items():
        rows.append(LayerCost(module_path, OTHER, None, 0, size))
    return rows


def _summarize(
    rows: list[LayerCost], params: int, unattributed: dict[str, int], measure: bool
) -> Profile:
    """The :class:`Profile` of ``rows``: totals and per-kind sums."""
    by_kind: dict[RowKind, Cost] = {}
    bytes_by_kind: dict[RowKind, int] = {}
    time_by_kind: dict[RowKind, float] = {}
    for kind in (*KINDS, OTHER):
        picked = [row for row in rows if row.kind == kind]
        if picked:
            by_kind[kind] = Cost(sum(r.mult_adds for r in picked), sum(r.params for r in picked))
            bytes_by_kind[kind] = sum(r.bytes_moved for r in picked)
            if measure and kind != OTHER:
                time_by_kind[kind] = sum(r.measured_s or 0.0 for r in picked)
    return Profile(
        mult_adds=sum(c.mult_adds for c in by_kind.values()),
        params=params,
        layers=tuple(rows),
        by_kind=by_kind,
        unattributed=unattributed,
        bytes_moved=sum(bytes_by_kind.values()),
        bytes_by_kind=bytes_by_kind,
        time_by_kind=time_by_kind,
    )
