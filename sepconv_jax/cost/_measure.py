"""Wall-clock time of counted operations, each compiled and run alone.

A time is the best of several calls after a warm-up (``timeit``'s convention: on a
shared machine the fastest call is the least disturbed one), with compilation done
before the clock starts. :func:`time_op` runs one operation that the counter of
:mod:`sepconv_jax.cost._count` found, on random inputs of its operands' shapes and
dtypes, on JAX's default backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sepconv_jax import _spec


def check_repeats(repeats: Any, name: str = "repeats") -> int:
    """``repeats`` as a positive int, or a ValueError/TypeError naming ``name``."""
    return _spec.check_positive_int(repeats, name)


def best_time(call: Callable[[], Any], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``call()``, after one warm-up call."""
    call()
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return float(best)


def time_compiled(fn: Callable, args: Sequence[Any], repeats: int) -> float:
    """:func:`best_time` of ``jax.jit(fn)(*args)``, compiled before the clock starts."""
    compiled = jax.jit(fn).lower(*args).compile()
    return best_time(lambda: jax.block_until_ready(compiled(*args)), repeats)


def example(struct: Any, rng: np.random.Generator) -> jax.Array:
    """A random array of ``struct``'s shape and dtype (standard normal for floats),
    drawn with NumPy so that no sampling program is compiled per shape."""
    dtype = np.dtype(struct.dtype)
    if jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating):
        values = rng.standard_normal(struct.shape, np.float32)
        return jnp.asarray(values).astype(dtype)
    return jnp.zeros(struct.shape, dtype)


def _runner(eqn: Any, step: int) -> tuple[Callable, list[jax.ShapeDtypeStruct]]:
    """A function running one counted op alone, and its operands' shapes and dtypes."""
    structs = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars]
    params = dict(eqn.params)
    if eqn.primitive.name != "separable_conv":

        def run(*args):
            return eqn.primitive.bind(*args, **params)

        return run, structs

    # The separable primitive counts as two ops: time its two steps apart, as the
    # unfused pair runs them (kernels.separable's own steps).
    from sepconv_jax.kernels import separable

    spec, precision = params["spec"], params["precision"]
    preferred = params["preferred_element_type"]
    x, dk, pk = structs[:3]
    if step == 0:

        def depthwise(x, dk):
            return separable._depthwise(
                x,
                dk,
                spec=spec,
                impl=params["impl"],
                precision=precision,
                preferred_element_type=preferred,
            )

        return depthwise, [x, dk]
    middle = jax.ShapeDtypeStruct(spec.flat_shape(spec.out_spatial, spec.out_channels), x.dtype)

    def pointwise(mid, pk):
        return separable.pointwise(
            mid, pk, spec, precision=precision, preferred_element_type=preferred
        )

    return pointwise, [middle, pk]


def time_op(eqn: Any, step: int, calls: int, repeats: int, seed: int) -> float:
    """Seconds of one counted op per call of its function: one execution, run alone
    on random operands and timed best of ``repeats``, times ``calls`` (a scan's
    length)."""
    fn, structs = _runner(eqn, step)
    rng = np.random.default_rng(seed)
    args = [example(s, rng) for s in structs]
    return calls * time_compiled(fn, args, repeats)
