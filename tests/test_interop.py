"""Weight conversion against the real peers: Keras 3 (JAX backend) and PyTorch (CPU).

Each parity test builds the peer layer, gives it random weights (biases included),
converts them, and checks that our module's output equals the peer's on random
input. The Keras tests always run; the PyTorch tests are skipped when torch is not
installed. The largest error of each case is printed (``pytest -s``).
"""

from __future__ import annotations

import re

import jax
import keras  # a test dependency: the Keras parity tests always run
import numpy as np
import pytest

from sepconv_jax import grouped_conv
from sepconv_jax import linen as sl
from sepconv_jax.interop import keras as kconv
from sepconv_jax.interop import torch as tconv

# float32 outputs of two implementations summing <= ~60 O(1) terms in different orders.
TOL = 2e-5
HIGHEST = jax.lax.Precision.HIGHEST


def _rand(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _check(name, got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    err = float(np.max(np.abs(got - want)))
    print(f"PARITY {name}: max abs error {err:.2e}")
    assert err <= TOL, (name, err)


def _apply(module, params, x):
    return module.apply({"params": params}, x)


# ----------------------------------------------------------------------------- Keras


def _keras_weights(layer):
    return {v.path.split("/")[-1]: np.asarray(v.value) for v in layer.weights}


def _keras_randomize(layer, seed):
    for i, v in enumerate(layer.weights):
        v.assign(_rand(seed + i, v.shape))


KERAS_WINDOW = [
    # (rank, options): strides, paddings ("same" with stride 2 too), dilation, multiplier
    (1, dict(kernel_size=3, strides=1, padding="same", depth_multiplier=1)),
    (1, dict(kernel_size=3, strides=2, padding="same", depth_multiplier=2)),
    (1, dict(kernel_size=4, strides=1, padding="valid", dilation_rate=2, depth_multiplier=3)),
    (2, dict(kernel_size=3, strides=2, padding="same", depth_multiplier=1)),
    (2, dict(kernel_size=(3, 2), strides=(2, 1), padding="same", depth_multiplier=2)),
    (2, dict(kernel_size=3, strides=2, padding="valid", depth_multiplier=3)),
    (2, dict(kernel_size=3, strides=1, padding="same", dilation_rate=2, depth_multiplier=2)),
    (2, dict(kernel_size=2, strides=1, padding="same", data_format="channels_first")),
    (2, dict(kernel_size=3, strides=1, padding="valid", use_bias=False)),
]


def _keras_input(rank, options, c, seed=100):
    spatial = (9, 8)[:rank] if rank == 2 else (11,)
    if options.get("data_format") == "channels_first":
        return _rand(seed, (2, c, *spatial))
    return _rand(seed, (2, *spatial, c))


def _case_id(rank, options):
    return f"{rank}d-" + "-".join(f"{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("rank,options", KERAS_WINDOW, ids=[_case_id(*c) for c in KERAS_WINDOW])
def test_keras_depthwise_parity(rank, options):
    layer_cls = keras.layers.DepthwiseConv1D if rank == 1 else keras.layers.DepthwiseConv2D
    c = 3
    layer = layer_cls(**options)
    x = _keras_input(rank, options, c)
    layer(x)
    _keras_randomize(layer, 1)
    w = _keras_weights(layer)
    params = kconv.depthwise_from_keras(w["kernel"], w.get("bias"))
    ours = sl.DepthwiseConv(**kconv.conv_kwargs_from_keras(layer), precision=HIGHEST)
    _check(f"keras DepthwiseConv{rank}D {options}", _apply(ours, params, x), layer(x))

    # And back: our random params exported into a fresh Keras layer.
    params = {k: _rand(10 + i, v.shape) for i, (k, v) in enumerate(params.items())}
    m = options.get("depth_multiplier", 1)
    exported = kconv.depthwise_to_keras(params["kernel"], params.get("bias"), depth_multiplier=m)
    fresh = layer_cls(**options)
    fresh(x)
    for v in fresh.weights:
        v.assign(exported[v.path.split("/")[-1]])
    _check(f"export DepthwiseConv{rank}D {options}", fresh(x), _apply(ours, params, x))


@pytest.mark.parametrize("rank,options", KERAS_WINDOW, ids=[_case_id(*c) for c in KERAS_WINDOW])
def test_keras_separable_parity(rank, options):
    layer_cls = keras.layers.SeparableConv1D if rank == 1 else keras.layers.SeparableConv2D
    c, f = 3, 4
    layer = layer_cls(f, **options)
    x = _keras_input(rank, options, c)
    layer(x)
    _keras_randomize(layer, 1)
    w = _keras_weights(layer)
    params = kconv.separable_from_keras(w["depthwise_kernel"], w["pointwise_kernel"], w.get("bias"))
    kwargs = kconv.conv_kwargs_from_keras(layer)
    ours = sl.SeparableConv(**kwargs, precision=HIGHEST)
    _check(f"keras SeparableConv{rank}D {options}", _apply(ours, params, x), layer(x))

    params = {k: _rand(10 + i, v.shape) for i, (k, v) in enumerate(params.items())}
    m = options.get("depth_multiplier", 1)
    exported = kconv.separable_to_keras(params, depth_multiplier=m)
    fresh = layer_cls(f, **options)
    fresh(x)
    for v in fresh.weights:
        v.assign(exported[v.path.split("/")[-1]])
    _check(f"export SeparableConv{rank}D {options}", fresh(x), _apply(ours, params, x))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_keras_pointwise_conv_parity(rank):
    c, f = 5, 3
    layer_cls = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}[rank]
    layer = layer_cls(f, 1)
    x = _rand(0, (2, *(4,) * rank, c))
    layer(x)
    _keras_randomize(layer, 1)
    w = _keras_weights(layer)
    params = kconv.pointwise_from_keras(w["kernel"], w["bias"])
    kwargs = kconv.conv_kwargs_from_keras(layer)
    ours = sl.PointwiseConv(kwargs["features"], precision=HIGHEST)
    _check(f"keras Conv{rank}D 1x1", _apply(ours, params, x), layer(x))
    back = kconv.pointwise_to_keras(params["kernel"], params["bias"], num_spatial_dims=rank)
    np.testing.assert_array_equal(back["kernel"], w["kernel"])


@pytest.mark.parametrize(
    "options",
    [
        dict(kernel_size=3, strides=2, padding="same", groups=1),
        dict(kernel_size=3, strides=1, padding="valid", dilation_rate=2, groups=2),
        dict(kernel_size=(2, 3), strides=(1, 2), padding="same", groups=4),
    ],
)
def test_keras_conv_parity(options):
    c, f = 4, 8
    layer = keras.layers.Conv2D(f, **options)
    x = _rand(0, (2, 7, 7, c))
    layer(x)
    _keras_randomize(layer, 1)
    w = _keras_weights(layer)
    params = kconv.conv_from_keras(w["kernel"], w["bias"])
    kw = kconv.conv_kwargs_from_keras(layer)
    got = grouped_conv(
        x,
        params["kernel"],
        groups=options["groups"],
        strides=kw["strides"],
        padding=kw["padding"],
        dilation=kw["kernel_dilation"],
        bias=params["bias"],
        precision=HIGHEST,
    )
    _check(f"keras Conv2D {options}", got, layer(x))
    back = kconv.conv_to_keras(params["kernel"], params["bias"])
    np.testing.assert_array_equal(back["kernel"], w["kernel"])


def test_keras_causal_conv1d_with_groups_is_a_depthwise_conv():
    """Keras' DepthwiseConv1D has no causal padding; Conv1D(groups=C) does, same layout."""
    c, m = 3, 2
    layer = keras.layers.Conv1D(c * m, 3, padding="causal", dilation_rate=2, groups=c)
    x = _rand(0, (2, 10, c))
    layer(x)
    _keras_randomize(layer, 1)
    w = _keras_weights(layer)
    params = kconv.conv_from_keras(w["kernel"], w["bias"])  # (3, 1, C * M): depthwise layout
    kwargs = kconv.conv_kwargs_from_keras(layer)
    assert kwargs["padding"] == "CAUSAL"
    ours = sl.DepthwiseConv(
        kwargs["kernel_size"],
        padding=kwargs["padding"],
        kernel_dilation=kwargs["kernel_dilation"],
        depth_multiplier=m,
        precision=HIGHEST,
    )
    _check("keras Conv1D causal groups=C", _apply(ours, params, x), layer(x))


def test_keras_round_trips_are_exact():
    dk, pk, b = _rand(0, (3, 3, 4, 2)), _rand(1, (1, 1, 8, 5)), _rand(2, (5,))
    ours = kconv.separable_from_keras(dk, pk, b)
    back = kconv.separable_to_keras(ours, depth_multiplier=2)
    for name, value in {"depthwise_kernel": dk, "pointwise_kernel": pk, "bias": b}.items():
        np.testing.assert_array_equal(back[name], value)
        assert back[name].dtype == value.dtype
    k16 = _rand(3, (5, 6, 3)).astype(np.float16)
    np.testing.assert_array_equal(
        kconv.depthwise_to_keras(kconv.depthwise_from_keras(k16)["kernel"], depth_multiplier=3)[
            "kernel"
        ],
        k16,
    )


def test_keras_conversion_errors():
    with pytest.raises(ValueError, match=re.escape("`kernel` has shape (3, 3) (rank 2)")):
        kconv.depthwise_from_keras(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=re.escape("`bias` has shape (5,)")):
        kconv.depthwise_from_keras(np.zeros((3, 3, 4, 2)), np.zeros(5))
    with pytest.raises(ValueError, match="window of ones"):
        kconv.pointwise_from_keras(np.zeros((3, 3, 4, 2)))
    with pytest.raises(ValueError, match="reads 6 channels but the depthwise step gives 8"):
        kconv.separable_from_keras(np.zeros((3, 3, 4, 2)), np.zeros((1, 1, 6, 2)))
    with pytest.raises(ValueError, match="`depth_multiplier`=3"):
        kconv.depthwise_to_keras(np.zeros((3, 3, 1, 8)), depth_multiplier=3)
    with pytest.raises(ValueError, match="depthwise_bias"):
        kconv.separable_to_keras(
            {
                "depthwise_kernel": np.zeros((3, 3, 1, 8)),
                "pointwise_kernel": np.zeros((8, 2)),
                "depthwise_bias": np.zeros(8),
            }
        )
    with pytest.raises(TypeError, match="numeric dtype"):
        kconv.conv_from_keras(np.array([["a"]]))


# ----------------------------------------------------------------------------- PyTorch

TORCH_DEPTHWISE = [
    # (rank, options) for Conv{rank}d(C, C * M, groups=C): strides, int padding, modes
    (2, dict(kernel_size=3, stride=1, padding=1, multiplier=1)),
    (2, dict(kernel_size=3, stride=2, padding=1, multiplier=2)),
    (2, dict(kernel_size=(3, 2), stride=(2, 1), padding=(0, 1), multiplier=1)),
    (2, dict(kernel_size=3, stride=1, padding=2, dilation=2, multiplier=3)),
    (2, dict(kernel_size=3, stride=1, padding="same", dilation=(1, 2), multiplier=1)),
    pytest.param(
        2,
        dict(kernel_size=4, stride=1, padding="same", multiplier=1),
        # PyTorch's note that an even kernel with padding="same" copies the input: a
        # performance hint about PyTorch itself, not a problem with the case.
        marks=pytest.mark.filterwarnings(
            "ignore:Using padding='same' with even kernel:UserWarning"
        ),
        id="2d-kernel_size=4-padding=same-even",
    ),
    (2, dict(kernel_size=3, stride=2, padding=0, multiplier=2, bias=False)),
    (2, dict(kernel_size=3, stride=1, padding=1, padding_mode="reflect", multiplier=1)),
    (2, dict(kernel_size=3, stride=2, padding=2, padding_mode="replicate", multiplier=2)),
    (2, dict(kernel_size=3, stride=1, padding=1, padding_mode="circular", multiplier=1)),
    (1, dict(kernel_size=5, stride=2, padding=2, multiplier=2)),
    (3, dict(kernel_size=3, stride=(1, 2, 1), padding=1, multiplier=1)),
]


def _torch_conv(torch, rank, *args, **kwargs):
    return {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[rank](*args, **kwargs)


def _torch_randomize(torch, module, seed):
    gen = np.random.default_rng(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(gen.standard_normal(tuple(p.shape)).astype(np.float32)))


def _torch_run(torch, module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _numpy(tensor):
    return tensor.detach().cpu().numpy()


@pytest.mark.parametrize(
    "rank,options",
    [c if hasattr(c, "marks") else pytest.param(*c, id=_case_id(*c)) for c in TORCH_DEPTHWISE],
)
def test_torch_depthwise_parity(rank, options):
    torch = pytest.importorskip("torch")
    options = dict(options)
    m = options.pop("multiplier")
    c = 3
    conv = _torch_conv(torch, rank, c, c * m, groups=c, **options)
    _torch_randomize(torch, conv, 1)
    x = _rand(0, (2, c, *(7, 8, 6)[:rank]))  # PyTorch is channels-first
    bias = None if conv.bias is None else _numpy(conv.bias)
    params = tconv.depthwise_from_torch(_numpy(conv.weight), bias)
    kwargs = tconv.conv_kwargs_from_torch(conv)
    assert kwargs["depth_multiplier"] == m

    # channels-first, as PyTorch
    first = sl.DepthwiseConv(**kwargs, data_format="channels_first", precision=HIGHEST)
    want = _torch_run(torch, conv, x)
    _check(f"torch Conv{rank}d depthwise {options} M={m}", _apply(first, params, x), want)
    if kwargs["padding_mode"] != "zeros" or m > 1:
        # channels-last, with the input and output transposed
        last = sl.DepthwiseConv(**kwargs, precision=HIGHEST)
        got = np.moveaxis(np.asarray(_apply(last, params, np.moveaxis(x, 1, -1))), -1, 1)
        _check(f"torch Conv{rank}d depthwise channels-last {options} M={m}", got, want)

    # Export: our random params loaded into a fresh PyTorch conv.
    params = {k: _rand(10 + i, v.shape) for i, (k, v) in enumerate(params.items())}
    state = tconv.depthwise_to_torch(params["kernel"], params.get("bias"))
    fresh = _torch_conv(torch, rank, c, c * m, groups=c, **options)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    _check(
        f"export torch Conv{rank}d depthwise", _torch_run(torch, fresh, x), _apply(first, params, x)
    )


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_torch_pointwise_parity(rank):
    torch = pytest.importorskip("torch")
    c, f = 5, 3
    conv = _torch_conv(torch, rank, c, f, 1)
    _torch_randomize(torch, conv, 1)
    x = _rand(0, (2, c, *(4,) * rank))
    params = tconv.pointwise_from_torch(_numpy(conv.weight), _numpy(conv.bias))
    ours = sl.PointwiseConv(f, data_format="channels_first", precision=HIGHEST)
    _check(f"torch Conv{rank}d 1x1", _apply(ours, params, x), _torch_run(torch, conv, x))
    back = tconv.pointwise_to_torch(params["kernel"], params["bias"], num_spatial_dims=rank)
    np.testing.assert_array_equal(back["weight"], _numpy(conv.weight))


@pytest.mark.parametrize(
    "options",
    [
        dict(groups=1, kernel_size=3, stride=2, padding=1),
        dict(groups=2, kernel_size=3, stride=1, padding=(2, 1), dilation=2),
        dict(groups=4, kernel_size=(2, 3), stride=(1, 2), padding=0),
    ],
)
def test_torch_grouped_parity(options):
    torch = pytest.importorskip("torch")
    c, f = 4, 8
    conv = torch.nn.Conv2d(c, f, **options)
    _torch_randomize(torch, conv, 1)
    x = _rand(0, (2, c, 7, 7))
    params = tconv.grouped_from_torch(_numpy(conv.weight), _numpy(conv.bias))
    kw = tconv.conv_kwargs_from_torch(conv)
    got = grouped_conv(
        x,
        params["kernel"],
        groups=options["groups"],
        strides=kw["strides"],
        padding=kw["padding"],
        dilation=kw["kernel_dilation"],
        bias=params["bias"],
        data_format="channels_first",
        precision=HIGHEST,
    )
    _check(f"torch Conv2d {options}", got, _torch_run(torch, conv, x))
    back = tconv.grouped_to_torch(params["kernel"], params["bias"])
    np.testing.assert_array_equal(back["weight"], _numpy(conv.weight))


def test_torch_separable_parity_and_export():
    torch = pytest.importorskip("torch")
    c, m, f = 3, 2, 5
    dw = torch.nn.Conv2d(c, c * m, 3, stride=2, padding=1, groups=c)
    pw = torch.nn.Conv2d(c * m, f, 1)
    _torch_randomize(torch, dw, 1)
    _torch_randomize(torch, pw, 2)
    seq = torch.nn.Sequential(dw, pw)
    x = _rand(0, (2, c, 9, 8))
    params = tconv.separable_from_torch(
        _numpy(dw.weight), _numpy(pw.weight), _numpy(dw.bias), _numpy(pw.bias)
    )
    kwargs = tconv.conv_kwargs_from_torch(dw)
    del kwargs["use_bias"]
    ours = sl.SeparableConv(
        f,
        **kwargs,
        use_depthwise_bias=True,
        data_format="channels_first",
        precision=HIGHEST,
    )
    _check("torch Conv2d groups=C + Conv2d 1x1", _apply(ours, params, x), _torch_run(torch, seq, x))

    dw_state, pw_state = tconv.separable_to_torch(params)
    np.testing.assert_array_equal(dw_state["weight"], _numpy(dw.weight))
    np.testing.assert_array_equal(pw_state["weight"], _numpy(pw.weight))
    np.testing.assert_array_equal(pw_state["bias"], _numpy(pw.bias))


def test_torch_conversion_errors():
    with pytest.raises(ValueError, match=r"a depthwise Conv .* has in-dim 1"):
        tconv.depthwise_from_torch(np.zeros((8, 2, 3, 3)))
    with pytest.raises(ValueError, match="window of ones"):
        tconv.pointwise_from_torch(np.zeros((8, 4, 3, 3)))
    with pytest.raises(ValueError, match=re.escape("`bias` has shape (4,)")):
        tconv.grouped_from_torch(np.zeros((8, 4, 3, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="reads 4 channels but the depthwise conv gives 8"):
        tconv.separable_from_torch(np.zeros((8, 1, 3, 3)), np.zeros((2, 4, 1, 1)))
    with pytest.raises(ValueError, match="`num_spatial_dims`"):
        tconv.pointwise_to_torch(np.zeros((4, 2)), num_spatial_dims=4)
    with pytest.raises(TypeError, match="`weight` must be an array"):
        tconv.grouped_from_torch(None)


def test_conv_kwargs_readers_without_the_frameworks():
    """The option readers are duck-typed: plain objects and dicts work, bad paddings raise."""
    from types import SimpleNamespace

    conv = SimpleNamespace(
        kernel_size=(3, 3),
        stride=(2, 2),
        padding="valid",
        dilation=(1, 1),
        padding_mode="zeros",
        groups=4,
        in_channels=4,
        out_channels=8,
        bias=None,
    )
    assert tconv.conv_kwargs_from_torch(conv) == {
        "kernel_size": (3, 3),
        "strides": (2, 2),
        "padding": "VALID",
        "kernel_dilation": (1, 1),
        "padding_mode": "zeros",
        "use_bias": False,
        "depth_multiplier": 2,
    }
    with pytest.raises(ValueError, match="unknown PyTorch padding"):
        tconv.conv_kwargs_from_torch(SimpleNamespace(**{**vars(conv), "padding": "full"}))
    config = {
        "kernel_size": (3,),
        "strides": (1,),
        "padding": "causal",
        "dilation_rate": (2,),
        "filters": 6,
        "groups": 3,
        "use_bias": False,
        "data_format": "channels_last",
    }
    assert kconv.conv_kwargs_from_keras(config) == {
        "kernel_size": (3,),
        "strides": (1,),
        "padding": "CAUSAL",
        "kernel_dilation": (2,),
        "data_format": "channels_last",
        "use_bias": False,
        "features": 6,
        "groups": 3,
    }
    with pytest.raises(ValueError, match="unknown Keras padding"):
        kconv.conv_kwargs_from_keras({**config, "padding": "full"})
