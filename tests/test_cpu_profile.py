"""``benchmarks/cpu_profile.py``: the layer kind of an XLA instruction, from the
``op_name`` metadata our models' programs carry (the profile itself is a benchmark)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_profile.py"


@pytest.fixture(scope="module")
def profile():
    spec = importlib.util.spec_from_file_location("cpu_profile", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cpu_profile"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["cpu_profile"]


@pytest.mark.parametrize(
    ("op_name", "opcode", "thunk", "kind"),
    [
        # the depthwise primitive, and the shift kernel's loop nested in it
        (
            "jit(f)/MobileNetV2/block3/depthwise/depthwise_conv/pad",
            "fusion",
            "pad_fusion",
            "depthwise",
        ),
        (
            "jit(step)/transpose(jvp(MobileNetV2))/block1/depthwise/"
            "depthwise_conv_input_transpose/while/body/closed_call/pad",
            "fusion",
            "add_fusion",
            "depthwise",
        ),
        (
            "jit(step)/transpose(jvp(MobileNetV2))/block0/depthwise/"
            "depthwise_conv_kernel_transpose/reduce",
            "fusion",
            "multiply_reduce_fusion",
            "depthwise",
        ),
        # ReLU6: its forward names the function, its backward is a select in the block
        (
            "jit(step)/jvp(MobileNetV2)/block1/jit(relu6)/min",
            "fusion",
            "clamp_fusion",
            "activation",
        ),
        (
            "jit(step)/transpose(jvp(MobileNetV2))/block2/select_n",
            "fusion",
            "add_select_fusion",
            "activation",
        ),
        ("jit(step)/jvp(MobileNetV2)/block1/expand_bn/sub", "fusion", "sub_fusion", "norm"),
        ("jit(step)/jvp(MobileNetV2)/conv1/conv_general_dilated", "fusion", "ynn_fusion", "stem"),
        ("jit(f)/EfficientNet/block2a/se/reduce/mean", "fusion", "reduce_fusion", "squeeze-excite"),
        ("", "fusion", "transpose_copy_fusion.35", "layout copy"),
        # ReLU6's backward select with a bitcast in front is an activation, not a copy.
        (
            "jit(step)/transpose(jvp(MobileNetV2))/block2/select_n",
            "fusion",
            "bitcast_select_fusion.3",
            "activation",
        ),
        ("jit(step)/sub", "fusion", "sub_fusion", "optimizer+loss"),
    ],
)
def test_kind_of_op_name(profile, op_name, opcode, thunk, kind):
    assert profile.kind_of_op_name(op_name, opcode, thunk) == kind


def test_a_select_outside_the_backward_pass_is_not_an_activation(profile):
    op_name = "jit(f)/MobileNetV2/block2/select_n"
    assert profile.kind_of_op_name(op_name, "fusion", "select_fusion") == "other"
