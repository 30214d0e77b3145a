"""Channel-sharded layers: annotations, and a model-parallel inverted-residual block.

A depthwise layer sharded over channels needs no communication: each device filters
its own channels. The MobileNetV2 block over a ``data`` x ``model`` mesh of 8
simulated CPU devices shards the expansion's output channels, the depthwise channels
and the projection's input channels over ``model``; it must compute the unsharded
block's outputs and gradients, and its compiled HLO must hold exactly one collective
in the forward pass (the projection's reduction over ``model``) and none inside the
depthwise step but the data-parallel gradient reduction.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sepconv_jax import linen as sl
from sepconv_jax import nnx as sn
from sepconv_jax.models.blocks import InvertedResidual

# ----------------------------------------------------------------------------- annotations


def test_linen_annotations_are_opt_in():
    x = jnp.ones((2, 6, 6, 8))
    plain = sl.SeparableConv(16, (3, 3), use_depthwise_bias=True).init(jax.random.key(0), x)
    assert not any(isinstance(v, nn.Partitioned) for v in jax.tree.leaves(
        plain, is_leaf=lambda v: isinstance(v, nn.Partitioned)))  # fmt: skip

    layers = {
        "depthwise": sl.DepthwiseConv((3, 3), depth_multiplier=2, channel_axis="model"),
        "pointwise_in": sl.PointwiseConv(16, in_axis="model"),
        "pointwise_out": sl.PointwiseConv(16, out_axis="model"),
        "separable": sl.SeparableConv(
            16, (3, 3), use_depthwise_bias=True, channel_axis="model", out_axis="data"
        ),
    }
    expected = {
        "depthwise": {"kernel": (None, None, None, "model"), "bias": ("model",)},
        "pointwise_in": {"kernel": ("model", None), "bias": None},
        "pointwise_out": {"kernel": (None, "model"), "bias": ("model",)},
        "separable": {
            "depthwise_kernel": (None, None, None, "model"),
            "depthwise_bias": ("model",),
            "pointwise_kernel": ("model", "data"),
            "bias": ("data",),
        },
    }
    for name, layer in layers.items():
        variables = layer.init(jax.random.key(0), x)
        specs = nn.get_partition_spec(variables)["params"]
        for param, names in expected[name].items():
            box = variables["params"][param]
            if names is None:  # not sharded: no annotation at all
                assert not isinstance(box, nn.Partitioned), (name, param)
            else:
                assert box.names == names, (name, param)
                assert specs[param] == jax.sharding.PartitionSpec(*names)
        # Annotated and plain layers compute the same function.
        unboxed = nn.unbox(variables)
        plain_layer = layer.clone(
            **{k: None for k in ("channel_axis", "in_axis", "out_axis") if hasattr(layer, k)}
        )
        np.testing.assert_array_equal(layer.apply(variables, x), plain_layer.apply(unboxed, x))


def test_nnx_annotations_become_sharding_metadata():
    # Auto axes: the layers' reshapes are partitioned by XLA (see the README on
    # explicit-axes meshes).
    auto = jax.sharding.AxisType.Auto
    mesh = jax.make_mesh((1, 1), ("data", "model"), (auto, auto))
    with jax.set_mesh(mesh):
        layer = sn.SeparableConv(
            8, 16, (3, 3), use_depthwise_bias=True, channel_axis="model", out_axis="data",
            rngs=nnx.Rngs(0),
        )  # fmt: skip
        depthwise = sn.DepthwiseConv(8, (3, 3), channel_axis="model", rngs=nnx.Rngs(0))
        pointwise = sn.PointwiseConv(8, 16, in_axis="model", rngs=nnx.Rngs(0))
        specs = nnx.get_partition_spec(nnx.state(layer, nnx.Param))
        y = layer(jnp.ones((2, 6, 6, 8)))
    P = jax.sharding.PartitionSpec
    assert specs["depthwise_kernel"].get_value() == P(None, None, None, "model")
    assert specs["depthwise_bias"].get_value() == P("model")
    assert specs["pointwise_kernel"].get_value() == P("model", "data")
    assert specs["bias"].get_value() == P("data")
    assert depthwise.kernel.get_metadata()["out_sharding"] == (None, None, None, "model")
    assert pointwise.kernel.get_metadata()["out_sharding"] == ("model", None)
    assert y.shape == (2, 6, 6, 16)
    # Without annotations no mesh is needed and no metadata is attached.
    plain = sn.PointwiseConv(8, 16, rngs=nnx.Rngs(0))
    assert plain.kernel.get_metadata().get("out_sharding") is None


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: sl.DepthwiseConv((3, 3), channel_axis=1), "channel_axis"),
        (lambda: sl.PointwiseConv(4, in_axis=""), "in_axis"),
        (lambda: sl.SeparableConv(4, (3,), out_axis=("model",)), "out_axis"),
        (lambda: sn.PointwiseConv(4, 4, out_axis=3, rngs=nnx.Rngs(0)), "out_axis"),
        (lambda: sn.DepthwiseConv(4, (3,), channel_axis=0, rngs=nnx.Rngs(0)), "channel_axis"),
    ],
)
def test_bad_axis_names_are_rejected(make, name):
    with pytest.raises(TypeError, match=f"`{name}` must be None or the name of a mesh axis"):
        make()


def test_inverted_residual_annotations():
    block = InvertedResidual(features=8, expand_ratio=4, model_axis="model")
    variables = block.init(jax.random.key(0), jnp.ones((1, 6, 6, 8)))
    specs = nn.get_partition_spec(variables)["params"]
    P = jax.sharding.PartitionSpec
    assert specs["expand"]["kernel"] == P(None, "model")
    assert specs["depthwise"]["kernel"] == P(None, None, None, "model")
    assert specs["project"]["kernel"] == P("model", None)
    assert specs["expand_bn"]["scale"] == P()
    default = InvertedResidual(features=8, expand_ratio=4).init(
        jax.random.key(0), jnp.ones((1, 6, 6, 8))
    )
    # Same initial values: the annotations only add metadata.
    for a, b in zip(jax.tree.leaves(nn.unbox(variables)), jax.tree.leaves(default), strict=True):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- HLO reading

_COLLECTIVE = re.compile(
    r"\b(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(?:-start)?\("
)


def replica_groups(text: str) -> frozenset[frozenset[int]]:
    """The device groups of an HLO ``replica_groups=`` attribute, in any of its forms.

    ``{{0,1},{2,3}}`` (explicit), ``[2,4]<=[8]`` or ``[4,2]<=[2,4]T(1,0)`` (iota:
    ``arange(N)`` reshaped, transposed, cut into groups), and
    ``mesh['a'=2,'b'=4] {'a'}`` (devices over a mesh, grouped along the named axes).
    """
    text = text.strip()
    if text.startswith("{"):
        return frozenset(
            frozenset(int(v) for v in group.split(",") if v)
            for group in re.findall(r"\{([\d,]*)\}", text[1:-1])
        )
    iota = re.match(r"\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", text)
    if iota:
        groups, size = int(iota.group(1)), int(iota.group(2))
        dims = [int(v) for v in iota.group(3).split(",")]
        ids = np.arange(int(np.prod(dims))).reshape(dims)
        if iota.group(4):
            ids = ids.transpose([int(v) for v in iota.group(4).split(",")])
        return frozenset(frozenset(row.tolist()) for row in ids.reshape(groups, size))
    mesh = re.match(r"mesh\[([^\]]*)\]\s*\{([^}]*)\}", text)
    assert mesh, f"unknown replica_groups form: {text[:80]}"
    axes = re.findall(r"'(\w+)'=(\d+)", mesh.group(1))
    names = [a for a, _ in axes]
    reduced = [names.index(a) for a in re.findall(r"'(\w+)'", mesh.group(2))]
    ids = np.arange(int(np.prod([int(s) for _, s in axes]))).reshape([int(s) for _, s in axes])
    kept = [i for i in range(len(axes)) if i not in reduced]
    ids = ids.transpose(kept + reduced).reshape(-1, int(np.prod([ids.shape[i] for i in reduced])))
    return frozenset(frozenset(row.tolist()) for row in ids)


def collectives(hlo: str) -> list[tuple[str, frozenset[frozenset[int]], str]]:
    """``(opcode, device groups, op_name)`` of every collective in compiled HLO text."""
    found = []
    for line in hlo.splitlines():
        match = _COLLECTIVE.search(line)
        if not match:
            continue
        groups = re.search(
            r"replica_groups=(\{(?:\{[\d,]*\},?)*\}|\[[^\s]*|mesh\[[^\]]*\]\s*\{[^}]*\})", line
        )
        op_name = re.search(r'op_name="([^"]*)"', line)
        found.append(
            (
                match.group(1),
                replica_groups(groups.group(1)) if groups else frozenset(),
                op_name.group(1) if op_name else "",
            )
        )
    return found


def test_replica_group_forms():
    model = frozenset({frozenset({0, 1, 2, 3}), frozenset({4, 5, 6, 7})})
    data = frozenset(frozenset({j, j + 4}) for j in range(4))
    assert replica_groups("[2,4]<=[8]") == model
    assert replica_groups("[4,2]<=[2,4]T(1,0)") == data
    assert replica_groups("{{0,4},{1,5},{2,6},{3,7}}") == data
    assert replica_groups("mesh['axis_0'=2,'axis_1'=1,'axis_3'=4] {'axis_0'}") == data
    assert replica_groups("mesh['axis_0'=2,'axis_3'=4] {'axis_3'}") == model


# ----------------------------------------------------------------------------- 8 devices

_MODEL_PARALLEL = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
import flax.linen as nn
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from sepconv_jax import ops
from sepconv_jax.models.blocks import InvertedResidual

out = {"devices": jax.device_count()}
mesh = jax.make_mesh((2, 4), ("data", "model"), (AxisType.Auto, AxisType.Auto))
out["mesh"] = np.asarray([[d.id for d in row] for row in mesh.devices]).tolist()
x = jax.random.normal(jax.random.key(1), (8, 10, 10, 16))
for impl in ("shift", "xla", "native", "pallas"):
    block = InvertedResidual(features=16, expand_ratio=4, model_axis="model", impl=impl)
    variables = block.init(jax.random.key(0), x)
    specs = nn.get_partition_spec(variables)
    plain = nn.unbox(variables)
    sharded = jax.tree.map(lambda v, s: jax.device_put(v, NamedSharding(mesh, s)), plain, specs)
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    forward = jax.jit(lambda v, x: block.apply(v, x))
    loss = lambda v, x: jnp.sum(block.apply(v, x) ** 2)
    grad = jax.jit(jax.grad(loss))
    ref_y, ref_g = forward(plain, x), grad(plain, x)  # one device, unsharded
    y, g = forward(sharded, xs), grad(sharded, xs)
    out[impl] = {
        "y": np.asarray(y).tolist(), "ref_y": np.asarray(ref_y).tolist(),
        "g": [np.asarray(a).tolist() for a in jax.tree.leaves(g)],
        "ref_g": [np.asarray(a).tolist() for a in jax.tree.leaves(ref_g)],
        "depthwise_spec": str(g["params"]["depthwise"]["kernel"].sharding.spec),
        "forward_hlo": forward.lower(sharded, xs).compile().as_text(),
        "grad_hlo": grad.lower(sharded, xs).compile().as_text(),
    }
    # The depthwise step alone, channels sharded over "model", batch over "data".
    k = jax.random.normal(jax.random.key(2), (3, 3, 1, 64))
    h = jax.random.normal(jax.random.key(3), (8, 10, 10, 64))
    dw = jax.jit(lambda h, k: ops.depthwise_conv(h, k, impl=impl))
    hs = jax.device_put(h, NamedSharding(mesh, P("data", None, None, "model")))
    ks = jax.device_put(k, NamedSharding(mesh, P(None, None, None, "model")))
    out[impl]["dw_hlo"] = dw.lower(hs, ks).compile().as_text()
    out[impl]["dw_diff"] = float(jnp.max(jnp.abs(dw(hs, ks) - dw(h, k))))
    out[impl]["dw_out_spec"] = str(dw(hs, ks).sharding.spec)
# The Pallas maps alone at a depth multiplier of 2 and stride 2, channels-first too:
# forward and both gradients, sharded over batch and channels.
for data_format in ("channels_last", "channels_first"):
    h = jax.random.normal(jax.random.key(4), (4, 16, 7, 7))
    k = jax.random.normal(jax.random.key(5), (3, 3, 1, 32))
    if data_format == "channels_last":
        h = jnp.moveaxis(h, 1, -1)
        h_spec = P("data", None, None, "model")
    else:
        h_spec = P("data", "model", None, None)
    run = lambda h, k: ops.depthwise_conv(
        h, k, strides=2, data_format=data_format, impl="pallas")
    fwd = jax.jit(run)
    grad = jax.jit(jax.grad(lambda h, k: jnp.sum(run(h, k) ** 2), argnums=(0, 1)))
    hs = jax.device_put(h, NamedSharding(mesh, h_spec))
    ks = jax.device_put(k, NamedSharding(mesh, P(None, None, None, "model")))
    out["pallas_" + data_format] = {
        "h": np.asarray(h).tolist(), "k": np.asarray(k).tolist(),
        "y": np.asarray(fwd(hs, ks)).tolist(), "ref_y": np.asarray(fwd(h, k)).tolist(),
        "g": [np.asarray(a).tolist() for a in grad(hs, ks)],
        "ref_g": [np.asarray(a).tolist() for a in grad(h, k)],
        "y_spec": str(fwd(hs, ks).sharding.spec),
        "dk_spec": str(grad(hs, ks)[1].sharding.spec),
        "forward_hlo": fwd.lower(hs, ks).compile().as_text(),
        "grad_hlo": grad.lower(hs, ks).compile().as_text(),
    }
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def model_parallel():
    """The 8-device computations of both impls, from a subprocess (the device count
    is fixed when JAX starts)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", _MODEL_PARALLEL],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_matches_unsharded(model_parallel, impl):
    assert model_parallel["devices"] == 8
    run = model_parallel[impl]
    # Same function, partitioned: only the summation order of the projection's
    # reduction (4 partial sums over "model") and of the gradient reductions differ.
    np.testing.assert_allclose(run["y"], run["ref_y"], rtol=1e-5, atol=1e-5)
    assert len(run["g"]) == len(run["ref_g"]) == 15  # 9 params, 6 batch statistics
    for g, ref in zip(run["g"], run["ref_g"], strict=True):
        ref = np.asarray(ref)
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert run["depthwise_spec"] == "P(None, None, None, 'model')"


