"""Tests of bytes moved, arithmetic intensity, the roofline and measured layer times.

Expected bytes are written from the definition: the elements of an op's input,
weight and output, times their itemsize (each read or written once). XLA's
``cost_analysis()["bytes accessed"]`` is the peer: for one convolution or matrix
multiply in float32 it counts exactly that, so the two must agree; for kernels
that re-read data (the shift loop) XLA's figure must be at least ours. Roofline
figures are checked against ``max(2 * mult_adds / peak, bytes / bandwidth)``
computed by hand. Measured times are only checked for structure and sign, never
for speed.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sepconv_jax import ops
from sepconv_jax.cost import (
    DEVICES,
    Device,
    count,
    gap_explained,
    pearson,
    profile,
    roofline,
)

F32 = jnp.float32


def sds(*shape, dtype=F32):
    return jax.ShapeDtypeStruct(shape, dtype)


def conv(x, w, *, groups=1, strides=1, padding="VALID"):
    return lax.conv_general_dilated(
        x,
        w,
        (strides, strides),
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


# ----------------------------------------------------------------------------- bytes, closed form


class TestBytesClosedForm:
    """bytes = (elements of input + weight + output) * itemsize, per op."""

    def test_standard(self):
        # x 2x9x9x4, w 3x3x4x6, VALID stride 1 -> y 2x7x7x6.
        c = count(conv, sds(2, 9, 9, 4), sds(3, 3, 4, 6))
        expected = (2 * 9 * 9 * 4 + 3 * 3 * 4 * 6 + 2 * 7 * 7 * 6) * 4
        assert c.ops[0].bytes_moved == expected
        assert c.bytes_by_kind["standard"] == expected == c.bytes_moved
        assert c.ops[0].intensity == pytest.approx((2 * 7 * 7 * 6 * 9 * 4) / expected)

    def test_depthwise_multiplier(self):
        # 8 channels, multiplier 2, SAME stride 2: 10x10 -> 5x5, 16 out channels.
        f = lambda x, w: conv(x, w, groups=8, strides=2, padding="SAME")
        c = count(f, sds(1, 10, 10, 8), sds(3, 3, 1, 16))
        expected = (10 * 10 * 8 + 3 * 3 * 16 + 5 * 5 * 16) * 4
        assert c.ops[0].kind == "depthwise"
        assert c.bytes_by_kind["depthwise"] == expected

    def test_depthwise_primitive(self):
        c = count(ops.depthwise_conv, sds(2, 6, 6, 5), sds(3, 3, 1, 5))  # SAME
        assert c.ops[0].primitive == "depthwise_conv"
        assert c.ops[0].bytes_moved == (2 * 36 * 5 * 2 + 9 * 5) * 4

    def test_pointwise_and_grouped(self):
        c = count(conv, sds(1, 4, 4, 6), sds(1, 1, 6, 10))
        assert c.bytes_by_kind["pointwise"] == (16 * 6 + 60 + 16 * 10) * 4
        g = count(lambda x, w: conv(x, w, groups=2), sds(1, 5, 5, 6), sds(3, 3, 3, 4))
        assert g.bytes_by_kind["grouped"] == (25 * 6 + 9 * 3 * 4 + 9 * 4) * 4

    def test_dense(self):
        c = count(jnp.matmul, sds(7, 33), sds(33, 5))
        assert c.bytes_by_kind["dense"] == (7 * 33 + 33 * 5 + 7 * 5) * 4
        assert c.intensity == pytest.approx(7 * 33 * 5 / ((7 * 33 + 33 * 5 + 7 * 5) * 4))

    def test_separable_primitive_counts_the_intermediate(self):
        # x 1x6x6x4, dk 3x3x1x4, pk 4x7, SAME: intermediate 1x6x6x4, out 1x6x6x7.
        c = count(ops.separable_conv, sds(1, 6, 6, 4), sds(3, 3, 1, 4), sds(4, 7))
        mid = 36 * 4
        assert [op.primitive for op in c.ops] == ["separable_conv"] * 2
        assert c.bytes_by_kind["depthwise"] == (36 * 4 + 9 * 4 + mid) * 4
        assert c.bytes_by_kind["pointwise"] == (mid + 4 * 7 + 36 * 7) * 4

    def test_dtype_itemsize(self):
        f32 = count(conv, sds(1, 5, 5, 3), sds(3, 3, 3, 2))
        bf16 = count(conv, sds(1, 5, 5, 3, dtype=jnp.bfloat16), sds(3, 3, 3, 2, dtype=jnp.bfloat16))
        assert bf16.bytes_moved * 2 == f32.bytes_moved
        assert bf16.mult_adds == f32.mult_adds

    def test_scan_multiplies_bytes(self):
        def f(x, w):
            def body(carry, _):
                return conv(carry, w, padding="SAME"), None

            return lax.scan(body, x, None, length=3)[0]

        c = count(f, sds(1, 4, 4, 2), sds(3, 3, 2, 2))
        one = (16 * 2 + 9 * 4 + 16 * 2) * 4
        assert c.ops[0].calls == 3
        assert c.bytes_moved == 3 * one

    def test_profile_rows_and_kinds(self):
        class Net(nn.Module):
            @nn.compact
            def __call__(self, x):
                x = nn.Conv(4, (3, 3), feature_group_count=4, use_bias=False)(x)
                x = nn.BatchNorm(use_running_average=True)(x)
                x = nn.Conv(8, (1, 1))(x)
                return nn.Dense(3)(x.mean((1, 2)))

        p = profile(Net(), sds(1, 5, 5, 4))
        rows = {r.path: r for r in p.layers}
        assert rows["Conv_0"].bytes_moved == (25 * 4 + 9 * 4 + 25 * 4) * 4
        assert rows["Conv_1"].bytes_moved == (25 * 4 + 4 * 8 + 25 * 8) * 4
        assert rows["Dense_0"].bytes_moved == (8 + 8 * 3 + 3) * 4
        assert rows["BatchNorm_0"].bytes_moved == 0
        assert math.isnan(rows["BatchNorm_0"].intensity)
        assert p.bytes_by_kind["pointwise"] == rows["Conv_1"].bytes_moved
        assert p.bytes_moved == sum(r.bytes_moved for r in p.layers)
        assert p.training_bytes_moved == 3 * p.bytes_moved
        assert "MA/byte" in p.render(width=160)


# ----------------------------------------------------------------------------- backward


class TestBackward:
    """The backward figures (two transposes per op, each with the forward's mult-adds
    and bytes) agree with what the counter finds in the traced gradient itself, for
    stride-1 SAME layers, where every transpose has the forward's shapes."""

    @pytest.mark.parametrize(
        "f, shapes",
        [
            (lambda x, w: conv(x, w, padding="SAME"), ((2, 6, 6, 3), (3, 3, 3, 4))),
            (lambda x, w: conv(x, w, groups=4, padding="SAME"), ((2, 6, 6, 4), (3, 3, 1, 4))),
            (lambda x, w: conv(x, w), ((2, 5, 5, 6), (1, 1, 6, 3))),
            (jnp.matmul, ((5, 7), (7, 4))),
            (ops.depthwise_conv, ((2, 6, 6, 4), (3, 3, 1, 4))),
        ],
        ids=["standard", "depthwise", "pointwise", "dense", "depthwise_primitive"],
    )
    def test_training_equals_traced_gradient(self, f, shapes):
        x, w = (sds(*s) for s in shapes)
        y = jax.eval_shape(f, x, w)
        forward = count(f, x, w)

        def forward_and_backward(x, w, g):
            _, pullback = jax.vjp(f, x, w)
            return pullback(g)

        traced = count(forward_and_backward, x, w, y)
        assert forward.ops[0].backward_mult_adds == 2 * forward.mult_adds
        assert traced.mult_adds == forward.training_mult_adds == 3 * forward.mult_adds
        assert traced.bytes_moved == forward.training_bytes_moved == 3 * forward.bytes_moved


