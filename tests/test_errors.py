"""Bad input gets a clear ValueError/TypeError from our own code, before XLA sees it."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sepconv_jax
from sepconv_jax import ops

X = np.zeros((2, 8, 8, 4), np.float32)
DK = np.zeros((3, 3, 1, 4), np.float32)
PK = np.zeros((4, 6), np.float32)

# (function, args, kwargs, exception, message fragment)
BAD = {
    "x rank too low": (ops.depthwise_conv, (np.zeros((8, 4)), DK), {}, ValueError, "needs rank >= 3"),
    "kernel rank": (ops.depthwise_conv, (X, np.zeros((3, 1, 1, 4, 2, 2))), {}, ValueError, "expected rank 3, 4 or 5"),
    "kernel in-dim not 1": (ops.depthwise_conv, (X, np.zeros((3, 3, 4, 4))), {}, ValueError, "in-dim 1"),
    "multiplier not whole": (ops.depthwise_conv, (X, np.zeros((3, 3, 1, 6))), {}, ValueError, "6 / 4 must be whole"),
    "zero stride": (ops.depthwise_conv, (X, DK), {"strides": 0}, ValueError, "`strides` must be >= 1"),
    "negative stride": (ops.depthwise_conv, (X, DK), {"strides": (1, -2)}, ValueError, "`strides` must be >= 1"),
    "zero dilation": (ops.depthwise_conv, (X, DK), {"dilation": 0}, ValueError, "`dilation` must be >= 1"),
    "float stride": (ops.depthwise_conv, (X, DK), {"strides": 1.5}, TypeError, "`strides` must be an int"),
    "bool stride": (ops.depthwise_conv, (X, DK), {"strides": True}, TypeError, "`strides` must be an int"),
    "stride list length": (ops.depthwise_conv, (X, DK), {"strides": (1, 1, 1)}, ValueError, "has 3 entries"),
    "dilation list length": (ops.depthwise_conv, (X, DK), {"dilation": (2,)}, ValueError, "has 1 entries"),
    "unknown padding string": (ops.depthwise_conv, (X, DK), {"padding": "FULL"}, ValueError, "`padding` must be one of"),
    "negative padding": (ops.depthwise_conv, (X, DK), {"padding": -1}, ValueError, "non-negative"),
    "negative padding pair": (ops.depthwise_conv, (X, DK), {"padding": ((0, -1), (1, 1))}, ValueError, "non-negative"),
    "padding list length": (ops.depthwise_conv, (X, DK), {"padding": (1, 1, 1)}, ValueError, "has 3 entries"),
    "padding bad entry": (ops.depthwise_conv, (X, DK), {"padding": ((1, 2, 3), 1)}, TypeError, "(low, high) pair"),
    "padding float": (ops.depthwise_conv, (X, DK), {"padding": 1.0}, TypeError, "`padding` must be"),
    "unknown padding mode": (ops.depthwise_conv, (X, DK), {"padding_mode": "mirror"}, ValueError, "`padding_mode` must be one of"),
    "reflect too large": (ops.depthwise_conv, (X, DK), {"padding": 8, "padding_mode": "reflect"}, ValueError, "padding smaller than the input"),
    "circular too large": (ops.depthwise_conv, (X, DK), {"padding": 9, "padding_mode": "circular"}, ValueError, "no larger than the input"),
    "window larger than VALID input": (ops.depthwise_conv, (X, np.zeros((9, 3, 1, 4))), {"padding": "VALID"}, ValueError, "larger than the padded input"),
    "dilated window too large": (ops.depthwise_conv, (X, DK), {"padding": "VALID", "dilation": 4}, ValueError, "larger than the padded input"),
    "bias size": (ops.depthwise_conv, (X, DK), {"bias": np.zeros(5)}, ValueError, "expected shape (4,)"),
    "bias rank": (ops.depthwise_conv, (X, DK), {"bias": np.zeros((1, 4))}, ValueError, "expected shape (4,)"),
    "unknown impl": (ops.depthwise_conv, (X, DK), {"impl": "cuda"}, ValueError, "`impl` must be one of"),
    "impl not a string": (ops.depthwise_conv, (X, DK), {"impl": 3}, TypeError, "`impl` must be a string"),
    "unknown data_format": (ops.depthwise_conv, (X, DK), {"data_format": "NHWC"}, ValueError, "`data_format` must be one of"),
    "channels_first mismatch": (ops.depthwise_conv, (X, DK), {"data_format": "channels_first"}, ValueError, "multiple of 8"),
    "string x": (ops.depthwise_conv, (np.array([["a"]]), DK), {}, TypeError, "`x` must have a numeric dtype"),
    "bool x": (ops.depthwise_conv, (X > 0, DK), {}, TypeError, "`x` must have a numeric dtype"),
    "None kernel": (ops.depthwise_conv, (X, None), {}, TypeError, "`kernel` must be an array"),
    "bad precision": (ops.depthwise_conv, (X, DK), {"precision": "ultra"}, ValueError, "`precision` must be"),
    "bad preferred type": (ops.depthwise_conv, (X, DK), {"preferred_element_type": jnp.int32}, TypeError, "floating or complex"),
    "groups do not divide channels": (ops.grouped_conv, (X, np.zeros((3, 3, 2, 6))), {"groups": 3}, ValueError, "does not divide"),
    "groups do not divide out": (ops.grouped_conv, (X, np.zeros((3, 3, 2, 5))), {"groups": 2}, ValueError, "5 output channels"),
    "grouped in-dim": (ops.grouped_conv, (X, np.zeros((3, 3, 4, 6))), {"groups": 2}, ValueError, "needs in-dim 2"),
    "zero groups": (ops.grouped_conv, (X, np.zeros((3, 3, 4, 6))), {"groups": 0}, ValueError, "`groups` must be >= 1"),
    "float groups": (ops.grouped_conv, (X, np.zeros((3, 3, 4, 6))), {"groups": 2.0}, TypeError, "`groups` must be an int"),
    "pointwise kernel rank": (ops.pointwise_conv, (X, DK), {}, ValueError, "(in_channels, out_channels)"),
    "pointwise in-dim": (ops.pointwise_conv, (X, np.zeros((3, 6))), {}, ValueError, "in-dim 3 but `x` has 4 channels"),
    "pointwise bias": (ops.pointwise_conv, (X, PK), {"bias": np.zeros(4)}, ValueError, "expected shape (6,)"),
    "pointwise spatial dims": (ops.pointwise_conv, (X, PK), {"num_spatial_dims": 4}, ValueError, "needs rank >= 5"),
    "separable pointwise in-dim": (ops.separable_conv, (X, DK, np.zeros((3, 6))), {}, ValueError, "`pointwise_kernel` has shape (3, 6)"),
    "separable depthwise bias": (ops.separable_conv, (X, DK, PK), {"depthwise_bias": np.zeros(6)}, ValueError, "`depthwise_bias` has shape"),
    "separable kernel name": (ops.separable_conv, (X, np.zeros((3, 3, 2, 4)), PK), {}, ValueError, "`depthwise_kernel` has shape"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_raises_before_xla(case):
    fn, args, kwargs, exc, fragment = BAD[case]
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert fragment in str(info.value), str(info.value)
    # Raised by sepconv_jax's own validation, not by jax/XLA internals nor by a kernel.
    where = Path(info.traceback[-1].path)
    package = Path(sepconv_jax.__file__).parent
    assert where.is_relative_to(package), where
    assert where.relative_to(package).parts[0] != "kernels", where


def test_errors_raise_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="must be whole"):
        jax.jit(ops.depthwise_conv)(X, np.zeros((3, 3, 1, 6)))


def test_error_message_suggests_the_fix():
    with pytest.raises(ValueError) as info:
        ops.depthwise_conv(np.zeros((1, 8, 8, 32)), np.zeros((3, 3, 1, 80)))
    assert str(info.value) == (
        "`kernel` has 80 output channels but `x` has 32 channels; a depthwise kernel needs a "
        "multiple of 32 (depth_multiplier = 80 / 32 must be whole)"
    )
