"""The NNX modules: parameters, parity with linen, references, transforms, bridge, errors."""

from __future__ import annotations

import itertools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.nnx import bridge

from sepconv_jax import linen as sl
from sepconv_jax import nnx as sn
from tests import reference as ref

RTOL = ATOL = 2e-5  # float32 result vs float64 reference, on O(1) data with <= ~100 terms
HIGHEST = jax.lax.Precision.HIGHEST


def _rand(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _abstract(cls, *args, **kwargs):
    """``cls(*args, **kwargs, rngs=...)`` with shapes only: no initializer runs."""
    return nnx.eval_shape(lambda: cls(*args, **kwargs, rngs=nnx.Rngs(0)))


def _params(module: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def _load(module: nnx.Module, params: dict) -> None:
    """Writes plain arrays into the module's parameters, by name."""
    for name, value in params.items():
        getattr(module, name)[...] = jnp.asarray(value)


# ----------------------------------------------------------------------------- params


@pytest.mark.parametrize("n", [1, 2, 3])
def test_param_names_and_shapes(n):
    c, m, f = 3, 2, 5
    window = (3, 2, 1)[:n]
    dw = _abstract(sn.DepthwiseConv, c, window, depth_multiplier=m)
    assert jax.tree.map(jnp.shape, _params(dw)) == {"kernel": (*window, 1, c * m), "bias": (c * m,)}
    pw = _abstract(sn.PointwiseConv, c, f)
    assert jax.tree.map(jnp.shape, _params(pw)) == {"kernel": (c, f), "bias": (f,)}
    sep = _abstract(sn.SeparableConv, c, f, window, depth_multiplier=m, use_depthwise_bias=True)
    assert jax.tree.map(jnp.shape, _params(sep)) == {
        "depthwise_kernel": (*window, 1, c * m),
        "pointwise_kernel": (c * m, f),
        "depthwise_bias": (c * m,),
        "bias": (f,),
    }
    plain = _abstract(sn.SeparableConv, c, f, window, use_bias=False)
    assert set(_params(plain)) == {"depthwise_kernel", "pointwise_kernel"}
    assert plain.bias is None and plain.depthwise_bias is None


def test_param_counts_match_formula_for_every_option_combination():
    c, f = 3, 4
    for n, m, use_bias, use_dw_bias in itertools.product([1, 2, 3], [1, 2], *[[False, True]] * 2):
        window = (3, 2, 2)[:n]
        taps = math.prod(window)
        cases = [
            (
                _abstract(sn.DepthwiseConv, c, window, depth_multiplier=m, use_bias=use_bias),
                taps * c * m + use_bias * c * m,
            ),
            (_abstract(sn.PointwiseConv, c, f, use_bias=use_bias), c * f + use_bias * f),
            (
                _abstract(
                    sn.SeparableConv,
                    c,
                    f,
                    window,
                    depth_multiplier=m,
                    use_bias=use_bias,
                    use_depthwise_bias=use_dw_bias,
                ),
                taps * c * m + c * m * f + use_bias * f + use_dw_bias * c * m,
            ),
        ]
        for module, want in cases:
            count = sum(math.prod(a.shape) for a in jax.tree.leaves(_params(module)))
            assert count == want, (type(module).__name__, n, m, use_bias, use_dw_bias)


def test_default_init_variance_follows_true_fan_in():
    c, m, f = 256, 2, 256
    sep = sn.SeparableConv(c, f, (3, 3), depth_multiplier=m, rngs=nnx.Rngs(0))
    # 4608 and 131072 samples: the relative std of the sample variance is <= 2.1%.
    np.testing.assert_allclose(np.var(sep.depthwise_kernel[...]), 1 / 9, rtol=0.1)
    np.testing.assert_allclose(np.var(sep.pointwise_kernel[...]), 1 / (c * m), rtol=0.1)


def test_options_are_keyword_only_and_rngs_is_required():
    with pytest.raises(TypeError):
        sn.DepthwiseConv(3, (3, 3), 2, rngs=nnx.Rngs(0))  # strides given positionally
    with pytest.raises(TypeError):
        sn.SeparableConv(3, 4, (3, 3))  # no rngs
    with pytest.raises(TypeError):
        sn.PointwiseConv(3, 4, True, rngs=nnx.Rngs(0))


# ----------------------------------------------------------------------------- parity


PARITY = [
    # (window, options)
    ((3, 3), dict()),
    ((3, 3), dict(strides=2, depth_multiplier=2, use_depthwise_bias=True)),
    ((2, 3), dict(padding=((1, 0), (2, 1)), kernel_dilation=(2, 1), use_bias=False)),
    ((3,), dict(padding="CAUSAL", data_format="channels_first")),
    ((3, 2, 2), dict(padding=1, padding_mode="reflect", strides=(1, 2, 1))),
    ((3, 3), dict(dtype=jnp.float16)),
]


@pytest.mark.parametrize("window,options", PARITY)
def test_linen_and_nnx_give_identical_outputs(window, options):
    c, f = 3, 4
    n = len(window)
    channels_first = options.get("data_format") == "channels_first"
    spatial = (7, 6, 5)[:n]
    x = _rand(0, (2, c, *spatial) if channels_first else (2, *spatial, c))
    key = jax.random.key(1)
    sep_opts = {"precision": HIGHEST, **options}
    win_opts = {k: v for k, v in sep_opts.items() if k != "use_depthwise_bias"}
    pw_opts = {
        k: v for k, v in sep_opts.items() if k in ("use_bias", "data_format", "dtype", "precision")
    }
    pairs = [
        (
            sl.DepthwiseConv(window, **win_opts),
            sn.DepthwiseConv(c, window, **win_opts, rngs=nnx.Rngs(0)),
        ),
        (sl.PointwiseConv(f, **pw_opts), sn.PointwiseConv(c, f, **pw_opts, rngs=nnx.Rngs(0))),
        (
            sl.SeparableConv(f, window, **sep_opts),
            sn.SeparableConv(c, f, window, **sep_opts, rngs=nnx.Rngs(0)),
        ),
    ]
    for i, (lin, nx) in enumerate(pairs):
        shapes = jax.eval_shape(lin.init, key, x)["params"]
        chex.assert_trees_all_equal_shapes(shapes, _params(nx))
        params = {name: _rand(10 * i + j, s.shape) for j, (name, s) in enumerate(shapes.items())}
        _load(nx, params)
        want = jax.jit(lin.apply)({"params": params}, x)
        got = nnx.jit(lambda mod, x: mod(x))(nx, x)
        chex.assert_trees_all_equal(got, want)


def test_separable_matches_reference():
    c, m, f = 3, 2, 4
    x = _rand(0, (2, 7, 8, c))
    sep = sn.SeparableConv(
        c,
        f,
        (3, 3),
        strides=2,
        kernel_dilation=(1, 2),
        depth_multiplier=m,
        use_depthwise_bias=True,
        precision=HIGHEST,
        rngs=nnx.Rngs(0),
    )
    p = {
        "depthwise_kernel": _rand(1, (3, 3, 1, c * m)),
        "pointwise_kernel": _rand(2, (c * m, f)),
        "depthwise_bias": _rand(3, (c * m,)),
        "bias": _rand(4, (f,)),
    }
    _load(sep, p)
    mid = ref.depthwise_conv_nd(
        x, p["depthwise_kernel"], strides=2, dilation=(1, 2), bias=p["depthwise_bias"]
    )
    want = ref.pointwise_conv_nd(mid, p["pointwise_kernel"], p["bias"])
    np.testing.assert_allclose(sep(x), want, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- transforms


class _Net(nnx.Module):
    """A small model built from all three modules."""

    def __init__(self, rngs: nnx.Rngs):
        self.dw = sn.DepthwiseConv(3, (3, 3), depth_multiplier=2, precision=HIGHEST, rngs=rngs)
        self.pw = sn.PointwiseConv(6, 5, precision=HIGHEST, rngs=rngs)
        self.sep = sn.SeparableConv(5, 4, (3, 3), strides=2, precision=HIGHEST, rngs=rngs)

    def __call__(self, x):
        return self.sep(self.pw(jax.nn.relu(self.dw(x))))


def _net(seed=0):
    """A ``_Net`` with random params, built without running the initializers."""
    graphdef, params = nnx.split(_abstract(_Net), nnx.Param)
    gen = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: jnp.asarray(gen.standard_normal(a.shape), a.dtype), params)
    return nnx.merge(graphdef, params)


def test_nnx_jit_matches_eager_and_does_not_retrace():
    model = _net()
    traces = []

    @nnx.jit
    def fwd(model, x):
        traces.append(None)
        return model(x)

    x = _rand(0, (2, 8, 8, 3))
    np.testing.assert_allclose(fwd(model, x), model(x), rtol=1e-5, atol=1e-5)
    for seed in range(1, 3):
        fwd(model, _rand(seed, (2, 8, 8, 3)))
    assert len(traces) == 1


def test_vmap_and_grad():
    model = _net()
    xs = _rand(0, (3, 2, 8, 8, 3))
    batched = nnx.jit(nnx.vmap(lambda m, x: m(x), in_axes=(None, 0)))(model, xs)
    fwd = nnx.jit(lambda m, x: m(x))
    np.testing.assert_allclose(batched, np.stack([fwd(model, x) for x in xs]), atol=1e-5)

    # nnx.grad and jax.grad over the functional split agree.
    def loss(model, x):
        return jnp.mean(model(x) ** 2)

    grads = nnx.jit(nnx.grad(loss))(model, xs[0])
    graphdef, params = nnx.split(model, nnx.Param)

    def pure_loss(params, x):
        return loss(nnx.merge(graphdef, params), x)

    pure = jax.jit(jax.grad(pure_loss))(params, xs[0])
    chex.assert_trees_all_close(
        nnx.to_pure_dict(nnx.state(grads)), nnx.to_pure_dict(pure), atol=1e-6
    )
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(pure))
    assert any(np.any(g != 0) for g in jax.tree.leaves(pure))


def test_training_step_with_optax_changes_params():
    import optax

    model = _Net(nnx.Rngs(0))  # the default initializers, as in real training
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    x, target = _rand(0, (2, 8, 8, 3)), _rand(1, (2, 4, 4, 4))

    @nnx.jit
    def step(model, optimizer, x, target):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    before = jax.tree.map(np.asarray, _params(model))
    losses = [float(step(model, optimizer, x, target)) for _ in range(3)]
    assert losses[-1] < losses[0]
    after = _params(model)
    assert any(not np.array_equal(before[k][p], after[k][p]) for k in before for p in before[k])


def test_bridge_wraps_linen_separable_conv():
    linen_layer = sl.SeparableConv(4, (3, 3), strides=2, use_depthwise_bias=True, precision=HIGHEST)
    wrapped = bridge.ToNNX(linen_layer, rngs=nnx.Rngs(0))
    x = _rand(0, (2, 8, 8, 3))
    bridge.lazy_init(wrapped, x)
    params = _params(wrapped)
    assert {k: v.shape for k, v in params.items()} == {
        "depthwise_kernel": (3, 3, 1, 3),
        "pointwise_kernel": (3, 4),
        "depthwise_bias": (3,),
        "bias": (4,),
    }
    want = linen_layer.apply({"params": params}, x)
    chex.assert_trees_all_equal(wrapped(x), want)
    # The same params in the native NNX module give the same output.
    native = sn.SeparableConv(
        3, 4, (3, 3), strides=2, use_depthwise_bias=True, precision=HIGHEST, rngs=nnx.Rngs(1)
    )
    _load(native, params)
    chex.assert_trees_all_equal(native(x), want)


def test_bridge_wraps_nnx_separable_conv_in_linen():
    """The other direction: an NNX SeparableConv inside a linen model via ``bridge.to_linen``."""
    x = _rand(0, (2, 8, 8, 3))
    layer = bridge.to_linen(sn.SeparableConv, 3, 4, (3, 3), strides=2, precision=HIGHEST)
    variables = layer.init(jax.random.key(0), x)
    params = variables["params"]
    assert {k: v.shape for k, v in params.items()} == {
        "depthwise_kernel": (3, 3, 1, 3),
        "pointwise_kernel": (3, 4),
        "bias": (4,),
    }
    want = sl.SeparableConv(4, (3, 3), strides=2, precision=HIGHEST).apply({"params": params}, x)
    chex.assert_trees_all_equal(layer.apply(variables, x), want)


# ----------------------------------------------------------------------------- errors


R = nnx.Rngs(0)


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda: sn.DepthwiseConv(3, 3, rngs=R), TypeError, "`kernel_size` must be a sequence"),
        (lambda: sn.DepthwiseConv(0, (3, 3), rngs=R), ValueError, "`in_features` must be >= 1"),
        (lambda: sn.DepthwiseConv(3, (3, 3), strides=(1, 2, 1), rngs=R), ValueError, "`strides`"),
        (lambda: sn.DepthwiseConv(3, (3, 3), padding="FULL", rngs=R), ValueError, "`padding`"),
        (lambda: sn.DepthwiseConv(3, (3, 3), padding_mode="x", rngs=R), ValueError, "padding_mode"),
        (lambda: sn.DepthwiseConv(3, (3, 3), depth_multiplier=0, rngs=R), ValueError, "`depth_"),
        (lambda: sn.DepthwiseConv(3, (3, 3), impl="magic", rngs=R), ValueError, "`impl`"),
        (lambda: sn.PointwiseConv(3, 0, rngs=R), ValueError, "`out_features` must be >= 1"),
        (lambda: sn.PointwiseConv(3, 4, data_format="NCHW", rngs=R), ValueError, "`data_format`"),
        (lambda: sn.SeparableConv(3, 4, (3, 3), dtype="int8", rngs=R), TypeError, "`dtype`"),
        (lambda: sn.SeparableConv(3, 4, (3, 3), bias_init=None, rngs=R), TypeError, "`bias_init`"),
    ],
)
def test_bad_options_fail_at_construction(make, error, match):
    with pytest.raises(error, match=re.escape(match)):
        make()


def test_wrong_input_channels_and_rank():
    sep = sn.SeparableConv(3, 4, (3, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=re.escape("`x` has 5 channels but this SeparableConv")):
        sep(jnp.ones((1, 6, 6, 5)))
    with pytest.raises(ValueError, match=re.escape("so `x` needs rank >= 3")):
        sep(jnp.ones((6, 6)))
    pw = sn.PointwiseConv(3, 4, data_format="channels_first", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="in_features=3"):
        pw(jnp.ones((1, 4, 6, 6)))