# ----------------------------------------------------------------------------- XLA cross-check


def _xla_bytes(fn, *args) -> float | None:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    if not analysis or "bytes accessed" not in analysis:
        return None
    return float(analysis["bytes accessed"])


class TestXlaBytes:
    """XLA's HloCostAnalysis counts, for one convolution or dot, each operand and the
    result once: exactly our minimum (in float32, which every backend runs as is).
    Where XLA lowers an op to several instructions (the shift loop re-reads the input
    once per tap and updates an accumulator), its count is larger, never smaller:
    ``ours <= xla <= 3 * taps * ours`` (per tap at most a read of the input-sized
    slice and a read and a write of the output-sized accumulator)."""

    @pytest.mark.parametrize(
        "kernel_shape, groups, padding",
        [
            ((3, 3, 8, 16), 1, "VALID"),
            ((3, 3, 8, 16), 1, "SAME"),
            ((3, 3, 1, 8), 8, "SAME"),
            ((5, 5, 2, 12), 4, "VALID"),
            ((1, 1, 8, 16), 1, "VALID"),
        ],
    )
    def test_single_conv_equals_xla(self, kernel_shape, groups, padding):
        x, w = jnp.ones((2, 11, 9, 8)), jnp.ones(kernel_shape)
        f = lambda x, w: conv(x, w, groups=groups, strides=2, padding=padding)
        xla = _xla_bytes(f, x, w)
        if xla is None:
            pytest.skip("this backend's cost analysis reports no bytes accessed")
        assert count(f, x, w).bytes_moved == xla

    def test_dot_equals_xla(self):
        a, b = jnp.ones((7, 33)), jnp.ones((33, 5))
        xla = _xla_bytes(jnp.matmul, a, b)
        if xla is None:
            pytest.skip("this backend's cost analysis reports no bytes accessed")
        assert count(jnp.matmul, a, b).bytes_moved == xla

    @pytest.mark.parametrize("impl", ["xla", "shift"])
    def test_depthwise_and_separable_impls(self, impl):
        x, dk, pk = jnp.ones((2, 12, 12, 8)), jnp.ones((3, 3, 1, 8)), jnp.ones((8, 16))
        for f, args in (
            (lambda x, dk: ops.depthwise_conv(x, dk, impl=impl), (x, dk)),
            (lambda x, dk, pk: ops.separable_conv(x, dk, pk, impl=impl), (x, dk, pk)),
        ):
            xla = _xla_bytes(f, *args)
            if xla is None:
                pytest.skip("this backend's cost analysis reports no bytes accessed")
            ours = count(f, *args).bytes_moved
            if impl == "xla":  # one grouped convolution (and one 1x1) per step
                assert ours == xla
            else:
                assert ours <= xla <= 3 * 9 * ours


