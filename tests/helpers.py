"""Small helpers shared by the test modules: random data, layouts, jitted calls."""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import numpy as np
import pytest

RTOL = ATOL = 2e-5  # float32 result vs float64 reference, on O(1) data with <= ~100 terms
HIGHEST = jax.lax.Precision.HIGHEST


def rand(seed, shape):
    """Standard-normal float32 data, reproducible from ``seed``."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def to_first(a, n):
    """(*batch, *spatial, C) -> (*batch, C, *spatial) for n spatial dims."""
    return np.moveaxis(a, -1, -n - 1)


def to_last(a, n):
    """(*batch, C, *spatial) -> (*batch, *spatial, C) for n spatial dims."""
    return np.moveaxis(a, -n - 1, -1)


def call(fn, x, *arrays, n, data_format="channels_last", **kw):
    """Calls ``fn`` under jit with ``x`` given channels-last; returns channels-last output."""
    if data_format == "channels_first":
        x = to_first(x, n)
    jitted = jax.jit(functools.partial(fn, data_format=data_format, precision=HIGHEST, **kw))
    y = np.asarray(jitted(x, *arrays))
    return to_last(y, n) if data_format == "channels_first" else y


def ref_batched(ref_fn, x, *args, n, **kw):
    """Runs a ``(B, *spatial, C)`` reference on ``x`` with any number of batch dims."""
    batch = x.shape[: x.ndim - n - 1]
    flat = x.reshape((math.prod(batch), *x.shape[-n - 1 :]))
    y = ref_fn(flat, *args, **kw)
    return y.reshape((*batch, *y.shape[1:]))


@contextlib.contextmanager
def gpu_lowering_here():
    """Within the block, lowering Pallas' Triton kernels without a GPU is allowed to be
    impossible: JAX 0.11 and later ask the GPU it lowers for for its properties, and
    raise without one; the test is then skipped with that reason (JAX 0.10, which
    CI runs, lowers them on a CPU-only machine)."""
    try:
        yield
    except RuntimeError as error:
        if "No supported GPU devices found" not in str(error):
            raise
        pytest.skip(f"this JAX lowers Triton kernels only where a GPU is: {error}")
