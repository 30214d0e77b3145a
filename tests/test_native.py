"""The ``"native"`` kernel's own behaviour: that its C++ handlers run where they
should and ``"shift"`` runs elsewhere, how the library is built and cached, and the
error where it cannot be built. Its numerics are checked with every other kernel's
by the reference suite (``test_kernels.py``) and the transformation matrix
(``test_transforms.py``)."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sepconv_jax import ops
from sepconv_jax.kernels import native
from tests import reference
from tests.helpers import rand

pytestmark = pytest.mark.skipif(
    not native.available(), reason="no C++ compiler here for the native kernel"
)

_TARGETS = [target for target, _ in native._TARGETS.values()]


def _hlo(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


def _step(x, k, **kw):
    """The forward value and both gradients: all three maps."""

    def loss(x, k):
        return jnp.sum(jnp.sin(ops.depthwise_conv(x, k, impl="native", **kw)))

    return jax.value_and_grad(loss, (0, 1))(x, k)


# Wide rows (tiles of output pixels inside the row, single pixels at its edges) and
# channel counts that use every block width (2 and 1 SIMD registers, single channels).
_WIDE = [
    dict(x=(2, 6, 29, 53), window=(3, 3), strides=1, padding="SAME", dilation=1),
    dict(x=(1, 9, 40, 24), window=(3, 5), strides=2, padding="SAME", dilation=(1, 2)),
    dict(x=(2, 7, 31, 16), window=(7, 7), strides=1, padding=((3, 3), (3, 3)), dilation=1),
    dict(x=(1, 5, 33, 40), window=(1, 4), strides=(1, 3), padding=((0, 0), (2, 5)), dilation=1),
]


@pytest.mark.parametrize("case", _WIDE, ids=lambda c: "x".join(map(str, c["x"])))
def test_wide_rows_match_float64_loops(case):
    x = rand(0, case["x"])
    k = rand(1, (*case["window"], 1, case["x"][-1]))
    kw = {key: case[key] for key in ("strides", "padding", "dilation")}
    y = jax.jit(lambda x, k: ops.depthwise_conv(x, k, impl="native", **kw))(x, k)
    np.testing.assert_allclose(y, reference.depthwise_conv_nd(x, k, **kw), rtol=1e-5, atol=1e-5)
    g = rand(2, y.shape)
    dx, dk = jax.jit(
        jax.grad(lambda x, k: jnp.vdot(ops.depthwise_conv(x, k, impl="native", **kw), g), (0, 1))
    )(x, k)
    want_dx = reference.depthwise_input_grad_nd(g, k, x.shape, **kw)
    want_dk = reference.depthwise_kernel_grad_nd(x, g, case["window"], **kw)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk, want_dk, rtol=1e-4, atol=1e-4)


def test_handlers_run_for_channels_last_float32():
    x, k = jnp.ones((2, 9, 9, 8)), jnp.ones((3, 3, 1, 8))
    text = _hlo(lambda x, k: _step(x, k, strides=2), x, k)
    for target in _TARGETS:
        assert f"@{target}(" in text, target


@pytest.mark.parametrize(
    "case",
    [
        dict(x=(2, 8, 9, 9), k=(3, 3, 1, 8), kw=dict(data_format="channels_first")),
        dict(x=(2, 5, 6, 7, 4), k=(3, 3, 3, 1, 4), kw={}),
        dict(x=(2, 9, 9, 4), k=(3, 3, 1, 8), kw={}),  # depth multiplier 2
    ],
    ids=["channels_first", "3d", "multiplier"],
)
def test_other_problems_run_the_shift_kernel(case):
    x, k = jnp.ones(case["x"]), jnp.ones(case["k"])
    text = _hlo(lambda x, k: _step(x, k, **case["kw"]), x, k)
    assert not any(target in text for target in _TARGETS)
    want = _step_with("shift", x, k, **case["kw"])
    got = _step(x, k, **case["kw"])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _step_with(impl, x, k, **kw):
    def loss(x, k):
        return jnp.sum(jnp.sin(ops.depthwise_conv(x, k, impl=impl, **kw)))

    return jax.value_and_grad(loss, (0, 1))(x, k)


def test_float64_runs_the_shift_kernel():
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((1, 6, 6, 3)))
        k = jnp.asarray(rng.standard_normal((3, 3, 1, 3)))
        text = _hlo(lambda x, k: _step(x, k), x, k)
        assert not any(target in text for target in _TARGETS)
        got, want = _step(x, k), _step_with("shift", x, k)
        assert jax.tree.leaves(got)[0].dtype == jnp.float64
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_inputs_run_in_float32():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 7, 7, 16)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((3, 3, 1, 16)), jnp.bfloat16)
    y = ops.depthwise_conv(x, k, impl="native")
    assert y.dtype == jnp.bfloat16
    assert f"@{_TARGETS[0]}(" in _hlo(lambda x, k: ops.depthwise_conv(x, k, impl="native"), x, k)
    # The float32 result of the same bfloat16 values, rounded once.
    want = ops.depthwise_conv(x.astype(jnp.float32), k.astype(jnp.float32), impl="xla")
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want.astype(jnp.bfloat16)))


def test_kernel_gradient_is_deterministic():
    """Per fixed chunk of rows, added in order: the same bits on every call."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 28, 28, 40)).astype(np.float32)
    k = rng.standard_normal((5, 5, 1, 40)).astype(np.float32)
    grad = jax.jit(lambda x, k: _step(x, k)[1][1])
    first = np.asarray(grad(x, k))
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(grad(x, k)), first)


def test_library_is_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPCONV_JAX_CACHE_DIR", str(tmp_path))
    path = native.library_path()
    assert path.parent == tmp_path and not path.exists()
    assert native.build() == path and path.exists()
    built = path.stat().st_mtime_ns
    assert native.build() == path and path.stat().st_mtime_ns == built  # not rebuilt
    assert native.build(force=True) == path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPCONV_JAX_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(native.NativeBuildError, match="no-such-compiler-here"):
        native.build()


def test_compiler_errors_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPCONV_JAX_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    with pytest.raises(native.NativeBuildError, match="compiling the native depthwise kernel"):
        native.build()
    assert list(tmp_path.iterdir()) == []


def test_unavailable_library_makes_auto_pick_shift_and_native_raise(tmp_path):
    """In a process where the library cannot be built, ``"auto"`` runs ``"shift"``
    and an explicit ``impl="native"`` raises the build error."""
    code = """
import jax.numpy as jnp
from sepconv_jax import _spec, ops
from sepconv_jax.kernels import dispatch, native
spec = _spec.make_spec(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 4)), groups=None,
    strides=1, padding="SAME", dilation=1, padding_mode="zeros", data_format="channels_last")
assert not native.available()
assert dispatch.auto_impl(spec, "cpu") == "shift", dispatch.auto_impl(spec, "cpu")
ops.depthwise_conv(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 4)))
try:
    ops.depthwise_conv(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 4)), impl="native")
except native.NativeBuildError as error:
    print("raised:", error)
"""
    env = dict(os.environ, SEPCONV_JAX_CACHE_DIR=str(tmp_path), CXX="no-such-compiler-here")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "raised:" in done.stdout and "no-such-compiler-here" in done.stdout