# ----------------------------------------------------------------------------- roofline


class TestDevice:
    def test_arithmetic(self):
        d = Device(peak_flops=4e12, bandwidth=1e11, name="toy")
        assert d.ridge_intensity == 20.0
        # compute-bound: 1e9 mult-adds = 2e9 flops at 4e12 -> 5e-4 s; 1e6 bytes -> 1e-5 s
        assert d.predict(1e9, 1e6) == pytest.approx(5e-4)
        assert d.bound(1e9, 1e6) == "compute"
        # memory-bound: 1e6 mult-adds -> 5e-7 s; 1e8 bytes -> 1e-3 s
        assert d.predict(1e6, 1e8) == pytest.approx(1e-3)
        assert d.bound(1e6, 1e8) == "memory"

    @pytest.mark.parametrize(
        "kwargs, name",
        [
            ({"peak_flops": 0, "bandwidth": 1.0}, "peak_flops"),
            ({"peak_flops": -1e12, "bandwidth": 1.0}, "peak_flops"),
            ({"peak_flops": 1e12, "bandwidth": 0.0}, "bandwidth"),
            ({"peak_flops": 1e12, "bandwidth": math.inf}, "bandwidth"),
            ({"peak_flops": math.nan, "bandwidth": 1.0}, "peak_flops"),
        ],
    )
    def test_bad_rates(self, kwargs, name):
        with pytest.raises(ValueError, match=f"`{name}`"):
            Device(**kwargs)

    def test_bad_types_and_names(self):
        with pytest.raises(TypeError, match="`bandwidth`"):
            Device(1e12, "fast")
        with pytest.raises(ValueError, match=r"`device` 'h200'.*h100"):
            Device.named("h200")
        with pytest.raises(ValueError, match="`device`"):
            roofline(count(jnp.matmul, sds(2, 2), sds(2, 2)), "gpu")
        with pytest.raises(TypeError, match="`cost`"):
            roofline({"mult_adds": 1}, "h100")
        with pytest.raises(ValueError, match="`repeats`"):
            Device.measure(repeats=0)

    def test_builtins(self):
        assert {"h100", "a100", "tpu-v5e", "tpu-v4"} <= set(DEVICES)
        assert Device.named("H100") is DEVICES["h100"]
        assert Device.named("tpu_v4") is DEVICES["tpu-v4"]
        for device in DEVICES.values():
            assert device.peak_flops > 1e13 and device.bandwidth > 1e11 and device.source

    def test_measure_structure(self):
        d = Device.measure(copy_bytes=1 << 20, matmul_size=64, repeats=1)
        assert d.peak_flops > 0 and d.bandwidth > 0
        assert math.isfinite(d.peak_flops) and math.isfinite(d.bandwidth)
        assert "measured" in d.source


