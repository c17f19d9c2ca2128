"""Loading the reference transformer for the CPU: build on meta, swap in the decode kernel (or the
int8/int4 linears), assign the memory-mapped weights."""

from __future__ import annotations

import time
from functools import partial
from types import ModuleType
from typing import Any

import torch

from llamahub.errors import CorruptCheckpointError
from llamahub.plugin import (
    Artifacts,
    CheckpointReader,
    GenerationError,
    LlamaModel,
    LoadOptions,
    Transformer,
    TransformerSlots,
    Variant,
    assign_weights,
    build_meta,
    open_reference,
)
from llamahub_cpu.block import fuse_blocks
from llamahub_cpu.kernels import kernel, qkernel, use_decode_kernel
from llamahub_cpu.quant import SCHEMES, swap_quantized

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_DTYPE = "bf16"  # half the memory of fp32; pass dtype="fp32" for exact fp32 math


def build_decoder(reader: CheckpointReader, dtype: str = DEFAULT_DTYPE, *,
                  kernel: bool = True) -> Transformer:
    """The model as a decoder callable ``(tokens, start) -> logits``, weights memory-mapped.

    With ``kernel`` the linears are swapped for the multi-threaded decode kernel's before the
    weights are assigned, when it is available (``model.kernel`` says what is in use).
    """
    if dtype not in TORCH_DTYPES:
        raise GenerationError(f"the cpu backend has no dtype {dtype!r}",
                              hint=f"use one of {', '.join(TORCH_DTYPES)}")
    layout = reader.checkpoint.rope_layout  # the files' own q/k order: no copy of q/k at load
    model = build_meta(reader.args, layout)
    model.cache_dtype = torch.float32  # see CACHE_BYTES in llamahub_cpu
    model.kernel = use_decode_kernel(model) if kernel else "aten"
    if kernel and fuse_blocks(model, kernel_module()):
        model.kernel += " + fused decode block"
    return assign_weights(model, reader.state_dict(layout, dtype=TORCH_DTYPES[dtype]))


def kernel_module() -> ModuleType | None:
    """The fp32/bf16 decode kernel, None when it is unavailable."""
    gemv = kernel()
    return None if isinstance(gemv, str) else gemv


def quant_kernel_status(scheme: str) -> tuple[ModuleType | None, str]:
    """The int8/int4 kernels (None: plain torch) and what runs, as ``model.kernel`` says it."""
    ops = qkernel()
    if isinstance(ops, str):
        return None, f"plain torch {scheme} (dequantize + aten; {ops})"
    isa = ops.isa().upper().replace("AVX512", "AVX-512").replace("-VNNI", " VNNI")
    return ops, f"llamahub {scheme} {isa} qgemv/qgemm"


def build_quant_decoder(artifacts: Artifacts, reader: CheckpointReader,
                        scheme: str) -> tuple[Transformer, dict[str, Any]]:
    """The model with ``QuantLinear``s swapped in on meta, then the cached quantized weights
    (made on first use) assigned memory-mapped. Returns it and what the cache did."""
    from llamahub_cpu.artifact import quantized_weights, rebuild

    if scheme not in SCHEMES:
        raise GenerationError(f"no quantization scheme {scheme!r}", hint=f"use one of {', '.join(SCHEMES)}")
    model = build_meta(reader.args, reader.checkpoint.rope_layout)
    model.cache_dtype = torch.float32
    ops, model.kernel = quant_kernel_status(scheme)
    swap_quantized(model, scheme, ops)
    if fuse_blocks(model, ops):
        model.kernel += " + fused decode block"
    tensors, cache = quantized_weights(artifacts, reader, scheme, ops)
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as e:  # names or shapes that do not fit: a damaged or foreign file
        if cache.get("shipped"):  # not ours to rebuild: it holds what a fine-tune trained
            raise CorruptCheckpointError(
                f"the quantized weights shipped in {cache['path']} do not fit this model: {str(e)[:200]}",
                hint="run the quantization-aware fine-tune again, or load with another dtype") from e
        cache |= {"built": True, "rebuilt_because": f"tensors do not fit the model: {str(e)[:200]}"}
        model.load_state_dict(rebuild(artifacts, reader, scheme, ops), strict=True, assign=True)
    model.requires_grad_(False)
    return model.eval(), cache


def load_cpu_model(artifacts: Artifacts, variant: Variant, options: LoadOptions) -> LlamaModel:
    dtype = options.dtype or DEFAULT_DTYPE
    started = time.perf_counter()
    ref = open_reference(artifacts, variant, options)
    extra: dict[str, Any] = {}
    if dtype in SCHEMES:
        model, cache = build_quant_decoder(artifacts, ref.reader, dtype)
        extra = {"quantized": cache}
    else:
        model = build_decoder(ref.reader, dtype)
    threads = options.threads or torch.get_num_threads()
    info = {"load_seconds": time.perf_counter() - started, "threads": threads, "kernel": model.kernel,
            "checkpoint": str(ref.checkpoint.path), "format": ref.checkpoint.format, **extra}
    return LlamaModel(model, ref.tokenizer, variant, backend="cpu", dtype=dtype, info=info,
                      context_length=ref.args.max_seq_len, threads=options.threads,
                      close=model.reset_cache, slot_decoder=partial(TransformerSlots, model))
