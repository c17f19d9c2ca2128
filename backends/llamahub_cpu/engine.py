"""Loading the reference transformer for the CPU: build on meta, swap in the decode kernel,
assign the memory-mapped weights."""

from __future__ import annotations

import time
from functools import partial

import torch

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
from llamahub_cpu.kernels import use_decode_kernel

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
    return assign_weights(model, reader.state_dict(layout, dtype=TORCH_DTYPES[dtype]))


def load_cpu_model(artifacts: Artifacts, variant: Variant, options: LoadOptions) -> LlamaModel:
    dtype = options.dtype or DEFAULT_DTYPE
    started = time.perf_counter()
    ref = open_reference(artifacts, variant, options)
    model = build_decoder(ref.reader, dtype)
    threads = options.threads or torch.get_num_threads()
    info = {"load_seconds": time.perf_counter() - started, "threads": threads, "kernel": model.kernel,
            "checkpoint": str(ref.checkpoint.path), "format": ref.checkpoint.format}
    return LlamaModel(model, ref.tokenizer, variant, backend="cpu", dtype=dtype, info=info,
                      context_length=ref.args.max_seq_len, threads=options.threads,
                      close=model.reset_cache, slot_decoder=partial(TransformerSlots, model))