class TestRoofline:
    def test_rows_from_count(self):
        d = Device(peak_flops=2e9, bandwidth=1e8, name="toy")  # ridge: 10 mult-adds/byte
        f = lambda x, dk, pk: ops.separable_conv(x, dk, pk)
        c = count(f, sds(1, 8, 8, 16), sds(3, 3, 1, 16), sds(16, 32))
        r = roofline(c, d)
        assert [row.kind for row in r.rows] == ["depthwise", "pointwise"]
        for row, op in zip(r.rows, c.ops, strict=True):
            expected = max(2 * op.mult_adds / 2e9, op.bytes_moved / 1e8)
            assert row.predicted_s == pytest.approx(expected)
            assert row.bound == ("compute" if op.intensity >= 10 else "memory")
        assert r.predicted_s == pytest.approx(sum(row.predicted_s for row in r.rows))
        assert r.predicted_by_kind()["depthwise"] == pytest.approx(r.rows[0].predicted_s)
        assert not r.measured and r.measured_s is None
        with pytest.raises(ValueError, match="measure=True"):
            r.correlation()
        train = roofline(c, d, training=True)
        assert train.rows[0].mult_adds == 3 * c.ops[0].mult_adds
        assert train.rows[0].bytes_moved == 3 * c.ops[0].bytes_moved
        assert train.predicted_s == pytest.approx(3 * r.predicted_s)

    def test_gap_explained(self):
        assert gap_explained(8.0, 2.0, 4.0) == pytest.approx(0.5)
        assert gap_explained(8.0, 2.0, 2.0) == pytest.approx(1.0)
        assert gap_explained(8.0, 2.0, 8.0) == pytest.approx(0.0)
        assert math.isnan(gap_explained(3.0, 3.0, 2.0))
        with pytest.raises(ValueError, match="`time_ratio`"):
            gap_explained(8.0, 0.0, 2.0)

    def test_pearson_against_definition(self):
        a, b = [1.0, 2.0, 4.0, 7.0], [2.0, 1.0, 5.0, 9.0]
        ma, mb = sum(a) / 4, sum(b) / 4
        cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
        va = sum((x - ma) ** 2 for x in a)
        vb = sum((y - mb) ** 2 for y in b)
        assert pearson(a, b) == pytest.approx(cov / math.sqrt(va * vb))
        assert math.isnan(pearson([1.0, 1.0], [1.0, 2.0]))


