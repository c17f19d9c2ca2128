"""The CPU backend: the reference transformer in fp32 or bf16 on the CPU.

Importing this module is cheap; the model code is imported when a model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llamahub.plugin import Capacity, LoadOptions, MemoryPlan, hookimpl

if TYPE_CHECKING:
    from collections.abc import Callable

    from llamahub.plugin import Artifacts, Backend, LlamaModel, Variant

DTYPES = ("bf16", "fp32")  # the first is the default: half the memory of fp32
BYTES = {"fp32": 4, "bf16": 2}
# Activations, logits, allocator arenas and the decode kernel's buffers, beyond weights + cache.
WORKING_BYTES = 64 * 2**20


class CpuBackend:
    name = "cpu"
    priority = 10
    description = "reference transformer on the CPU (fp32, bf16)"
    dtypes = DTYPES
    devices = ("cpu",)

    def unavailable_reason(self) -> str | None:
        return None

    def unsupported_reason(self, variant: Variant, options: LoadOptions) -> str | None:
        if options.dtype is not None and options.dtype not in DTYPES:
            return f"dtype {options.dtype!r} not supported (use {' or '.join(DTYPES)})"
        if options.device not in (None, "cpu"):
            return f"runs on the CPU only, not on {options.device!r}"
        if options.extra:
            return f"no options {', '.join(sorted(options.extra))} (the cpu backend takes none)"
        return None

    def plan(self, variant: Variant, options: LoadOptions) -> MemoryPlan:
        """Weights in the dtype, plus a KV cache (same dtype) for the whole context, plus working memory."""
        from llamahub.plugin import context_length

        dtype = options.dtype or DTYPES[0]
        a = variant.arch
        kv = 2 * a.n_layers * a.kv_heads * a.head_dim * context_length(variant, options) * BYTES[dtype]
        return MemoryPlan(host_bytes=variant.param_count() * BYTES[dtype] + kv + WORKING_BYTES,
                          dtype=dtype)

    def capacity(self) -> Capacity:
        import psutil

        return Capacity(host_bytes=psutil.virtual_memory().available)

    def load(self, artifacts: Artifacts, variant: Variant, options: LoadOptions) -> LlamaModel:
        from llamahub_cpu.engine import load_cpu_model

        return load_cpu_model(artifacts, variant, options)


@hookimpl
def register_backends(register: Callable[[Backend], None]) -> None:
    register(CpuBackend())
