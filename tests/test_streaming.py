"""Streaming causal convolution: step functions, module decoding, exactness, errors.

The property tests cut a sequence into random chunks (1 frame up to the whole
sequence), stream them through a step function or a module with ``decode=True``,
and compare the joined outputs with the offline ``padding="CAUSAL"`` call on the
whole sequence, to 1e-6 in float32. The offline call is itself checked against
float64 NumPy references in ``test_ops.py``; one case here compares a stream with
the reference directly.
"""

from __future__ import annotations

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax

from sepconv_jax import depthwise_conv, separable_conv, streaming
from sepconv_jax import linen as sl
from sepconv_jax import nnx as sn
from tests import reference as ref

TOL = 1e-6  # streamed vs offline, float32
HIGHEST = "highest"
# The property tests run the "xla" impl, the fastest to compile: a step runs whatever
# depthwise kernel `ops` runs, and every impl computes the same function
# (test_kernels.py). The fixed cases below run the default, "auto".
IMPL = "xla"
KEY = jax.random.key(0)

# Examples per property test; derandomized in CI (conftest.py). Each example
# compiles a step per distinct chunk length and phase, so the counts stay modest.
EXAMPLES = 20
_HYP = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_depthwise_step = jax.jit(
    streaming.depthwise_conv_step,
    static_argnames=("strides", "dilation", "data_format", "precision", "impl"),
)
_separable_step = jax.jit(
    streaming.separable_conv_step,
    static_argnames=("strides", "dilation", "data_format", "precision", "impl"),
)


