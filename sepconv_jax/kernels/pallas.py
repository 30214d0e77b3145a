"""The ``"pallas"`` kernel: Pallas kernels for the depthwise maps on GPU and TPU.

The three maps of the depthwise operation (:mod:`sepconv_jax.kernels.op`) pick their
Pallas kernels by the platform they are lowered for:

* ``cuda`` and ``rocm``: the Triton kernels of
  :mod:`sepconv_jax.kernels.pallas_triton` (power-of-two tiles over positions and
  channels, masked loads for the edges and the zero padding, taps unrolled,
  accumulation in float32 for 16-bit inputs, a two-stage reduction for the kernel
  transpose).
* ``tpu``: the Mosaic kernels of :mod:`sepconv_jax.kernels.pallas_tpu` (blocks of
  ``(sublanes, 128)`` batch x channel tiles, the input padded and split into stride
  phases by XLA first).
* ``cpu`` and any other platform: the Triton kernels' bodies in Pallas interpret
  mode, which compiles them to ordinary XLA loops. That is how the CPU test suite
  checks the GPU kernels' indexing, masks and accumulation; it is slow, and
  ``"auto"`` never picks it on CPU. Inside ``shard_map`` interpret mode is lowered
  without JAX's checks of how values vary over the mesh (:func:`lowering_context`),
  which it does not support.

Layouts: the kernels are written for channels-last 2-D arrays. A 1-D problem runs
as a 2-D one with a height of one (the long axis on the Triton kernels' columns,
on TPU on its rows), and ``channels_first`` arrays are transposed to channels-last
around the kernels (one transpose in XLA each way).

Delegation to the ``"xla"`` kernel's maps (:mod:`sepconv_jax.kernels.xla`), which
compute the same function:

* 3-D convolutions (``num_spatial == 3``): there are no 3-D Pallas kernels;
* arrays of ``2**31`` elements or more, whose element indices would overflow the
  kernels' int32 arithmetic;
* complex and integer dtypes (the public functions promote integers to floats
  before this point, so in practice complex ones).

Numerics: products and sums are formed in the accumulation dtype, which is
``preferred_element_type`` when given, float32 for 16-bit floating inputs (which
are loaded as 16-bit values), and the inputs' dtype otherwise. ``precision`` is
accepted and has no effect: no matrix unit is involved.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

from sepconv_jax._spec import ConvSpec
from sepconv_jax.kernels import pallas_tpu, pallas_triton, xla
from sepconv_jax.kernels._jax_compat import quiet_triton_deprecation, vma_checks_off
from sepconv_jax.kernels._partition import ROLES, partitioned, role_shape
from sepconv_jax.kernels.pallas_triton import Geometry

__all__ = ["forward", "input_transpose", "kernel_transpose", "lowering_context"]

_GPU_PLATFORMS = ("cuda", "rocm")


def _accumulation_dtype(a, b, preferred_element_type, out_dtype) -> np.dtype:
    """``preferred_element_type``, else the widest of the operands and the result,
    with 16-bit floats widened to float32."""
    if preferred_element_type is not None:
        return np.dtype(preferred_element_type)
    dtype = np.dtype(jnp.result_type(a.dtype, b.dtype, out_dtype))
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return np.dtype(np.float32)
    return dtype


def _delegates(spec: ConvSpec, acc: np.dtype, *arrays) -> bool:
    """Whether this problem goes to the ``xla`` kernel (see the module docstring)."""
    return (
        spec.num_spatial == 3
        or not jnp.issubdtype(acc, jnp.floating)
        or not pallas_triton.supports(*arrays)
    )


def _geometry(spec: ConvSpec, *, long_axis: str = "w") -> Geometry:
    """The 2-D problem of ``spec``; a 1-D one with its length on ``long_axis``."""

    def two(values, fill: int = 1) -> tuple[int, int]:
        """A 2-D problem's pair: the values themselves, or a 1-D value on ``long_axis``."""
        if spec.num_spatial == 2:
            return (values[0], values[1])
        return (fill, values[0]) if long_axis == "w" else (values[0], fill)

    lo = two([lo for lo, _ in spec.padding], 0)
    return Geometry(
        batch=spec.batch_shape[0],
        in_hw=two(spec.in_spatial),
        out_hw=two(spec.out_spatial),
        channels=spec.in_channels,
        multiplier=spec.depth_multiplier,
        window=two(spec.window),
        strides=two(spec.strides),
        dilation=two(spec.dilation),
        pad_lo=lo,
    )


def _activation_in(a: jax.Array, spec: ConvSpec, hw: tuple[int, int]) -> jax.Array:
    if not spec.channels_last:
        a = jnp.moveaxis(a, 1, -1)
    return a.reshape(a.shape[0], *hw, a.shape[-1])


def _activation_out(a: jax.Array, spec: ConvSpec, spatial: tuple[int, ...]) -> jax.Array:
    a = a.reshape(a.shape[0], *spatial, a.shape[-1])
    if not spec.channels_last:
        a = jnp.moveaxis(a, -1, 1)
    return a


