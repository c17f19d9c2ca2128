"""The XLA runtime of this process: persistent compilation cache, SPMD mode, device and mesh.

Both the compilation cache and SPMD mode are process-wide and must be set before the runtime
starts (before the first tensor reaches an XLA device); ``start_runtime`` does that once and
refuses, with what to do, a later load that asks for something the process can no longer be.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llamahub.plugin import BackendError


@dataclass
class Runtime:
    """What this process's XLA runtime was started with."""

    cache: Path | None = None
    spmd: bool = False
    started: bool = False


RUNTIME = Runtime()


def start_runtime(cache: Path, spmd: bool) -> Runtime:
    """Point the persistent compilation cache at ``cache`` and enter SPMD mode when asked,
    before the first computation; later calls check they ask for what the process already is."""
    import torch_xla.runtime as xr

    if not RUNTIME.started:
        if spmd:
            xr.use_spmd()
        xr.initialize_cache(str(cache), readonly=False)
        RUNTIME.cache, RUNTIME.spmd, RUNTIME.started = cache, spmd, True
    elif spmd != RUNTIME.spmd:
        mode = "sharded across devices (SPMD)" if RUNTIME.spmd else "on one device"
        raise BackendError(f"this process already runs XLA models {mode}; torch_xla cannot change "
                           "that once its runtime has started",
                           hint="load with the same devices= as the first model, or in a new process")
    return RUNTIME


def xla_device() -> torch.device:
    import torch_xla

    return torch_xla.device()


def sync() -> None:
    """Cut the lazy graph here and run it (one compiled program per distinct graph)."""
    import torch_xla

    torch_xla.sync()


def make_mesh(n: int) -> Any:
    """A one-axis mesh ``("model",)`` over the first ``n`` devices."""
    import numpy as np
    import torch_xla.distributed.spmd as xs

    return xs.Mesh(np.arange(n), (n,), ("model",))


def shard(tensor: torch.Tensor, mesh: Any, spec: tuple[str | None, ...]) -> None:
    """Annotate ``tensor`` with its sharding on ``mesh`` (``"model"`` names the split dim)."""
    import torch_xla.distributed.spmd as xs

    xs.mark_sharding(tensor, mesh, spec)


def sharding_of(tensor: torch.Tensor) -> str:
    """The sharding XLA holds for ``tensor`` (``""`` when replicated or unsharded)."""
    import torch_xla

    return torch_xla._XLAC._get_xla_sharding_spec(tensor)


def compile_count() -> int:
    """How many programs XLA compiled in this process so far (torch_xla's metrics)."""
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    return int(data[0]) if data else 0


def compile_seconds() -> float:
    """Wall time spent compiling in this process so far."""
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    return float(data[1]) / 1e9 if data else 0.0


def free_device_bytes() -> int:
    """Free bytes on the first device (TPU HBM), as the runtime reports them."""
    import torch_xla.core.xla_model as xm

    info = xm.get_memory_info(xla_device())
    return int(info.get("bytes_limit", 0)) - int(info.get("bytes_used", 0))
