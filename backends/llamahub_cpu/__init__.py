"""The CPU backend: the reference transformer in fp32 or bf16 on the CPU, or with weight-only int8
or int4 linears on llamahub's own kernels (``llamahub_cpu.quant``).

Importing this module is cheap; the model code is imported when a model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llamahub.plugin import Capacity, LoadOptions, MemoryPlan, hookimpl

if TYPE_CHECKING:
    from collections.abc import Callable

    from llamahub.plugin import Artifacts, Backend, LlamaModel, Variant
    from llamahub_cpu.prequant import CpuQuantizer

DTYPES = ("bf16", "fp32", "int8", "int4")  # the first is the default: half the memory of fp32
BYTES = {"fp32": 4, "bf16": 2}
QUANT_BLOCK = 32  # int8/int4: one float16 scale per 32 weights (llamahub_cpu.quant)
QUANT_BITS = {"int8": 8, "int4": 4}
# The KV cache stays float32 for bf16 weights too: without AVX512-BF16, bf16 attention matmuls are
# about 2x slower than fp32 ones here, and float32 keeps attention as exact as with fp32 weights.
CACHE_BYTES = 4
# Activations, logits, allocator arenas and the decode kernel's buffers, beyond weights + cache.
WORKING_BYTES = 64 * 2**20


def quant_isa() -> str | None:
    """What the int8/int4 kernels would run on here: "AVX-512 VNNI", "AVX-512", "AVX2", or None
    (plain torch).

    Read from the CPU's flags without importing torch, so ``llamahub plugins`` stays quick.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if not {"avx2", "fma", "f16c"} <= set(flags):
        return None
    if not {"avx512f", "avx512bw"} <= set(flags):
        return "AVX2"
    return "AVX-512 VNNI" if {"avx512vl", "avx512_vnni"} <= set(flags) else "AVX-512"


def weight_bytes(variant: Variant, dtype: str) -> int:
    """Bytes of the weights in ``dtype``; int8/int4 count their scales, a bfloat16 embedding and
    an int8 output head (as ``llamahub_cpu.quant`` stores them)."""
    if dtype in BYTES:
        return variant.param_count() * BYTES[dtype]
    a = variant.arch
    d, kv, emb = a.dim, a.kv_heads * a.head_dim, a.vocab_size * a.dim
    linear = a.n_layers * (2 * d * a.n_heads * a.head_dim + 2 * d * kv + 3 * d * a.hidden_dim)
    norms = (2 * a.n_layers + 1) * d * 4

    def quant(n: int, bits: int) -> int:
        return n * bits // 8 + n // QUANT_BLOCK * 2

    return quant(linear, QUANT_BITS[dtype]) + quant(emb, 8) + emb * 2 + norms


class CpuBackend:
    name = "cpu"
    priority = 10
    dtypes = DTYPES
    devices = ("cpu",)

    @property
    def description(self) -> str:
        isa = quant_isa()
        kernels = f"llamahub's {isa} kernels" if isa else "plain torch (no AVX2/FMA/F16C on this CPU)"
        return f"reference transformer on the CPU (fp32, bf16; int8, int4 on {kernels})"

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
        """Weights in the dtype, a float32 KV cache for the whole context, and working memory."""
        from llamahub.plugin import context_length

        dtype = options.dtype or DTYPES[0]
        a = variant.arch
        kv = 2 * a.n_layers * a.kv_heads * a.head_dim * context_length(variant, options) * CACHE_BYTES
        return MemoryPlan(host_bytes=weight_bytes(variant, dtype) + kv + WORKING_BYTES, dtype=dtype)

    def capacity(self) -> Capacity:
        import psutil

        return Capacity(host_bytes=psutil.virtual_memory().available)

    def load(self, artifacts: Artifacts, variant: Variant, options: LoadOptions) -> LlamaModel:
        from llamahub_cpu.engine import load_cpu_model

        return load_cpu_model(artifacts, variant, options)

    def quantizer(self, dtype: str) -> CpuQuantizer | None:
        """This backend's int8/int4 scheme for a trainer to fake-quantize with and to ship weights
        in, which a load with ``dtype`` then maps unchanged (``llamahub_cpu.prequant``)."""
        from llamahub_cpu.prequant import CpuQuantizer

        return CpuQuantizer(dtype) if dtype in QUANT_BITS else None


@hookimpl
def register_backends(register: Callable[[Backend], None]) -> None:
    register(CpuBackend())