def _axis_groups(model_parallel):
    ids = np.asarray(model_parallel["mesh"])  # rows: "data", columns: "model"
    data = frozenset(frozenset(col.tolist()) for col in ids.T)
    model = frozenset(frozenset(row.tolist()) for row in ids)
    return data, model


def _check_no_collective_in_depthwise(model_parallel, impl):
    run = model_parallel[impl]
    data, model = _axis_groups(model_parallel)

    # The depthwise operation alone, sharded over batch and channels: no collective.
    assert collectives(run["dw_hlo"]) == []
    assert run["dw_diff"] <= 1e-5
    assert run["dw_out_spec"] == "P('data', None, None, 'model')"

    # The block's forward pass: exactly one collective, the projection's all-reduce
    # of its partial sums over "model"; nothing in the expansion or depthwise step.
    forward = collectives(run["forward_hlo"])
    assert [(op, groups) for op, groups, _ in forward] == [("all-reduce", model)]
    assert "/project/" in forward[0][2]

    # Backward: inside the depthwise step only the data-parallel gradient reduction
    # (over "data") may appear; no collective over "model" touches it.
    backward = collectives(run["grad_hlo"])
    assert backward, "the data-parallel gradient needs a reduction"
    touched = 0
    for op, groups, op_name in backward:
        assert op == "all-reduce" and groups in (data, model), (op, op_name)
        if "depthwise" in re.split(r"[()/:]", op_name):  # not depthwise_bn
            assert groups == data, (op, op_name)
            touched += 1
    assert touched  # the depthwise kernel's gradient is summed over the batch shards


