"""The ``"native"`` kernel: depthwise convolution in C++ on the CPU, called through the XLA FFI.

Three handlers (``_native/depthwise_cpu.cc``), one per map of
:mod:`sepconv_jax.kernels.op`, each a custom call that XLA runs as one opaque
operation: the forward convolution, the input gradient and the kernel gradient.
They read channels-last float32 arrays in place: nothing is padded, copied or
re-laid out around the call, and the taps that fall into the padding are skipped
by precomputed ranges instead of read as zeros. The forward map goes pixel by
pixel in memory order, all channels of a pixel before the next; inside the row it
takes four output pixels at a time, so that each tap's weights are loaded once for
the four (one vector read from memory per multiply-add instead of two). The
unstrided input gradient is that same loop with the kernel flipped; a strided one
gathers, per input pixel, the taps that read it. The kernel gradient keeps a block
of channels' sums in registers along each row. Rows of the image are shared with
XLA's intra-op thread pool, the calling thread taking rows too. The kernel
gradient sums fixed chunks of rows and adds the chunks in order, so its bits do
not depend on the number of threads. Sharded over batch and channels
(:mod:`sepconv_jax.kernels._partition`), each device runs the handlers on its own
part, as XLA partitions the other kernels.

Why a kernel outside XLA: the ``"shift"`` kernel leaves the loop to XLA's fusion,
which is fast for the forward map but, in a training step, fuses the forward tap
loop and the neighbouring batch norm into the kernel gradient's reduction and
recomputes them there (``benchmarks/RESULTS.md``, "Changed: the input gradient of
wide windows"). A custom call is a fusion boundary: each map runs once.

The library is compiled from the source shipped in the package, the first time a
process needs it, with the C++ compiler of ``$CXX`` (default ``c++``) at ``-O3
-march=native``, against the FFI headers that ship with jaxlib
(:func:`jax.ffi.include_dir`). It is cached under :func:`cache_dir`, keyed by the
source, jaxlib's version, the flags and this machine's CPU, so it is compiled once
per machine; ``make`` builds it when it installs the package
(``python -m sepconv_jax.kernels.native``).

Where it does not run, the ``"shift"`` kernel runs in its place (the same
numerics): on every platform but ``cpu``, for channels-first, 3-D, grouped
(depth multiplier above 1) problems, and where the accumulation dtype is not
``float32`` (``float64``, integers, complex). 16-bit float inputs are widened to
``float32``, which is what the other kernels accumulate in. Asked for by name on a
machine where the library cannot be built, it raises :class:`NativeBuildError`
with the compiler's message; ``"auto"`` then picks ``"shift"``.

``precision`` has no effect: products and sums are float32 fused multiply-adds.

Example:
  >>> import jax.numpy as jnp
  >>> from sepconv_jax import depthwise_conv
  >>> y = depthwise_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 2)), impl="native")
  >>> y[0, :, :, 0].tolist()  # 4, 6 or 9 taps inside the image
  [[4.0, 6.0, 6.0, 4.0], [6.0, 9.0, 9.0, 6.0], [6.0, 9.0, 9.0, 6.0], [4.0, 6.0, 6.0, 4.0]]
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform as _platform
import shutil
import subprocess
import sys
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

from sepconv_jax._spec import ConvSpec
from sepconv_jax.kernels import shift
from sepconv_jax.kernels._partition import ROLES, partitioned, role_shape

__all__ = [
    "NativeBuildError",
    "available",
    "build",
    "cache_dir",
    "forward",
    "input_transpose",
    "kernel_transpose",
    "library_path",
    "supports",
]

SOURCE = pathlib.Path(__file__).with_name("_native") / "depthwise_cpu.cc"

_FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-std=c++17", "-shared", "-fPIC")

# Map name -> (FFI target name, exported handler symbol).
_TARGETS = {
    "forward": ("sepconv_jax_depthwise_forward", "SepconvDepthwiseForward"),
    "input_transpose": ("sepconv_jax_depthwise_input_grad", "SepconvDepthwiseInputGrad"),
    "kernel_transpose": ("sepconv_jax_depthwise_kernel_grad", "SepconvDepthwiseKernelGrad"),
}


class NativeBuildError(RuntimeError):
    """The C++ library could not be compiled or loaded on this machine."""


def cache_dir() -> pathlib.Path:
    """Where compiled libraries are kept: ``$SEPCONV_JAX_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/sepconv_jax``, else ``~/.cache/sepconv_jax``."""
    explicit = os.environ.get("SEPCONV_JAX_CACHE_DIR")
    if explicit:
        return pathlib.Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "sepconv_jax"


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def _cpu_identity() -> str:
    """The CPU's model and feature flags, so a library built with ``-march=native`` is
    never loaded on a machine with fewer instructions."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return _platform.processor()
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(keep)))


def _command(output: pathlib.Path) -> list[str]:
    return [
        _compiler(),
        *_FLAGS,
        "-isystem",
        jax.ffi.include_dir(),
        str(SOURCE),
        "-o",
        str(output),
    ]


def library_path() -> pathlib.Path:
    """The path the library for this source, jaxlib, compiler, flags and CPU has in
    :func:`cache_dir` (whether or not it has been built)."""
    import jaxlib

    key = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        jaxlib.__version__.encode(),
        _compiler().encode(),
        " ".join(_FLAGS).encode(),
        _platform.machine().encode(),
        _cpu_identity().encode(),
    ):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / f"libsepconv_depthwise_{key.hexdigest()[:16]}.so"


