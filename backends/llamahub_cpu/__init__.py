"""The CPU backend: the reference transformer in fp32 or bf16 on the CPU.

Importing this module is cheap; the model code is imported when a model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llamahub import hookimpl
from llamahub.interfaces import LoadOptions

if TYPE_CHECKING:
    from collections.abc import Callable

    from llamahub.interfaces import Backend
    from llamahub.model.checkpoint import Checkpoint
    from llamahub.model.llm import LlamaModel
    from llamahub.model.tokenizer import Tokenizer
    from llamahub.registry import Variant

DTYPES = ("fp32", "bf16")


class CpuBackend:
    name = "cpu"
    priority = 10
    description = "reference transformer on the CPU (fp32, bf16)"

    def unavailable_reason(self) -> str | None:
        return None

    def unsupported_reason(self, variant: Variant, options: LoadOptions) -> str | None:
        if options.dtype is not None and options.dtype not in DTYPES:
            return f"dtype {options.dtype!r} not supported (use {' or '.join(DTYPES)})"
        if options.device not in (None, "cpu"):
            return f"runs on the CPU only, not on {options.device!r}"
        return None

    def memory_estimate(self, variant: Variant, options: LoadOptions) -> int:
        """Weights in the chosen dtype plus a float32 KV cache of up to 4096 positions."""
        weights = variant.memory_estimate(options.dtype or "bf16", context=0)
        return weights + variant.memory_estimate("fp32", context=min(variant.context_length, 4096)) \
            - variant.memory_estimate("fp32", context=0)

    def load(self, checkpoint: Checkpoint, variant: Variant, tokenizer: Tokenizer,
             options: LoadOptions) -> LlamaModel:
        from llamahub_cpu.engine import load_cpu_model

        return load_cpu_model(checkpoint, variant, tokenizer, options)


@hookimpl
def register_backends(register: Callable[[Backend], None]) -> None:
    register(CpuBackend())