def test_model_parallel_block(model_parallel):
    # One test for every impl, so that the 8-device subprocess runs once per session
    # even when the tests are spread over pytest-xdist workers. The Pallas and native
    # maps (custom calls) are partitioned by their own rule (custom_partitioning), XLA
    # partitions the others.
    for impl in ("shift", "xla", "native", "pallas"):
        _check_matches_unsharded(model_parallel, impl)
        _check_no_collective_in_depthwise(model_parallel, impl)


def _depthwise_reference(h, k, channels_last):
    """Float64 NumPy loop from the definition: stride 2, SAME padding (a 3-wide
    window over 7 at stride 2 gives 4 outputs and needs 2 padded rows: 1 before, 1
    after), multiplier 2 (output channel ``c * 2 + m`` reads input channel ``c``)."""
    h = np.asarray(h, np.float64)
    if not channels_last:
        h = np.moveaxis(h, 1, -1)
    k = np.asarray(k, np.float64)
    n, size, _, c = h.shape
    mult = k.shape[-1] // c
    out = (size + 1) // 2
    pad = max((out - 1) * 2 + 3 - size, 0)
    hp = np.zeros((n, size + pad, size + pad, c))
    lo = pad // 2
    hp[:, lo : lo + size, lo : lo + size] = h
    y = np.zeros((n, out, out, c * mult))
    for i in range(out):
        for j in range(out):
            patch = hp[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :]  # (n, 3, 3, c)
            for m in range(mult):
                y[:, i, j, m::mult] = np.einsum("nabc,abc->nc", patch, k[:, :, 0, m::mult])
    return y if channels_last else np.moveaxis(y, -1, 1)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_pallas_depthwise_is_partitioned_not_gathered(model_parallel, data_format):
    """The Pallas maps sharded over batch and channels (multiplier 2, stride 2): the
    forward pass holds no collective, the gradients only the kernel gradient's sum
    over the batch shards; values equal the unsharded run and a float64 loop."""
    run = model_parallel["pallas_" + data_format]
    data, _ = _axis_groups(model_parallel)
    channel_spec = "'model'"
    assert collectives(run["forward_hlo"]) == []
    backward = collectives(run["grad_hlo"])
    assert [(op, groups) for op, groups, _ in backward] == [("all-reduce", data)]
    assert not re.search(r"\ball-gather", run["forward_hlo"] + run["grad_hlo"])
    assert channel_spec in run["y_spec"] and run["y_spec"].startswith("P('data'")
    assert run["dk_spec"] == "P(None, None, None, 'model')"
    np.testing.assert_allclose(run["y"], run["ref_y"], rtol=1e-6, atol=1e-6)
    reference = _depthwise_reference(run["h"], run["k"], data_format == "channels_last")
    np.testing.assert_allclose(run["y"], reference, rtol=1e-5, atol=1e-5)
    for g, ref in zip(run["g"], run["ref_g"], strict=True):
        ref = np.asarray(ref)
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
