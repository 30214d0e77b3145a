"""``sepconv_jax.runtime.retain_freed_memory``: what glibc does with a large buffer
freed by XLA's threads, with and without it (each in a fresh process)."""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys

import jax.numpy as jnp
import pytest

from sepconv_jax import runtime

_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
_MALLINFO2 = _GLIBC and hasattr(ctypes.CDLL(None), "mallinfo2")  # glibc 2.33 and later

# A jitted sort of 2**25 float32 (128 MiB in, 128 MiB out): buffers far above glibc's
# largest mmap threshold (32 MiB), allocated by XLA:CPU. The child prints glibc's
# mallinfo2 fields `arena` (heap bytes held from the system) and `hblkhd` (bytes in
# direct mappings) after two calls.
_CHILD = """
import ctypes, sys
names = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
         "uordblks", "fordblks", "keepcost")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in names]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "on":
    from sepconv_jax import runtime
    assert runtime.retain_freed_memory() is True
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.sort(x) * x))
x = jnp.arange(2**25, dtype=jnp.float32)[::-1]
for _ in range(2):
    jax.block_until_ready(f(x))
info = libc.mallinfo2()
print(info.arena, info.hblkhd)
"""


def _heap(mode: str) -> tuple[int, int]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    arena, mapped = proc.stdout.split()[-2:]
    return int(arena), int(mapped)


@pytest.mark.skipif(not _MALLINFO2, reason="glibc's malloc (2.33 or later) only")
def test_large_buffers_stay_in_the_heap_instead_of_direct_mappings():
    mib = 2**20
    arena_off, mapped_off = _heap("off")
    arena_on, mapped_on = _heap("on")
    # By default the 128 MiB input array lives in a direct mapping (and so did the
    # temporaries, unmapped again after each call); the heap stays small.
    assert mapped_off >= 128 * mib
    assert arena_off < 128 * mib
    # Retained: the array and the freed temporaries are heap memory, nothing is mapped.
    assert mapped_on < 32 * mib
    assert arena_on >= arena_off + 256 * mib


def test_refuses_once_a_jax_backend_is_initialized():
    jnp.ones(2).block_until_ready()  # this test process's CPU backend is live
    with pytest.raises(RuntimeError, match="before the first JAX computation"):
        runtime.retain_freed_memory()


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(runtime, "_jax_backends_initialized", lambda: False)
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("", ""))
    assert runtime.retain_freed_memory() is False
