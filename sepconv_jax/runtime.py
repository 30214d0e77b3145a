"""Process settings that change how fast a model runs on CPU, not what it computes.

XLA:CPU gives a compiled program its temporary buffers on every call and frees them
at the end. A training step's temporaries are large (698 MB for a MobileNetV2 step
at batch 8, 224x224). By default glibc's ``malloc`` serves a block that large from
a fresh anonymous mapping and unmaps it on ``free``, and turning that off
(``M_MMAP_MAX=0``) is not enough here: XLA's worker threads each get a malloc arena
of their own, such an arena cannot grow past 64 MiB, and glibc then maps the block
directly anyway. Every call then page-faults the whole buffer in again, with the
kernel zeroing each 4 KiB page: about 173,000 faults and 0.4 s of system CPU time
per MobileNetV2 training step on a 2-core machine (``benchmarks/RESULTS.md``, "Page faults"). PyTorch's CPU
allocator goes through the same ``malloc``, and pays the same way.

:func:`retain_freed_memory` sets glibc to one arena, no direct mappings and no
trimming (``mallopt``: ``M_ARENA_MAX=1``, ``M_MMAP_MAX=0``, ``M_TRIM_THRESHOLD``
off), so a freed buffer stays in the process and the next call reuses its pages.
The price is that the process keeps its peak heap: memory freed by one call is not
returned to the system, only reused. A process that runs one training step over and
over holds what that step needs; one that runs many different large programs one
after another keeps their buffers' high-water mark, fragmentation included (a
profiling run of 12 programs, up to ConvNeXt-T training at batch 32, held 16.9 GB).
It is what ``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` in
the environment does, settable from Python. Nothing here is applied unless called.
"""

from __future__ import annotations

import ctypes
import platform
import sys

__all__ = ["retain_freed_memory"]

# mallopt's parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def _jax_backends_initialized() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    check = getattr(bridge, "backends_are_initialized", None)
    return bool(check and check())


def retain_freed_memory() -> bool:
    """Keeps freed heap memory in the process, so large per-call buffers are reused.

    Call it once, first thing, before the first JAX computation (and, in a process
    that runs PyTorch, before ``import torch``): glibc assigns a thread its malloc
    arena at the thread's first allocation, so worker threads that already hold
    arenas of their own keep mapping large buffers afresh.

    Returns:
      ``True`` when the settings were applied; ``False`` where the C library is not
      glibc (macOS, Windows, musl), where nothing is changed.

    Raises:
      RuntimeError: when a JAX backend is already initialized in this process: its
        threads keep the arenas they have, so the call would change nothing for them.
      OSError: when glibc refuses one of the settings.

    Example:
      >>> import sepconv_jax
      >>> sepconv_jax.runtime.retain_freed_memory()  # doctest: +SKIP
      True
    """
    if _jax_backends_initialized():
        raise RuntimeError(
            "retain_freed_memory() must be called before the first JAX computation: "
            "this process's JAX backend is already initialized, and its worker threads "
            "keep the malloc arenas they hold"
        )
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    for name, param, value in (
        ("M_ARENA_MAX", _M_ARENA_MAX, 1),
        ("M_MMAP_MAX", _M_MMAP_MAX, 0),
        # -1 reaches glibc as SIZE_MAX: never give the top of the heap back.
        ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, -1),
    ):
        if libc.mallopt(param, value) != 1:
            raise OSError(f"glibc's mallopt refused {name}={value}")
    return True
