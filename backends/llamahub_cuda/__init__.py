"""The CUDA backend: one GPU, or tensor parallelism across N worker processes.

``load(name, device="cuda")`` runs on one GPU in the caller's process; ``tp=N`` starts one
worker process per rank (NCCL between GPUs). The same engine runs on CPU ranks over gloo with
``device="cpu", tp=N``. The backend is used only when asked for (``device="cuda"`` or a ``tp``
option) and ranks below the cpu backend, so it is never chosen by accident.

Importing this module is cheap; torch is imported when a model is planned or loaded.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from llamahub.plugin import Capacity, LoadOptions, MemoryPlan, hookimpl

if TYPE_CHECKING:
    from collections.abc import Callable

    from llamahub.plugin import Artifacts, Backend, LlamaModel, Variant

DTYPES = ("bf16", "fp16", "fp32")  # the first is the default
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
OPTIONS = ("tp", "timeout", "nnodes", "master_addr", "master_port")
# Per process: the interpreter and torch (about 250 MiB on CPU), activations, allocator arenas.
PROCESS_BYTES = 320 * 2**20
WORKING_BYTES = 64 * 2**20


def tp_of(options: LoadOptions) -> int:
    return int(options.extra.get("tp", 1))


def device_of(options: LoadOptions) -> str:
    """"cuda" or "cpu": as asked, else cuda (the backend's name) when a GPU is visible."""
    if options.device:
        return options.device.split(":")[0]
    return "cuda" if cuda_reason() is None else "cpu"


def cuda_reason() -> str | None:
    """Why there is no CUDA device here (None when there is one)."""
    import torch

    if torch.version.cuda is None:
        return f"no CUDA device: torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return f"no CUDA device visible (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return None


class CudaBackend:
    name = "cuda"
    priority = 5  # below cpu: it runs when asked for, never by accident
    description = "one GPU, or tensor-parallel ranks (NCCL on GPUs, gloo on CPU: device='cpu', tp=N)"
    dtypes = DTYPES
    devices = ("cuda", "cpu")

    def unavailable_reason(self) -> str | None:
        return None  # its CPU ranks run anywhere; a missing GPU is a per-request refusal

    def unsupported_reason(self, variant: Variant, options: LoadOptions) -> str | None:
        from llamahub_cuda.parallel import split_reason

        if options.dtype is not None and options.dtype not in DTYPES:
            return f"dtype {options.dtype!r} not supported (use {', '.join(DTYPES)})"
        unknown = sorted(set(options.extra) - set(OPTIONS))
        if unknown:
            return f"no option {', '.join(unknown)} (it takes {', '.join(OPTIONS)})"
        tp = options.extra.get("tp", 1)
        if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
            return f"tp must be a whole number of ranks >= 1, got {tp!r}"
        nnodes = options.extra.get("nnodes", 1)
        if not isinstance(nnodes, int) or nnodes < 1 or tp % nnodes:
            return f"nnodes must divide tp={tp} (each node runs tp/nnodes ranks), got {nnodes!r}"
        if options.device not in (None, "cpu", "cuda"):
            return f"runs on cuda or cpu ranks, not on {options.device!r}"
        if options.device != "cuda" and "tp" not in options.extra:
            return "used only when asked: device='cuda', or tp=N (CLI: -o tp=N)"
        if device_of(options) == "cuda":
            why = cuda_reason()
            if why:
                return f"{why}; for tensor parallelism on CPU ranks pass device='cpu', tp=N"
            import torch

            local = tp // nnodes
            if local > torch.cuda.device_count():
                return f"tp={tp} needs {local} GPUs on this node, {torch.cuda.device_count()} here"
        return split_reason(variant.arch, tp)

    def plan(self, variant: Variant, options: LoadOptions) -> MemoryPlan:
        """Per rank: its slice of the weights and of a full-context KV cache, plus working memory."""
        from llamahub.plugin import context_length

        dtype = options.dtype or DTYPES[0]
        tp, a = tp_of(options), variant.arch
        kv = 2 * a.n_layers * a.kv_heads * a.head_dim * context_length(variant, options) * BYTES[dtype]
        per_rank = (variant.param_count() * BYTES[dtype] + kv) // tp + WORKING_BYTES
        workers = tp if tp > 1 else 0
        if device_of(options) == "cuda":
            return MemoryPlan(host_bytes=PROCESS_BYTES * (1 + workers), device_bytes=per_rank,
                              devices=tp, device="cuda", dtype=dtype)
        return MemoryPlan(host_bytes=per_rank * tp + PROCESS_BYTES * workers, dtype=dtype)

    def capacity(self) -> Capacity:
        import psutil

        host = psutil.virtual_memory().available
        if cuda_reason() is not None:
            return Capacity(host_bytes=host, device="cuda")
        import torch

        free = min(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
        return Capacity(host_bytes=host, device_bytes=free, devices=torch.cuda.device_count(),
                        device="cuda")

    def load(self, artifacts: Artifacts, variant: Variant, options: LoadOptions) -> LlamaModel:
        from llamahub_cuda.engine import load_model

        return load_model(artifacts, variant, options, device_of(options))


def default_threads(world: int) -> int:
    return max(1, (os.cpu_count() or 1) // world)


def option(options: LoadOptions, key: str, default: Any) -> Any:
    return options.extra.get(key, default)


@hookimpl
def register_backends(register: Callable[[Backend], None]) -> None:
    register(CudaBackend())
