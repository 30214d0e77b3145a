"""Where a benchmark's numbers came from: CPU, cores, load, library versions, backend."""

from __future__ import annotations

import datetime
import os
import platform

import flax
import jax

__all__ = ["machine_info"]


def machine_info() -> dict:
    """Where the numbers came from: CPU, cores, load, library versions, backend."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
    }
    if hasattr(os, "getloadavg"):
        info["load_average"] = list(os.getloadavg())
    info["flax"] = flax.__version__
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info
