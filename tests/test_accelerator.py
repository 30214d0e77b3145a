"""Every impl against the float64 reference on a GPU or TPU.

Marked ``accelerator`` and skipped unless :func:`jax.default_backend` is ``gpu`` or
``tpu`` (run them alone with ``pytest -m accelerator``). Each case runs the forward
pass and both gradients of ``depthwise_conv`` in one jitted function, on real layer
sizes (a MobileNetV2 56x56x144 layer at batch 8, stride 1 and 2) and on the 1-D
causal case with a dilated window and a depth multiplier, in float32 and
bfloat16, and compares them with the float64 NumPy references of
``tests/reference.py`` computed on the same (rounded) inputs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sepconv_jax import ops
from sepconv_jax.kernels import dispatch
from tests import reference as ref
from tests.helpers import HIGHEST

pytestmark = [
    pytest.mark.accelerator,
    pytest.mark.skipif(
        jax.default_backend() not in ("gpu", "tpu"),
        reason=f"needs a GPU or TPU; jax.default_backend() is {jax.default_backend()!r}",
    ),
]

CASES = {
    "56x56x144-s1": ((8, 56, 56, 144), (3, 3, 1, 144), dict(padding="SAME")),
    "56x56x144-s2": ((8, 56, 56, 144), (3, 3, 1, 144), dict(padding="SAME", strides=2)),
    "1d-causal-m2": ((4, 3000, 64), (5, 1, 128), dict(padding="CAUSAL", dilation=2)),
}
# The largest error allowed, relative to the largest reference value: float32 sums
# of up to ~25,000 terms; bfloat16 results rounded to 8 significant bits.
TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-2}


@functools.cache
def _problem(case: str, dtype: str):
    """Inputs (rounded to ``dtype``) and the float64 reference forward and gradients."""
    xshape, kshape, kw = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xshape)
    kernel = rng.standard_normal(kshape) / np.sqrt(np.prod(kshape[:-2]))
    y_shape = ref.depthwise_conv_nd(x[:1], kernel, **kw).shape[1:]
    g = rng.standard_normal((xshape[0], *y_shape))
    x, kernel, g = (np.asarray(jnp.asarray(a, dtype), np.float64) for a in (x, kernel, g))
    want = (
        ref.depthwise_conv_nd(x, kernel, **kw),
        ref.depthwise_input_grad_nd(g, kernel, x.shape, **kw),
        ref.depthwise_kernel_grad_nd(x, g, kshape[:-2], **kw),
    )
    return (x, kernel, g), want


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", dispatch.IMPLS)
def test_forward_and_gradients_match_float64_on_device(impl, case, dtype):
    (x, kernel, g), want = _problem(case, dtype)
    kw = CASES[case][2]

    @jax.jit
    def run(x, kernel, g):
        y, vjp = jax.vjp(
            lambda x, k: ops.depthwise_conv(x, k, impl=impl, precision=HIGHEST, **kw), x, kernel
        )
        return (y, *vjp(g))

    got = run(*(jnp.asarray(a, dtype) for a in (x, kernel, g)))
    for name, a, expected in zip(("y", "dx", "dkernel"), got, want, strict=True):
        assert a.dtype == jnp.dtype(dtype), name
        error = np.abs(np.asarray(a, np.float64) - expected).max() / np.abs(expected).max()
        assert error < TOLERANCE[dtype], f"{name}: max error {error:.2e} of the largest value"