_BUILD_LOCK = threading.Lock()


def build(*, force: bool = False) -> pathlib.Path:
    """Compiles the library into :func:`cache_dir` unless it is there; returns its path.

    Safe to call from several processes at once: each compiles into a temporary
    file and renames it into place.

    Raises:
      NativeBuildError: no compiler, or the compiler failed (its output is in the
        message).
    """
    path = library_path()
    with _BUILD_LOCK:
        if path.exists() and not force:
            return path
        if shutil.which(_compiler()) is None:
            raise NativeBuildError(
                f"the native depthwise kernel needs a C++ compiler: {_compiler()!r} (from $CXX, "
                "default 'c++') was not found"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            done = subprocess.run(_command(pathlib.Path(tmp)), capture_output=True, text=True)
            if done.returncode != 0:
                raise NativeBuildError(
                    "compiling the native depthwise kernel failed:\n"
                    + " ".join(_command(pathlib.Path(tmp)))
                    + "\n"
                    + done.stderr[-4000:]
                )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


@functools.cache
def _library() -> ctypes.CDLL | NativeBuildError:
    """The loaded library, built first if needed, or the error that prevented it."""
    try:
        return ctypes.CDLL(str(build()))
    except NativeBuildError as error:
        return error
    except OSError as error:  # a library that does not load here
        return NativeBuildError(f"loading the native depthwise kernel failed: {error}")


def available() -> bool:
    """Whether the library is built (or builds now) and loads on this machine."""
    return not isinstance(_library(), NativeBuildError)


@functools.cache
def _registered() -> None:
    """Registers the three handlers with XLA:CPU, once per process."""
    library = _library()
    if isinstance(library, NativeBuildError):
        raise library
    for target, symbol in _TARGETS.values():
        handler = getattr(library, symbol)
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")


def supports(spec: ConvSpec, acc: np.dtype | None = None) -> bool:
    """Whether the C++ handlers compute this problem (else ``"shift"`` runs): a 1-D or
    2-D channels-last depthwise convolution with a depth multiplier of 1, accumulated
    in ``float32`` (``acc=None``: the shape alone, for a rule that runs before the
    dtypes are known)."""
    return (
        spec.num_spatial in (1, 2)
        and spec.channels_last
        and spec.depth_multiplier == 1
        and (acc is None or np.dtype(acc) == np.float32)
    )


def _geometry(spec: ConvSpec) -> np.ndarray:
    """The handlers' ``geometry`` attribute; a 1-D problem as one row of a 2-D one."""

    def two(values, fill):
        return tuple(values) if spec.num_spatial == 2 else (fill, *values)

    (h, w), (oh, ow), (kh, kw) = (
        two(spec.in_spatial, 1),
        two(spec.out_spatial, 1),
        two(spec.window, 1),
    )
    (sh, sw), (dh, dw) = two(spec.strides, 1), two(spec.dilation, 1)
    (ph, pw) = two([lo for lo, _ in spec.padding], 0)
    n, c = spec.batch_shape[0], spec.in_channels
    return np.array([n, h, w, c, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw], np.int64)


def _ffi_map(name: str, a, b, spec: ConvSpec, *, out_dtype) -> jax.Array:
    """Map ``name`` of ``spec`` by its C++ handler, on float32 operands."""
    result_shape = role_shape(ROLES[name][1], spec)
    f32 = jnp.float32
    result = jax.ffi.ffi_call(_TARGETS[name][0], jax.ShapeDtypeStruct(result_shape, f32))(
        a.astype(f32), b.astype(f32), geometry=_geometry(spec)
    )
    return result.astype(out_dtype)


def _map(
    name: str, a, b, spec: ConvSpec, *, platform, precision, preferred_element_type, out_dtype
) -> jax.Array:
    """Map ``name``: by the C++ handler, partitioned per shard
    (:func:`~sepconv_jax.kernels._partition.partitioned`), or by ``"shift"``'s map
    where the handlers do not run (see the module docstring)."""
    acc = shift._numerics(a, b, preferred_element_type, out_dtype)
    if platform != "cpu" or not supports(spec, acc):
        return getattr(shift, name)(
            a,
            b,
            spec,
            platform=platform,
            precision=precision,
            preferred_element_type=preferred_element_type,
            out_dtype=out_dtype,
        )
    _registered()
    return partitioned(name, spec, _ffi_map, acc=acc, out_dtype=out_dtype)(a, b)


#: The three maps, with the signature every kernel's maps share
#: (``(a, b, spec, *, platform, precision, preferred_element_type, out_dtype)``, see
#: :mod:`sepconv_jax.kernels.op`): ``y = f(x, kernel)``, ``dx`` from ``(g, kernel)``
#: and ``dkernel`` from ``(x, g)``.
forward = functools.partial(_map, "forward")
input_transpose = functools.partial(_map, "input_transpose")
kernel_transpose = functools.partial(_map, "kernel_transpose")


def main(argv: list[str] | None = None) -> int:
    """``python -m sepconv_jax.kernels.native``: builds the library, prints its path."""
    del argv
    try:
        print(build())
    except NativeBuildError as error:
        print(f"the native depthwise kernel is not available here: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
