"""The PyTorch column of the benchmark suite: ``conv2d(groups=C)``, timed apart.

PyTorch runs in a child process of its own (see :func:`measure_torch`) and is
optional: without torch installed the column is empty.
"""

from __future__ import annotations

from collections.abc import Sequence

from sepconv_jax.apps.bench_shapes import Layer
from sepconv_jax.apps.timing import best_time

__all__ = ["measure_torch"]


def _torch_depthwise(layer: Layer, batch: int, dtype_name: str, pass_name: str, device: str):
    """A no-argument callable running PyTorch's depthwise conv on ``device``
    (``"cpu"`` or ``"cuda"``, where the call waits for the GPU), or ``None``."""
    try:
        import torch
    except ImportError:
        return None
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(dtype_name)
    if torch_dtype is None:
        return None
    gen = torch.Generator().manual_seed(0)
    s, k, c = layer.size, layer.kernel, layer.channels
    x = torch.randn(batch, c, s, s, generator=gen).to(device=device, dtype=torch_dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(c, 1, k, k, generator=gen) / k).to(device=device, dtype=torch_dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def conv(x, w):
        return torch.nn.functional.conv2d(x, w, stride=layer.stride, padding=k // 2, groups=c)

    if pass_name == "fwd":

        def call():
            with torch.no_grad():
                y = conv(x, w)
            sync()
            return y

    else:
        x.requires_grad_(True)
        w.requires_grad_(True)
        with torch.no_grad():
            cotangent = torch.ones_like(conv(x, w))

        def call():
            x.grad = w.grad = None
            conv(x, w).backward(cotangent)
            sync()
            return x.grad

    try:
        call()
    except (RuntimeError, NotImplementedError):  # a dtype this build has no kernel for
        return None
    return call


def _torch_worker(jobs: list[tuple], min_time: float, max_reps: int, device: str) -> dict:
    """Times PyTorch for every ``(layer, batch, dtype name, pass)`` job (in a child process)."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return {}
        torch.backends.cudnn.benchmark = True  # PyTorch's fastest algorithm per shape
    results = {}
    for layer, batch, dtype_name, pass_name in jobs:
        call = _torch_depthwise(layer, batch, dtype_name, pass_name, device)
        key = (layer.depthwise_name, batch, dtype_name, pass_name)
        results[key] = (
            (None, 0) if call is None else best_time(call, max_reps=max_reps, min_time=min_time)
        )
    return results


def measure_torch(
    layers: Sequence[Layer],
    batches: Sequence[int],
    dtypes: Sequence[str],
    passes: Sequence[str] = ("fwd", "fwd+bwd"),
    *,
    min_time: float,
    max_reps: int,
    device: str | None = None,
) -> dict[tuple, tuple[float | None, int]]:
    """PyTorch's depthwise conv for every distinct shape, timed in a separate process.

    In the process that runs JAX, XLA's worker threads compete with PyTorch's OpenMP
    threads on a small machine and PyTorch's times jump by whole scheduler time
    slices (measured: 0.14 ms alone, 16 ms in-process), so PyTorch runs in a fresh
    ``spawn`` process that never touches JAX.

    Args:
      layers, batches, dtypes: what to time, as for
        :func:`~sepconv_jax.apps.bench.measure_layers`.
      passes: ``"fwd"`` and/or ``"fwd+bwd"`` (forward, or forward and backward).
      min_time, max_reps: as for :func:`sepconv_jax.apps.timing.best_time`.
      device: ``"cpu"`` or ``"cuda"``; ``None``: ``"cuda"`` when JAX runs on a GPU
        (then PyTorch's CUDA kernels, with cuDNN's autotuner on), else ``"cpu"``.

    Returns:
      ``(depthwise name, batch, dtype, pass) -> (seconds or None, calls)``; empty when
      torch is not installed.
    """
    import importlib.util
    import multiprocessing

    if importlib.util.find_spec("torch") is None:
        return {}
    jobs, seen = [], set()
    for layer in layers:
        for batch in batches:
            for dtype_name in dtypes:
                for pass_name in passes:
                    key = (layer.depthwise_name, batch, dtype_name, pass_name)
                    if key not in seen:
                        seen.add(key)
                        jobs.append((layer, batch, dtype_name, pass_name))
    if device is None:
        import jax

        device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_torch_worker, (jobs, min_time, max_reps, device))