def _taps(kernel: jax.Array, spec: ConvSpec) -> jax.Array:
    """``(*window, 1, C*M)`` -> ``(taps, C*M)`` in row-major window order."""
    return kernel.reshape(-1, spec.out_channels)


def _interpret(platform: str | None) -> bool:
    return platform not in (*_GPU_PLATFORMS, "tpu")


def lowering_context(platform: str | None) -> contextlib.AbstractContextManager:
    """What lowering the maps for ``platform`` runs under: in interpret mode, no
    ``shard_map`` variance checks (see :func:`~sepconv_jax.kernels._jax_compat.vma_checks_off`);
    on GPU, without JAX's notice that its Triton backend is deprecated
    (:func:`~sepconv_jax.kernels._jax_compat.quiet_triton_deprecation`)."""
    if _interpret(platform):
        return vma_checks_off()
    if platform in _GPU_PLATFORMS:
        return quiet_triton_deprecation()
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- the maps


def _operand(a: jax.Array, role: str, spec: ConvSpec, geom: Geometry) -> jax.Array:
    if role == "kernel":
        return _taps(a, spec)
    return _activation_in(a, spec, geom.in_hw if role == "in" else geom.out_hw)


def _result(a: jax.Array, role: str, spec: ConvSpec) -> jax.Array:
    if role == "kernel":
        return a.reshape(*spec.window, 1, spec.out_channels)
    return _activation_out(a, spec, spec.in_spatial if role == "in" else spec.out_spatial)


def _pallas_map(name: str, a, b, spec: ConvSpec, *, platform, acc, out_dtype) -> jax.Array:
    """Map ``name`` by the Pallas kernel of ``platform``: Mosaic on TPU, Triton on GPU,
    the Triton kernels in interpret mode elsewhere (the one platform switch)."""
    (role_a, role_b), role_out = ROLES[name]
    if platform == "tpu":
        geom = _geometry(spec, long_axis="h")
        run = functools.partial(getattr(pallas_tpu, name), geom=geom)
    else:
        geom = _geometry(spec)
        run = functools.partial(
            getattr(pallas_triton, name), geom=geom, interpret=_interpret(platform)
        )
    out = run(
        _operand(a, role_a, spec, geom),
        _operand(b, role_b, spec, geom),
        acc=acc,
        out_dtype=np.dtype(out_dtype),
    )
    return _result(out, role_out, spec)


def _map(
    name: str, a, b, spec: ConvSpec, *, platform, precision, preferred_element_type, out_dtype
) -> jax.Array:
    """Map ``name``: delegated to the ``xla`` kernel (see the module docstring) or run
    by :func:`_pallas_map`, partitioned per shard
    (:func:`~sepconv_jax.kernels._partition.partitioned`)."""
    (role_a, role_b), role_out = ROLES[name]
    acc = _accumulation_dtype(a, b, preferred_element_type, out_dtype)
    result = role_shape(role_out, spec)
    activations = [v for v, r in ((a, role_a), (b, role_b)) if r != "kernel"]
    if role_out != "kernel":
        activations.append(jax.ShapeDtypeStruct(result, out_dtype))
    if _delegates(spec, acc, *activations):
        return getattr(xla, name)(
            a,
            b,
            spec,
            platform=platform,
            precision=precision,
            preferred_element_type=preferred_element_type,
            out_dtype=out_dtype,
        )
    run = functools.partial(_pallas_map, platform=platform, acc=acc)
    return partitioned(name, spec, run, acc=acc, out_dtype=out_dtype)(a, b)


def _options(names: dict) -> dict:
    """The keyword arguments every map passes on, from its ``locals()``."""
    keys = ("platform", "precision", "preferred_element_type", "out_dtype")
    return {key: names[key] for key in keys}


def forward(x, kernel, spec: ConvSpec, *, platform, precision, preferred_element_type, out_dtype):
    """``y = f(x, kernel)`` by a Pallas kernel (see the module docstring).

    The signature shared by every kernel's maps (see :mod:`sepconv_jax.kernels.op`).

    Example:
      >>> import jax.numpy as jnp
      >>> from sepconv_jax import depthwise_conv
      >>> y = depthwise_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 2)), impl="pallas")
      >>> y[0, :, :, 0].tolist()  # 4, 6 or 9 taps inside the image
      [[4.0, 6.0, 6.0, 4.0], [6.0, 9.0, 9.0, 6.0], [6.0, 9.0, 9.0, 6.0], [4.0, 6.0, 6.0, 4.0]]
    """
    return _map("forward", x, kernel, spec, **_options(locals()))


def input_transpose(
    g, kernel, spec: ConvSpec, *, platform, precision, preferred_element_type, out_dtype
):
    """``dx``: the transpose of :func:`forward` in ``x``, applied to ``g``."""
    return _map("input_transpose", g, kernel, spec, **_options(locals()))


def kernel_transpose(
    x, g, spec: ConvSpec, *, platform, precision, preferred_element_type, out_dtype
):
    """``dkernel``: the transpose of :func:`forward` in ``kernel``, applied to ``g``."""
    return _map("kernel_transpose", x, g, spec, **_options(locals()))
