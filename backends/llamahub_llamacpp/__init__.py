"""The llama.cpp backend: our verified checkpoints as GGUF files, run by llama.cpp.

``load(name, backend="llamacpp", quant="q4_0")`` (CLI: ``--backend llamacpp -o quant=q4_0``)
converts the cached checkpoint once into the derived cache (f32, f16, q8_0 by our converter;
q4_0, q4_k_m by llama.cpp's quantizer from the f16 file) and runs it with llama-cpp-python.
The backend is used only when asked for (``backend="llamacpp"``, a ``quant`` option, or a GGUF
quantization as ``dtype``). ``export()`` writes the same files for ``llamahub export``; a GGUF
file of a user's own loads through ``llamahub.load(path)`` (``formats`` says it reads "gguf").

Importing this module is cheap: llama_cpp and gguf are imported when a model is loaded.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

from llamahub.plugin import Capacity, LoadOptions, MemoryPlan, hookimpl

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from llamahub.plugin import Artifacts, Backend, LlamaModel, Variant

QUANTS = ("q8_0", "f16", "f32", "q4_0", "q4_k_m")  # GGUF's names; the first is the default
DTYPES = ("q8_0", "fp16", "fp32", "q4_0", "q4_k_m")  # as dtype= (llamahub's spelling of f16, f32)
ALIASES = {"fp16": "f16", "fp32": "f32"}
BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_k_m": 0.61}
OPTIONS = ("quant", "kv_cache", "flash_attn")
FLASH_ATTN = ("auto", "on", "off")  # llama.cpp's default is auto (on for a CPU); Llama()'s is off
KV_TYPES = {"f16": 2, "f32": 4}
# llama.cpp's compute buffers, logits and the loaded library, beyond weights + KV cache
WORKING_BYTES = 128 * 2**20
INSTALL = "pip install 'llamahub[llamacpp]'"


def quant_of(options: LoadOptions) -> str:
    """The GGUF type asked for (``quant=``, else ``dtype=``; fp16/fp32 mean f16/f32)."""
    asked = str(options.extra.get("quant") or options.dtype or QUANTS[0]).lower()
    return ALIASES.get(asked, asked)


class LlamaCppBackend:
    name = "llamacpp"
    priority = 6  # below cpu: used when asked for, never by accident
    description = "llama.cpp on GGUF files (f32, f16, q8_0, q4_0, q4_k_m), via llama-cpp-python"
    dtypes = DTYPES
    devices = ("cpu",)
    formats = ("gguf",)  # it reads GGUF files: a user's own loads through llamahub.load(path)
    export_formats = ("gguf",)

    def unavailable_reason(self) -> str | None:
        try:
            found = importlib.util.find_spec("llama_cpp") is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return (f"llama-cpp-python is not installed: {INSTALL} "
                    "(it builds llama.cpp from source, about 12 minutes)")
        return None

    def unsupported_reason(self, variant: Variant, options: LoadOptions) -> str | None:
        unknown = sorted(set(options.extra) - set(OPTIONS))
        if unknown:
            return f"no option {', '.join(unknown)} (it takes {', '.join(OPTIONS)})"
        dtype = ALIASES.get((options.dtype or "").lower(), (options.dtype or "").lower())
        if options.dtype is not None and dtype not in QUANTS:
            return f"dtype {options.dtype!r} not supported (use a GGUF type: {', '.join(DTYPES)})"
        quant = quant_of(options)
        if quant not in QUANTS:
            return f"quant {quant!r} not supported (use {', '.join(QUANTS)})"
        if options.dtype and "quant" in options.extra and dtype != quant:
            return f"dtype {options.dtype!r} and quant {quant!r} disagree: give one"
        if str(options.extra.get("kv_cache", "f16")) not in KV_TYPES:
            return f"kv_cache must be one of {', '.join(KV_TYPES)}"
        if str(options.extra.get("flash_attn", "auto")) not in FLASH_ATTN:
            return f"flash_attn must be one of {', '.join(FLASH_ATTN)}"
        if options.device not in (None, "cpu"):
            return f"runs on the CPU here, not on {options.device!r}"
        asked = (options.backend == self.name or "quant" in options.extra
                 or dtype in ("q8_0", "q4_0", "q4_k_m", "f16"))  # types the cpu backend has not
        if not asked:
            return "used only when asked: backend='llamacpp' or quant=... (CLI: -o quant=q4_0)"
        return None

    def plan(self, variant: Variant, options: LoadOptions) -> MemoryPlan:
        """The GGUF's weights (mapped), a KV cache for the whole context, and working memory."""
        from llamahub.plugin import context_length

        quant = quant_of(options)
        quant = quant if quant in BYTES_PER_WEIGHT else QUANTS[0]
        a = variant.arch
        kv_bytes = KV_TYPES.get(str(options.extra.get("kv_cache", "f16")), 2)
        kv = 2 * a.n_layers * a.kv_heads * a.head_dim * context_length(variant, options) * kv_bytes
        weights = int(variant.param_count() * BYTES_PER_WEIGHT[quant])
        return MemoryPlan(host_bytes=weights + kv + WORKING_BYTES, dtype=quant,
                          note=f"GGUF {quant}: {weights / 2**30:.2f} GiB of weights")

    def capacity(self) -> Capacity:
        import psutil

        return Capacity(host_bytes=psutil.virtual_memory().available)

    def load(self, artifacts: Artifacts, variant: Variant, options: LoadOptions) -> LlamaModel:
        from llamahub_llamacpp.engine import load_model

        return load_model(artifacts, variant, options)

    def export(self, artifacts: Artifacts, variant: Variant, fmt: str, quant: str | None,
               out: Path) -> Path:
        """Write ``variant`` as a GGUF file at ``out`` (made once in the derived cache, then
        linked or copied)."""
        from llamahub_llamacpp.engine import export

        return export(artifacts, variant, fmt, quant or "f16", out)


def default_threads() -> int:
    return os.cpu_count() or 1


@hookimpl
def register_backends(register: Callable[[Backend], None]) -> None:
    register(LlamaCppBackend())