def _rand(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _chunks(x, lengths, axis):
    """``x`` cut along ``axis`` into consecutive pieces of the given lengths."""
    starts = np.cumsum([0, *lengths[:-1]])
    return [lax.slice_in_dim(x, s, s + n, axis=axis) for s, n in zip(starts, lengths, strict=True)]


def _close(streamed, offline):
    """Equal up to float32 summation order: a streamed output sums the same taps as
    the offline one in another order, so the rounding scales with the size of the
    terms (the output's largest magnitude), not with each element's own value."""
    assert streamed.shape == offline.shape
    scale = max(1.0, float(np.max(np.abs(offline), initial=0.0)))
    np.testing.assert_allclose(streamed, offline, rtol=TOL, atol=TOL * scale)


# ----------------------------------------------------------------------------- strategies


@st.composite
def chunkings(draw, total, multiple=1):
    """Chunk lengths that sum to ``total``, each a multiple of ``multiple``: one unit at a
    time (frame by frame when ``multiple`` is 1), or up to 6 chunks cut at random points
    (any length from one unit to the whole sequence). Every distinct length is one more
    compilation, hence the cap."""
    units = total // multiple
    if draw(st.booleans()):
        return [multiple] * units
    cuts = draw(st.sets(st.integers(1, max(1, units - 1)), max_size=min(5, units - 1)))
    bounds = [0, *sorted(cuts), units]
    return [(b - a) * multiple for a, b in itertools.pairwise(bounds)]


@st.composite
def stream_cases(draw, *, multiple_of_stride=False):
    """A causal depthwise conv over a random sequence, 1-D or 2-D, and a chunking of it."""
    ndim = draw(st.sampled_from([1, 2]))
    window = [draw(st.integers(1, 33))]
    dilation = [draw(st.integers(1, 4))]
    strides = [draw(st.integers(1, 3))]
    rest = []
    if ndim == 2:  # time x frequency
        window.append(draw(st.integers(1, 3)))
        dilation.append(draw(st.integers(1, 2)))
        strides.append(draw(st.integers(1, 2)))
        rest.append(draw(st.integers(1, 6)))
    s = strides[0]
    if multiple_of_stride:
        length = s * draw(st.integers(1, 40 // s))
    else:
        length = draw(st.integers(1, 40))
    return {
        "window": tuple(window),
        "dilation": tuple(dilation),
        "strides": tuple(strides),
        "rest": tuple(rest),
        "length": length,
        "channels": draw(st.integers(1, 3)),
        "multiplier": draw(st.integers(1, 3)),
        "batch": draw(st.integers(1, 2)),
        "chunks": draw(chunkings(length, s if multiple_of_stride else 1)),
        "seed": draw(st.integers(0, 2**16)),
    }


def _arrays(case, features=None):
    """x ``(batch, time, *rest, C)``, the depthwise kernel, and a pointwise kernel."""
    c, m = case["channels"], case["multiplier"]
    x = _rand(case["seed"], (case["batch"], case["length"], *case["rest"], c))
    dw = _rand(case["seed"] + 1, (*case["window"], 1, c * m)) / np.sqrt(np.prod(case["window"]))
    pw = _rand(case["seed"] + 2, (c * m, features or 4)) / np.sqrt(c * m)
    return x, dw, pw


# ----------------------------------------------------------------------------- functions


@_HYP
@given(case=stream_cases(), data_format=st.sampled_from(["channels_last", "channels_first"]))
def test_depthwise_step_stream_equals_offline(case, data_format):
    x, dw, _ = _arrays(case)
    bias = _rand(case["seed"] + 3, (dw.shape[-1],))
    options = {"strides": case["strides"], "dilation": case["dilation"], "impl": IMPL}
    offline = depthwise_conv(x, dw, padding="CAUSAL", bias=bias, precision=HIGHEST, **options)
    if data_format == "channels_first":
        x = np.moveaxis(x, -1, 1)
    time_axis = 1 if data_format == "channels_last" else 2
    state = streaming.init_state(x, dw, dilation=case["dilation"], data_format=data_format)
    assert state.phase == 0 and not np.any(state.buffer)
    ys = []
    for chunk in _chunks(x, case["chunks"], time_axis):
        y, state = _depthwise_step(
            state, chunk, dw, bias=bias, data_format=data_format, precision=HIGHEST, **options
        )
        ys.append(y)
    streamed = np.concatenate(ys, axis=time_axis)
    if data_format == "channels_first":
        streamed = np.moveaxis(streamed, 1, -1)
    _close(streamed, offline)
    assert state.phase == case["length"] % case["strides"][0]
    # The buffer holds the sequence's last (k - 1) * d frames, zero-padded at the front.
    history = (case["window"][0] - 1) * case["dilation"][0]
    zeros = list(x.shape)
    zeros[time_axis] = history
    padded = np.concatenate([np.zeros(zeros, x.dtype), x], axis=time_axis)
    end = padded.shape[time_axis]
    np.testing.assert_array_equal(state.buffer, padded.take(range(end - history, end), time_axis))


@_HYP
@given(case=stream_cases(), use_biases=st.booleans())
def test_separable_step_stream_equals_offline(case, use_biases):
    x, dw, pw = _arrays(case, features=5)
    biases = {}
    if use_biases:
        biases = {
            "depthwise_bias": _rand(case["seed"] + 3, (dw.shape[-1],)),
            "bias": _rand(case["seed"] + 4, (5,)),
        }
    options = {"strides": case["strides"], "dilation": case["dilation"], "impl": IMPL}
    offline = separable_conv(x, dw, pw, padding="CAUSAL", precision=HIGHEST, **options, **biases)
    state = streaming.init_state(x, dw, dilation=case["dilation"])
    ys = []
    for chunk in _chunks(x, case["chunks"], 1):
        y, state = _separable_step(state, chunk, dw, pw, precision=HIGHEST, **options, **biases)
        ys.append(y)
    _close(np.concatenate(ys, axis=1), offline)


def test_stream_equals_float64_reference():
    """A strided, dilated 2-D stream against the float64 definition, independently of lax."""
    x = _rand(0, (2, 23, 5, 3))
    dw = _rand(1, (7, 3, 1, 6))
    options = {"strides": (3, 2), "dilation": (2, 1)}
    expected = ref.depthwise_conv_nd(x, dw, padding="CAUSAL", **options)
    state = streaming.init_state(x, dw, dilation=options["dilation"])
    ys = []
    for chunk in _chunks(x, [1, 4, 2, 9, 1, 6], 1):
        y, state = streaming.depthwise_conv_step(state, chunk, dw, precision=HIGHEST, **options)
        ys.append(y)
    np.testing.assert_allclose(np.concatenate(ys, axis=1), expected, rtol=2e-5, atol=2e-5)


def test_chunks_that_complete_no_output():
    """With stride 3, frames 0, 3, 6, ... complete outputs; a chunk without one yields
    a zero-length time axis, and the phase carries over."""
    dw = _rand(0, (4, 1, 2))
    x = _rand(1, (1, 7, 2))
    state = streaming.init_state(x, dw)
    lengths, phases, counts = [1, 2, 1, 1, 2], [], []
    for chunk in _chunks(x, lengths, 1):
        y, state = streaming.depthwise_conv_step(state, chunk, dw, strides=3)
        counts.append(y.shape[1])
        phases.append(state.phase)
        assert y.shape[::2] == (1, 2) and y.dtype == jnp.float32
    # frames: [0] [1 2] [3] [4] [5 6] -> outputs at frames 0, 3 and 6.
    assert counts == [1, 0, 1, 0, 1]
    assert phases == [1, 0, 1, 2, 1]


def test_kernel_of_one_frame_keeps_no_history():
    dw, pw = _rand(0, (1, 1, 3)), _rand(1, (3, 2))
    x = _rand(2, (2, 5, 3))
    state = streaming.init_state(x, dw)
    assert state.buffer.shape == (2, 0, 3)
    y, state = streaming.separable_conv_step(state, x, dw, pw, strides=2)
    _close(np.asarray(y), np.asarray(separable_conv(x, dw, pw, strides=2, padding="CAUSAL")))
    assert state.buffer.shape == (2, 0, 3) and state.phase == 1


def test_init_state_from_a_window_or_a_kernel():
    chunk = jax.ShapeDtypeStruct((4, 2, 1, 10, 3), jnp.bfloat16)  # two batch dims
    from_window = streaming.init_state(chunk, (5, 3), dilation=(3, 1))
    from_kernel = streaming.init_state(chunk, jnp.ones((5, 3, 1, 6)), dilation=(3, 1))
    for state in (from_window, from_kernel):
        assert state.buffer.shape == (4, 2, 12, 10, 3)
        assert state.buffer.dtype == jnp.bfloat16 and state.phase == 0
    first = streaming.init_state(
        jnp.ones((2, 3, 1, 7), jnp.int32), (4,), data_format="channels_first"
    )
    # Channels-first 1-D: batch dims (2, 3), one channel, 7 frames.
    assert first.buffer.shape == (2, 3, 1, 3) and first.buffer.dtype == jnp.float32
    assert streaming.init_state(chunk, (2, 2), dtype=jnp.float32).buffer.dtype == jnp.float32


def test_state_is_a_pytree_with_a_static_phase():
    state = streaming.StreamState(jnp.zeros((1, 4, 2)), 2)
    leaves, treedef = jax.tree.flatten(state)
    assert len(leaves) == 1 and leaves[0].shape == (1, 4, 2)
    assert jax.tree.unflatten(treedef, leaves).phase == 2
    other = streaming.StreamState(jnp.zeros((1, 4, 2)), 1)
    assert jax.tree.structure(other) != treedef  # the phase is part of the structure


def test_jit_traces_once_per_phase():
    """Chunks of 2 frames with stride 3 cycle through the phases 0, 2, 1: three traces,
    however long the stream; a chunk length that is a multiple of the stride, one."""
    dw = _rand(0, (5, 1, 2))
    x = _rand(1, (1, 24, 2))
    for length, traces in ((2, 3), (3, 1)):
        chex.clear_trace_counter()

        @jax.jit
        @chex.assert_max_traces(n=traces)
        def step(state, chunk):
            return streaming.depthwise_conv_step(state, chunk, dw, strides=3)

        state = streaming.init_state(x, dw)
        ys = []
        for chunk in _chunks(x, [length] * (24 // length), 1):
            y, state = step(state, chunk)
            ys.append(y)
        _close(
            np.concatenate(ys, axis=1),
            np.asarray(depthwise_conv(x, dw, strides=3, padding="CAUSAL")),
        )


def test_whole_stream_in_one_scan():
    """A fixed chunk length (a multiple of the stride) streams inside one ``lax.scan``."""
    dw, pw = _rand(0, (9, 1, 6)), _rand(1, (6, 4))
    x = _rand(2, (2, 60, 3))
    options = {"strides": 2, "dilation": 3}
    chunks = x.reshape(2, 10, 6, 3).transpose(1, 0, 2, 3)  # (chunk, batch, 6 frames, C)

    @jax.jit
    def stream(xs):
        def body(state, chunk):
            y, state = streaming.separable_conv_step(
                state, chunk, dw, pw, precision=HIGHEST, **options
            )
            return state, y

        state, ys = lax.scan(body, streaming.init_state(x, dw, dilation=3), xs)
        return ys, state

    ys, state = stream(chunks)
    streamed = np.asarray(ys).transpose(1, 0, 2, 3).reshape(2, 30, 4)
    offline = separable_conv(x, dw, pw, padding="CAUSAL", precision=HIGHEST, **options)
    _close(streamed, np.asarray(offline))
    assert state.phase == 0


def test_gradients_through_a_stream_equal_offline():
    dw = _rand(0, (4, 1, 3))
    x = _rand(1, (1, 12, 3))

    def streamed_loss(kernel):
        state, total = streaming.init_state(x, kernel, dilation=2), 0.0
        for chunk in _chunks(x, [5, 2, 5], 1):
            y, state = streaming.depthwise_conv_step(state, chunk, kernel, dilation=2)
            total = total + jnp.sum(jnp.sin(y))
        return total

    def offline_loss(kernel):
        return jnp.sum(jnp.sin(depthwise_conv(x, kernel, dilation=2, padding="CAUSAL")))

    np.testing.assert_allclose(
        jax.grad(streamed_loss)(dw), jax.grad(offline_loss)(dw), rtol=1e-5, atol=1e-5
    )


# ----------------------------------------------------------------------------- modules


def _linen_layer(case, separable):
    options = {
        "kernel_size": case["window"],
        "strides": case["strides"],
        "kernel_dilation": case["dilation"],
        "depth_multiplier": case["multiplier"],
        "padding": "CAUSAL",
        "precision": HIGHEST,
        "impl": IMPL,
    }
    if separable:
        return sl.SeparableConv(features=4, use_depthwise_bias=True, **options)
    return sl.DepthwiseConv(**options)


def _nnx_layer(case, separable):
    options = {
        "strides": case["strides"],
        "kernel_dilation": case["dilation"],
        "depth_multiplier": case["multiplier"],
        "padding": "CAUSAL",
        "precision": HIGHEST,
        "impl": IMPL,
        "rngs": nnx.Rngs(case["seed"]),
    }
    c = case["channels"]
    if separable:
        return sn.SeparableConv(c, 4, case["window"], use_depthwise_bias=True, **options)
    return sn.DepthwiseConv(c, case["window"], **options)


def _random_params(params, seed):
    """Random values with the structure (shapes and dtypes) of ``params``."""
    gen = np.random.default_rng(seed)
    return jax.tree.map(lambda a: gen.standard_normal(a.shape).astype(a.dtype), params)


@_HYP
@given(case=stream_cases(multiple_of_stride=True), separable=st.booleans())
def test_linen_decode_stream_equals_offline(case, separable):
    x, _, _ = _arrays(case)
    layer = _linen_layer(case, separable)
    # Shapes only (no initializer runs): random parameters and the zero cache.
    shapes = jax.eval_shape(
        functools.partial(layer.init, decode=True), KEY, x[:, : case["chunks"][0]]
    )
    params = _random_params(shapes["params"], case["seed"])
    cache = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), {"cache": shapes["cache"]})
    offline = layer.apply({"params": params}, x)
    step = jax.jit(functools.partial(layer.apply, decode=True, mutable=["cache"]))
    ys = []
    for chunk in _chunks(x, case["chunks"], 1):
        y, cache = step({"params": params, **cache}, chunk)
        ys.append(y)
    _close(np.concatenate(ys, axis=1), np.asarray(offline))


@_HYP
@given(case=stream_cases(multiple_of_stride=True), separable=st.booleans())
def test_nnx_decode_stream_equals_offline(case, separable):
    x, _, _ = _arrays(case)
    abstract = nnx.eval_shape(lambda: _nnx_layer(case, separable))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    layer = nnx.merge(graphdef, _random_params(params, case["seed"]), rest)
    offline = layer(x)
    layer.init_cache(x.shape)
    step = nnx.jit(lambda m, chunk: m(chunk, decode=True))
    ys = [step(layer, chunk) for chunk in _chunks(x, case["chunks"], 1)]
    _close(np.concatenate(ys, axis=1), np.asarray(offline))


def test_linen_cache_starts_at_zeros_and_init_leaves_it_there():
    layer = sl.SeparableConv(features=3, kernel_size=(4,), kernel_dilation=2, padding="CAUSAL")
    x = _rand(0, (2, 5, 3))
    variables = layer.init(KEY, x, decode=True)
    assert variables["cache"]["buffer"].shape == (2, 6, 3)
    assert not np.any(variables["cache"]["buffer"])
    # The first apply without a cache creates it; both starts give the same stream.
    params = {"params": variables["params"]}
    y_new, cache_new = layer.apply(params, x, decode=True, mutable=["cache"])
    y_init, cache_init = layer.apply(variables, x, decode=True, mutable=["cache"])
    np.testing.assert_array_equal(y_new, y_init)
    # The last 6 frames of the zero-padded input: one zero frame, then the 5 of x.
    expected = np.concatenate([np.zeros((2, 1, 3), np.float32), x], axis=1)
    np.testing.assert_array_equal(cache_new["cache"]["buffer"], expected)
    chex.assert_trees_all_equal(cache_new, cache_init)


def test_linen_and_nnx_stream_the_same_function_channels_first():
    x = _rand(0, (2, 3, 12))  # (batch, C, time)
    linen_layer = sl.DepthwiseConv(
        kernel_size=(5,), strides=2, padding="CAUSAL", data_format="channels_first"
    )
    variables = linen_layer.init(KEY, x)
    nnx_layer = sn.DepthwiseConv(
        3, (5,), strides=2, padding="CAUSAL", data_format="channels_first", rngs=nnx.Rngs(0)
    )
    nnx_layer.kernel[...] = variables["params"]["kernel"]
    nnx_layer.bias[...] = _rand(1, (3,))
    variables = {"params": {**variables["params"], "bias": nnx_layer.bias[...]}}
    nnx_layer.init_cache((2, 3, 4))
    ys_linen, ys_nnx = [], []
    for chunk in _chunks(x, [4, 2, 6], 2):
        y, cache = linen_layer.apply(variables, chunk, decode=True, mutable=["cache"])
        variables = {**variables, **cache}
        ys_linen.append(y)
        ys_nnx.append(nnx_layer(chunk, decode=True))
    offline = np.asarray(linen_layer.apply({"params": variables["params"]}, x))
    _close(np.concatenate(ys_linen, axis=2), offline)
    _close(np.concatenate(ys_nnx, axis=2), offline)


def test_module_streams_in_one_scan():
    x = _rand(0, (1, 48, 5, 2))  # (batch, time, freq, C)
    window, strides = (7, 3), (2, 1)
    linen_layer = sl.SeparableConv(
        features=4, kernel_size=window, strides=strides, padding="CAUSAL", precision=HIGHEST
    )
    params = _random_params(linen_layer.init(KEY, x)["params"], 1)
    chunks = x.reshape(1, 12, 4, 5, 2).transpose(1, 0, 2, 3, 4)

    def linen_body(cache, chunk):
        y, cache = linen_layer.apply(
            {"params": params, **cache}, chunk, decode=True, mutable=["cache"]
        )
        return cache, y

    cache = {"cache": {"buffer": jnp.zeros((1, 6, 5, 2))}}
    _, ys = jax.jit(lambda c, xs: lax.scan(linen_body, c, xs))(cache, chunks)
    offline = np.asarray(linen_layer.apply({"params": params}, x))
    _close(np.asarray(ys).transpose(1, 0, 2, 3, 4).reshape(offline.shape), offline)

    nnx_layer = sn.SeparableConv(
        2, 4, window, strides=strides, padding="CAUSAL", precision=HIGHEST, rngs=nnx.Rngs(0)
    )
    for name in ("depthwise_kernel", "pointwise_kernel", "bias"):
        getattr(nnx_layer, name)[...] = params[name]
    nnx_layer.init_cache((1, 4, 5, 2))
    graphdef, state = nnx.split(nnx_layer)

    def nnx_body(state, chunk):
        module = nnx.merge(graphdef, state)
        y = module(chunk, decode=True)
        return nnx.state(module), y

    _, ys = jax.jit(lambda s, xs: lax.scan(nnx_body, s, xs))(state, chunks)
    _close(np.asarray(ys).transpose(1, 0, 2, 3, 4).reshape(offline.shape), offline)


# ----------------------------------------------------------------------------- errors


def test_step_errors_name_the_argument():
    dw = jnp.ones((3, 1, 4))
    x = jnp.ones((2, 5, 4))
    state = streaming.init_state(x, dw)
    step = streaming.depthwise_conv_step
    with pytest.raises(TypeError, match="`state` must be a StreamState"):
        step(jnp.zeros((2, 2, 4)), x, dw)
    with pytest.raises(ValueError, match=r"`x_chunk` has shape \(5, 4\) \(rank 2\)"):
        step(state, jnp.ones((5, 4)), jnp.ones((3, 3, 1, 4)))
    with pytest.raises(ValueError, match="`kernel` has 4 output channels but `x_chunk` has 3"):
        step(state, jnp.ones((2, 5, 3)), dw)
    with pytest.raises(ValueError, match=r"`state` was made for chunks of shape \(2, n, 4\)"):
        step(state, jnp.ones((3, 5, 4)), dw)
    with pytest.raises(ValueError, match=r"`state` holds 2 frames .* needs \(k - 1\) \* d = 4"):
        step(state, x, dw, dilation=2)
    with pytest.raises(TypeError, match="`x_chunk` computes in bfloat16 but `state` holds float32"):
        step(state, x.astype(jnp.bfloat16), dw)
    with pytest.raises(ValueError, match=r"`state.phase` is 2 but the stride along time is 2"):
        step(streaming.StreamState(state.buffer, 2), x, dw, strides=2)
    with pytest.raises(ValueError, match=r"`x_chunk` has shape \(2, 0, 4\) with an empty spatial"):
        step(state, jnp.ones((2, 0, 4)), dw)
    with pytest.raises(ValueError, match=r"`bias` has shape \(3,\)"):
        step(state, x, dw, bias=jnp.ones(3))
    with pytest.raises(ValueError, match=r"`pointwise_kernel` has shape \(3, 2\)"):
        streaming.separable_conv_step(state, x, dw, jnp.ones((3, 2)))
    other = streaming.init_state(jnp.ones((2, 5, 6, 4)), (3, 3))
    with pytest.raises(ValueError, match=r"`state` was made for chunks of shape \(2, n, 6, 4\)"):
        step(other, jnp.ones((2, 5, 7, 4)), jnp.ones((3, 3, 1, 4)))


def test_init_state_errors():
    x = jax.ShapeDtypeStruct((2, 5, 4), jnp.float32)
    with pytest.raises(ValueError, match="`kernel` as a window has 4 entries"):
        streaming.init_state(x, (3, 3, 3, 3))
    with pytest.raises(ValueError, match=r"`kernel` has 8 output channels but `x` has 3"):
        streaming.init_state(jnp.ones((2, 5, 3)), jnp.ones((3, 1, 8)))
    with pytest.raises(ValueError, match=r"`x` has shape \(5,\) \(rank 1\)"):
        streaming.init_state(jnp.ones(5), (3,))
    with pytest.raises(TypeError, match="`preferred_element_type` must be a floating"):
        streaming.init_state(x, (3,), dtype=jnp.int32)
    with pytest.raises(ValueError, match="`dilation` must be >= 1"):
        streaming.init_state(x, (3,), dilation=0)


def test_decode_errors_are_clear():
    x = jnp.ones((1, 4, 2))
    same = sl.DepthwiseConv(kernel_size=(3,))
    variables = same.init(KEY, x)
    with pytest.raises(ValueError, match=r"decode=True` streams a causal layer, but this Depth"):
        same.apply(variables, x, decode=True, mutable=["cache"])
    reflect = sl.SeparableConv(4, (3,), padding="CAUSAL", padding_mode="reflect")
    with pytest.raises(ValueError, match="needs padding_mode='zeros'"):
        reflect.init(KEY, x, decode=True)

    causal = sl.SeparableConv(features=4, kernel_size=(3,), strides=2, padding="CAUSAL")
    variables = causal.init(KEY, x, decode=True)
    with pytest.raises(ValueError, match=r"cannot change: call `apply\(variables, x, decode=True"):
        causal.apply(variables, x, decode=True)
    with pytest.raises(
        ValueError,
        match=r"has 3 frames along time but this SeparableConv has stride 2.*separable_conv_step",
    ):
        causal.apply(variables, jnp.ones((1, 3, 2)), decode=True, mutable=["cache"])
    with pytest.raises(ValueError, match=r"`x` has shape \(2, 4, 2\) but `cache` was made for"):
        causal.apply(variables, jnp.ones((2, 4, 2)), decode=True, mutable=["cache"])
    with pytest.raises(TypeError, match="`decode` must be a bool"):
        causal.apply(variables, x, decode="yes")

    layer = sn.DepthwiseConv(2, (3,), padding="CAUSAL", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"call `init_cache\(input_shape\)`"):
        layer(x, decode=True)
    with pytest.raises(ValueError, match="built with in_features=2"):
        layer.init_cache((1, 4, 3))
    with pytest.raises(TypeError, match="`input_shape` must be a sequence of ints"):
        layer.init_cache(x)
    layer.init_cache((1, 1, 2))
    with pytest.raises(ValueError, match=r"but `cache` was made for chunks of shape \(1, n, 2\)"):
        layer(jnp.ones((3, 4, 2)), decode=True)
    half = sn.DepthwiseConv(2, (3,), padding="CAUSAL", dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    half.init_cache((1, 1, 2))  # float32 by default
    with pytest.raises(TypeError, match="computes in bfloat16 but `cache` holds float32"):
        half(x, decode=True)
    same = sn.SeparableConv(2, 3, (3,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"but this SeparableConv has padding='SAME'"):
        same.init_cache((1, 4, 2))