class TestMeasure:
    """profile(measure=True): every counted row gets a positive time; nothing else."""

    def test_profile_measure_and_roofline(self):
        class Net(nn.Module):
            @nn.compact
            def __call__(self, x):
                x = nn.Conv(4, (3, 3), feature_group_count=4)(x)
                x = nn.relu(x)
                return nn.Conv(6, (1, 1))(x)

        p = profile(Net(), sds(1, 6, 6, 4), measure=True, measure_repeats=1)
        counted = [r for r in p.layers if r.kind != "other"]
        assert all(r.measured_s is not None and r.measured_s > 0 for r in counted)
        assert set(p.time_by_kind) == {"depthwise", "pointwise"}
        assert p.measured_s == pytest.approx(sum(r.measured_s for r in counted))
        assert "time share" in p.render(width=200)

        r = roofline(p, "h100")
        assert r.measured
        assert [row.measured_s for row in r.rows] == [row.measured_s for row in counted]
        assert set(r.measured_by_kind()) == {"depthwise", "pointwise"}
        corr = r.correlation()
        assert math.isnan(corr) or -1.0 <= corr <= 1.0
        assert "measured share" in r.render(width=200)
        assert roofline(p, "h100", training=True).rows[0].measured_s is None
        fig = r.plot(title="toy")
        assert len(fig.axes) == 2
        data = r.to_dict()
        assert data["device"]["name"] == DEVICES["h100"].name and "correlation" in data

    def test_separable_primitive_steps_are_timed_apart(self):
        class Sep(nn.Module):
            @nn.compact
            def __call__(self, x):
                dk = self.param("dk", nn.initializers.ones, (3, 3, 1, 4))
                pk = self.param("pk", nn.initializers.ones, (4, 5))
                return ops.separable_conv(x, dk, pk)

        p = profile(Sep(), sds(1, 5, 5, 4), measure=True, measure_repeats=1)
        assert [r.kind for r in p.layers] == ["depthwise", "pointwise"]
        assert all(r.measured_s > 0 for r in p.layers)

    def test_bad_repeats(self):
        with pytest.raises(ValueError, match="`measure_repeats`"):
            profile(nn.Dense(2), sds(1, 3), measure=True, measure_repeats=0)
        assert np.isfinite(profile(nn.Dense(2), sds(1, 3)).intensity)


# ----------------------------------------------------------------------------- CLI


def test_cli_device(capsys):
    import argparse

    from sepconv_jax.apps import cost_report

    parser = argparse.ArgumentParser(prog="sepconv-jax")
    cost_report.register_cli(parser.add_subparsers(dest="command", required=True))
    argv = ["cost", "--model", "mobilenet_v1", "--resolution", "32", "--width", "0.25"]
    args = parser.parse_args([*argv, "--device", "tpu-v4"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "Roofline on TPU v4" in out and "Roofline by layer" in out and "memory" in out
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--device", "h200"])


# ----------------------------------------------------------------------------- demo


def test_demo_layer_rows_predictions():
    from sepconv_jax.apps import demo

    d = Device(peak_flops=1e10, bandwidth=1e9)
    row = demo.layer_rows(repeats=1, layers=((8, 16, 32),), device=d)[0]
    x, y = 64 * 16 * 4, 64 * 32 * 4  # bytes of input and output (8x8 positions)
    standard = max(2 * 64 * 9 * 16 * 32 / 1e10, (x + 9 * 16 * 32 * 4 + y) / 1e9)
    depthwise = max(2 * 64 * 9 * 16 / 1e10, (x + 9 * 16 * 4 + x) / 1e9)
    pointwise = max(2 * 64 * 16 * 32 / 1e10, (x + 16 * 32 * 4 + y) / 1e9)
    assert row["standard_predicted_ms"] == pytest.approx(1e3 * standard)
    assert row["separable_predicted_ms"] == pytest.approx(1e3 * (depthwise + pointwise))


def test_demo_comparison_gap():
    from sepconv_jax.apps import demo, demo_report

    def run(name, mult_adds, step_ms, predicted_ms):
        return demo.ModelRun(
            name, 10, mult_adds, mult_adds, 10, step_ms, 1.0, 0.5, (1,), (0.5,), (1.0,),
            predicted_ms,
        )  # fmt: skip

    settings = {"input": "8x8x1", "n_train": 4, "n_test": 4, "epochs": 1, "batch_size": 2}
    settings |= {"seed": 0, "devices": 1, "backend": "cpu"}
    c = demo.Comparison(
        "digits", run("standard", 800, 4.0, 2.0), run("separable", 100, 2.0, 0.5), settings, 1.0
    )
    r = c.ratios()
    # mult-adds 8x, time 2x, roofline 4x: half of the gap on a log scale.
    assert r["predicted_step_time"] == pytest.approx(4.0)
    assert r["gap_explained"] == pytest.approx(0.5)
    assert "50% of the gap" in demo_report.gap_sentence(r)
