"""The one wall-clock timer of the demo and the benchmark suite.

A time is the best of several calls after a warm-up (``timeit``'s convention, the
least disturbed by other processes on a shared machine). Jitted functions are
compiled ahead of time, so compilation is never part of a measurement.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

__all__ = ["best_time", "compile_and_time", "time_jitted"]


def best_time(
    call: Callable[[], Any], *, max_reps: int, min_time: float = math.inf
) -> tuple[float, int]:
    """Best wall time of ``call()``, over up to ``max_reps`` calls after one warm-up.

    The first call is always a warm-up and never a measurement: on a GPU it carries
    one-time costs (loading the executable's kernels, library handles, allocations)
    that measured seconds for a training step whose later calls took milliseconds.
    Then ``call`` runs until ``max_reps`` calls are timed or ``min_time`` seconds are
    spent on them, at least once.

    Args:
      call: a function of no arguments that returns when its work is done (wrap a
        JAX call in :func:`jax.block_until_ready`).
      max_reps: timed calls at the most, ``>= 1``.
      min_time: seconds after which no further call is started; the default
        (infinite) always makes ``max_reps`` calls.

    Returns:
      ``(seconds, calls)``: the fastest timed call and how many calls were timed.

    Example:
      >>> from sepconv_jax.apps.timing import best_time
      >>> seconds, calls = best_time(lambda: sum(range(1000)), max_reps=3)
      >>> calls, seconds > 0
      (3, True)
    """
    call()  # warm-up
    times: list[float] = []
    while not times or (len(times) < max_reps and sum(times) < min_time):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times), len(times)


def time_jitted(
    fn: Callable, args: Sequence[Any], *, max_reps: int, min_time: float = math.inf
) -> tuple[float, int]:
    """:func:`best_time` of ``jax.jit(fn)(*args)``, compiled before the clock starts.

    Returns:
      ``(seconds, calls)`` as :func:`best_time`.
    """
    seconds, calls, _ = compile_and_time(fn, args, max_reps=max_reps, min_time=min_time)
    return seconds, calls


def compile_and_time(
    fn: Callable, args: Sequence[Any], *, max_reps: int, min_time: float = math.inf
) -> tuple[float, int, float]:
    """:func:`time_jitted`, also saying how long compilation took.

    Returns:
      ``(seconds, calls, compile_seconds)``: :func:`best_time`'s pair, and the wall
      time of ``jax.jit(fn).lower(*args).compile()``.
    """
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_seconds = time.perf_counter() - start
    seconds, calls = best_time(
        lambda: jax.block_until_ready(compiled(*args)), max_reps=max_reps, min_time=min_time
    )
    return seconds, calls, compile_seconds


def timing_fields(batch: int, seconds: float, reps: int, compile_seconds: float) -> dict[str, Any]:
    """What a benchmark record of a timed step holds: the best time of ``reps`` calls,
    the images per second of a ``batch``, and the compile (or first call) time."""
    return {
        "seconds": seconds,
        "reps": reps,
        "images_per_second": batch / seconds,
        "compile_seconds": compile_seconds,
    }


def failure_fields(error: Exception) -> dict[str, Any]:
    """What a benchmark record of a step that failed holds: no time, and the error."""
    return {"seconds": None, "images_per_second": None, "error": repr(error)[:300]}


def time_step(
    record: dict[str, Any],
    batch: int,
    build: Callable[[], tuple[Callable, Sequence[Any]]],
    *,
    max_reps: int,
    min_time: float = math.inf,
    label: str,
    log: Callable[[str], None],
    detail: str = "",
) -> None:
    """Times the step ``build()`` makes, ``(fn, args)``, into ``record``, and logs it.

    ``record`` gets :func:`timing_fields` of :func:`compile_and_time`, or, when
    building, compiling or running the step raised, :func:`failure_fields`: a
    benchmark suite records the failure and goes on. The line logged starts with
    ``label``; ``detail`` goes before the compile time.
    """
    try:
        fn, args = build()
        timing = compile_and_time(fn, args, max_reps=max_reps, min_time=min_time)
    except Exception as error:  # recorded, and the suite goes on
        record.update(failure_fields(error))
        log(f"{label}: failed: {record['error']}")
        return
    record.update(timing_fields(batch, *timing))
    log(
        f"{label}: {1e3 * record['seconds']:.1f} ms, {record['images_per_second']:.1f} images/s "
        f"({detail}compiled in {record['compile_seconds']:.1f} s)"
    )
