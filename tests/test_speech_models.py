"""MatchboxNet and QuartzNet: parameter counts against the papers, linen vs NNX, streaming.

Expected parameter counts are written out here from the papers' tables (kernel
widths and channels per block, Majumdar & Ginsburg 2020 Table 1; Kriman et al. 2019
Table 1), independently of the model code, and compared with the published ones
(MatchboxNet Table 2, thousands to two significant digits; QuartzNet Table 2).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from sepconv_jax import models
from sepconv_jax.models import nnx as models_nnx
from sepconv_jax.models import speech, speech_nnx

KEY = jax.random.key(0)
TOL = 1e-5  # streamed vs offline through a whole float32 model


# ----------------------------------------------------------------------------- counts


def _sub_block(c_in, c_out, k):
    """One sub-block: depthwise (k per channel) + pointwise, or a 1x1 conv; BN scale and bias."""
    conv = c_in * c_out if k == 1 else c_in * k + c_in * c_out
    return conv + 2 * c_out


def _block(c_in, c_out, k, repeat=1, residual=False):
    total = _sub_block(c_in, c_out, k) + (repeat - 1) * _sub_block(c_out, c_out, k)
    return total + (c_in * c_out + 2 * c_out if residual else 0)


def _matchboxnet_count(blocks, repeat, channels, features=64, classes=30):
    # Conv1 k11 -> 128; B1..B3 k13, 15, 17 -> C (B = 6: each twice); Conv2 k29 -> 128;
    # Conv3 1x1 -> 128; average pool; dense to the classes.
    kernels = {3: (13, 15, 17), 6: (13, 13, 15, 15, 17, 17)}[blocks]
    total = _block(features, 128, 11)
    c = 128
    for k in kernels:
        total += _block(c, channels, k, repeat, residual=True)
        c = channels
    total += _block(c, 128, 29) + _block(128, 128, 1)
    return total + 128 * classes + classes


def _quartznet_count(blocks, repeat, features=64, classes=29):
    # C1 k33 s2 -> 256; B1..B5 (k33 256, k39 256, k51 512, k63 512, k75 512), each
    # blocks / 5 times; C2 k87 d2 -> 512; C3 1x1 -> 1024; C4 1x1 with bias -> classes.
    kinds = ((33, 256), (39, 256), (51, 512), (63, 512), (75, 512))
    total, c = _block(features, 256, 33), 256
    for k, width in kinds:
        for _ in range(blocks // 5):
            total += _block(c, width, k, repeat, residual=True)
            c = width
    total += _block(c, 512, 87) + _block(512, 1024, 1)
    return total + 1024 * classes + classes


def _linen_params(model, x):
    variables = jax.eval_shape(lambda x: model.init(KEY, x), x)
    return sum(p.size for p in jax.tree.leaves(variables["params"]))


def _nnx_params(make):
    abstract = nnx.eval_shape(make)
    return sum(p.size for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize(
    "blocks, repeat, published_k",
    [(3, 1, 77), (3, 2, 93), (6, 2, 140)],
)
def test_matchboxnet_params_match_the_paper(blocks, repeat, published_k):
    expected = _matchboxnet_count(blocks, repeat, 64)
    x = jax.ShapeDtypeStruct((1, 128, 64), jnp.float32)
    model = models.MatchboxNet(blocks=blocks, repeat=repeat, channels=64, num_classes=30)
    assert _linen_params(model, x) == expected
    assert (
        _nnx_params(
            lambda: speech_nnx.MatchboxNet(64, blocks=blocks, repeat=repeat, rngs=nnx.Rngs(0))
        )
        == expected
    )
    # The paper's Table 2 gives thousands to two significant digits.
    assert float(f"{expected / 1000:.2g}") == published_k


def test_matchboxnet_counts_written_out():
    # The sums above, by hand for 3x1x64: Conv1 704 + 8192 + 256; B1 1664 + 8192 + 128
    # and its residual 8192 + 128; B2 960 + 4096 + 128 + 4224; B3 1088 + 4096 + 128 +
    # 4224; Conv2 1856 + 8192 + 256; Conv3 16384 + 256; dense 3840 + 30.
    assert _matchboxnet_count(3, 1, 64) == 77_214
    assert _matchboxnet_count(3, 2, 64) == 92_766
    assert _matchboxnet_count(6, 2, 64) == 136_542


@pytest.mark.parametrize("blocks, published_m", [(5, 6.7), (10, 12.8), (15, 18.9)])
def test_quartznet_params_match_the_paper(blocks, published_m):
    expected = _quartznet_count(blocks, 5)
    x = jax.ShapeDtypeStruct((1, 64, 64), jnp.float32)
    assert _linen_params(models.QuartzNet(blocks=blocks, repeat=5), x) == expected
    assert (
        _nnx_params(lambda: speech_nnx.QuartzNet(64, blocks=blocks, rngs=nnx.Rngs(0))) == expected
    )
    assert round(expected / 1e6, 1) == published_m


def test_block_layout_repeats_kinds_as_quartznet():
    assert speech.block_layout("abcde", 15) == tuple("aaabbbcccdddeee")
    assert speech.block_layout((13, 15, 17), 4) == (13, 13, 15, 17)
    assert speech.block_layout((13, 15, 17), 1) == (13,)


# ----------------------------------------------------------------------------- helpers


def _random_variables(model, x, seed=0, **kwargs):
    """Random parameters and batch statistics (variances in [0.5, 1.5]) of ``model``."""
    shapes = jax.eval_shape(lambda: model.init(KEY, x, **kwargs))
    gen = np.random.default_rng(seed)

    def draw(path, leaf):
        if jax.tree_util.keystr(path).endswith("['var']"):
            return jnp.asarray(gen.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        return jnp.asarray(0.3 * gen.standard_normal(leaf.shape), leaf.dtype)

    variables = {k: shapes[k] for k in ("params", "batch_stats")}
    return jax.tree_util.tree_map_with_path(draw, variables)


def _zero_cache(model, chunk, variables):
    shapes = jax.eval_shape(
        lambda: model.apply(variables, chunk, decode=True, mutable=["cache"])[1]
    )
    return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)


def _stream(model, variables, x, lengths):
    """Streams ``x`` through a linen model in chunks of ``lengths``; joined outputs."""
    step = jax.jit(functools.partial(model.apply, decode=True, mutable=["cache"]))
    cache = _zero_cache(model, x[:, : lengths[0]], variables)
    ys, start = [], 0
    for n in lengths:
        y, cache = step({**variables, **cache}, x[:, start : start + n])
        ys.append(y)
        start += n
    return np.concatenate(ys, axis=1)


# ----------------------------------------------------------------------------- streaming


def test_matchboxnet_streams_frame_by_frame():
    """A causal MatchboxNet, one frame at a time: frame t's output is the offline output
    on the clip of frames 0..t, and the last frame's is the whole clip's."""
    model = models.MatchboxNet(blocks=3, repeat=2, channels=16, num_classes=5, causal=True)
    x = np.random.default_rng(0).standard_normal((2, 40, 64)).astype(np.float32)
    variables = _random_variables(model, x)
    streamed = _stream(model, variables, x, [1] * 40)
    assert streamed.shape == (2, 40, 5)
    apply = jax.jit(model.apply)
    for t in (0, 7, 23, 39):
        offline = np.asarray(apply(variables, x[:, : t + 1]))
        np.testing.assert_allclose(streamed[:, t], offline, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("pooling", [None, "max"])
def test_matchboxnet_features_stream(pooling):
    """Per-frame features stream exactly; a max pool streams as a running maximum."""
    model = models.MatchboxNet(
        blocks=2, repeat=1, channels=8, include_top=False, pooling=pooling, causal=True
    )
    x = np.random.default_rng(1).standard_normal((1, 30, 12)).astype(np.float32)
    variables = _random_variables(model, x)
    streamed = _stream(model, variables, x, [5, 1, 12, 3, 9])
    offline = np.asarray(jax.jit(model.apply)(variables, x))
    if pooling is None:
        np.testing.assert_allclose(streamed, offline, rtol=TOL, atol=TOL)
    else:
        np.testing.assert_allclose(streamed[:, -1], offline, rtol=TOL, atol=TOL)


def test_quartznet_streams_in_even_chunks():
    """A causal QuartzNet streams chunks of an even number of frames (C1's stride 2)."""
    model = models.QuartzNet(blocks=5, repeat=1, num_classes=7, causal=True)
    x = np.random.default_rng(2).standard_normal((1, 36, 16)).astype(np.float32)
    variables = _random_variables(model, x)
    offline = np.asarray(jax.jit(model.apply)(variables, x))
    assert offline.shape == (1, 18, 7)
    streamed = _stream(model, variables, x, [2] * 10 + [6, 10])
    np.testing.assert_allclose(streamed, offline, rtol=TOL, atol=TOL * np.abs(offline).max())


def test_strided_residual_block_streams():
    block = models.TimeChannelSeparableBlock(
        features=6, kernel_size=5, repeat=2, strides=3, causal=True
    )
    x = np.random.default_rng(3).standard_normal((2, 27, 4)).astype(np.float32)
    variables = _random_variables(block, x)
    offline = np.asarray(block.apply(variables, x))
    assert offline.shape == (2, 9, 6)
    np.testing.assert_allclose(
        _stream(block, variables, x, [3, 12, 6, 6]), offline, rtol=TOL, atol=TOL
    )


def test_causal_model_ignores_the_future_and_symmetric_one_does_not():
    x = np.random.default_rng(4).standard_normal((1, 24, 8)).astype(np.float32)
    changed = x.copy()
    changed[0, 15] += 3.0
    for causal in (True, False):
        model = models.MatchboxNet(blocks=1, channels=8, include_top=False, causal=causal)
        variables = _random_variables(model, x)
        a, b = (np.asarray(model.apply(variables, v)) for v in (x, changed))
        if causal:
            np.testing.assert_array_equal(a[:, :15], b[:, :15])
        else:
            assert np.abs(a[:, :15] - b[:, :15]).max() > 0
        assert np.abs(a[:, 15:] - b[:, 15:]).max() > 0


# ----------------------------------------------------------------------------- NNX


@pytest.mark.parametrize("causal", [False, True])
def test_nnx_matchboxnet_equals_linen_and_streams(causal):
    x = np.random.default_rng(5).standard_normal((2, 20, 10)).astype(np.float32)
    linen_model = models.MatchboxNet(blocks=2, repeat=2, channels=8, num_classes=4, causal=causal)
    variables = _random_variables(linen_model, x)
    model = models_nnx.from_linen(linen_model, variables)
    assert type(model) is speech_nnx.MatchboxNet and model.in_features == 10
    offline = np.asarray(linen_model.apply(variables, x))
    np.testing.assert_allclose(model(x), offline, rtol=TOL, atol=TOL)
    if causal:
        model.init_cache((2, 1, 10))
        step = nnx.jit(lambda m, chunk: m(chunk, decode=True))
        ys = [step(model, chunk) for chunk in np.split(x, [4, 5, 13], axis=1)]
        np.testing.assert_allclose(ys[-1][:, -1], offline, rtol=TOL, atol=TOL)


def test_nnx_quartznet_equals_linen_and_streams_in_a_scan():
    x = np.random.default_rng(6).standard_normal((1, 24, 12)).astype(np.float32)
    linen_model = models.QuartzNet(blocks=5, repeat=1, num_classes=6, causal=True)
    variables = _random_variables(linen_model, x)
    model = models_nnx.from_linen(linen_model, variables)
    assert type(model) is speech_nnx.QuartzNet and model.in_features == 12
    offline = np.asarray(linen_model.apply(variables, x))
    np.testing.assert_allclose(model(x), offline, rtol=TOL, atol=TOL * np.abs(offline).max())

    model.init_cache((1, 2, 12))
    graphdef, state = nnx.split(model)

    def body(state, chunk):
        module = nnx.merge(graphdef, state)
        y = module(chunk, decode=True)
        return nnx.state(module), y

    chunks = x.reshape(1, 6, 4, 12).transpose(1, 0, 2, 3)
    _, ys = jax.jit(lambda s, xs: lax.scan(body, s, xs))(state, chunks)
    streamed = np.asarray(ys).transpose(1, 0, 2, 3).reshape(offline.shape)
    np.testing.assert_allclose(streamed, offline, rtol=TOL, atol=TOL * np.abs(offline).max())


def test_training_mode_updates_batch_statistics():
    model = models.MatchboxNet(blocks=1, channels=8, num_classes=3, block_dropout_rate=0.1)
    x = np.random.default_rng(7).standard_normal((4, 16, 6)).astype(np.float32)
    variables = model.init(KEY, x)
    logits, updates = model.apply(
        variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": KEY}
    )
    assert logits.shape == (4, 3)
    before = variables["batch_stats"]["prologue"]["bn1"]["mean"]
    after = updates["batch_stats"]["prologue"]["bn1"]["mean"]
    assert np.abs(np.asarray(after) - np.asarray(before)).max() > 0


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_argument():
    x = jnp.ones((1, 8, 4))
    causal = models.MatchboxNet(blocks=1, channels=4, causal=True)
    variables = causal.init(KEY, x)
    with pytest.raises(ValueError, match=r"takes channels-last feature frames \(batch, time"):
        causal.apply(variables, jnp.ones((8, 4)))
    with pytest.raises(ValueError, match=r"in inference mode .* call it with train=False"):
        causal.apply(variables, x, train=True, decode=True, mutable=["cache", "batch_stats"])
    with pytest.raises(ValueError, match="cannot change: call `apply"):
        causal.apply(variables, x, decode=True)
    symmetric = models.MatchboxNet(blocks=1, channels=4)
    with pytest.raises(ValueError, match="has causal=False; build it with causal=True"):
        symmetric.apply(variables, x, decode=True, mutable=["cache"])
    quartz = models.QuartzNet(blocks=1, repeat=1, causal=True)
    with pytest.raises(ValueError, match="3 frames but QuartzNet's first convolution has stride 2"):
        quartz.init(KEY, jnp.ones((1, 3, 4)), decode=True)
    with pytest.raises(ValueError, match=r"`kernel_sizes` has 2 entries \(9, 11\) but the model"):
        models.MatchboxNet(blocks=3, kernel_sizes=(9, 11))
    with pytest.raises(ValueError, match="`repeat` must be >= 1"):
        models.QuartzNet(repeat=0)
    with pytest.raises(TypeError, match="`causal` must be a bool"):
        models.TimeChannelSeparableBlock(causal=1)

    model = speech_nnx.MatchboxNet(4, blocks=1, channels=4, causal=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"call `init_cache\(input_shape\)`"):
        model(x, decode=True)
    with pytest.raises(ValueError, match="has 5 features but this MatchboxNet was built with"):
        model.init_cache((1, 1, 5))
    with pytest.raises(TypeError, match=r"three ints \(batch, time, features\)"):
        model.init_cache((1, 4))
    model.init_cache((1, 1, 4))
    with pytest.raises(ValueError, match=r"`cache` was made for chunks of shape \(1, n, 4\)"):
        model(jnp.ones((2, 1, 4)), decode=True)
    symmetric = speech_nnx.QuartzNet(4, blocks=1, repeat=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="has causal=False; build it with causal=True"):
        symmetric.init_cache((1, 2, 4))
