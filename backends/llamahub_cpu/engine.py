"""Loading the reference transformer for the CPU."""

from __future__ import annotations

import time

import torch

from llamahub.errors import GenerationError
from llamahub.interfaces import LoadOptions
from llamahub.model.checkpoint import Checkpoint
from llamahub.model.llm import LlamaModel
from llamahub.model.tokenizer import Tokenizer
from llamahub.model.transformer import Transformer, build_model
from llamahub.registry import Variant
from llamahub_cpu.kernels import use_decode_kernel

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_DTYPE = "bf16"  # half the memory of fp32; pass dtype="fp32" for exact fp32 math


def build_decoder(checkpoint: Checkpoint, dtype: str = DEFAULT_DTYPE,
                  threads: int | None = None, *, kernel: bool = True) -> Transformer:
    """The model as a decoder callable ``(tokens, start) -> logits``, weights memory-mapped.

    With ``kernel`` the linears use the multi-threaded decode kernel when it is available
    (``model.kernel`` says what is in use).
    """
    if dtype not in TORCH_DTYPES:
        raise GenerationError(f"the cpu backend has no dtype {dtype!r}",
                              hint=f"use one of {', '.join(TORCH_DTYPES)}")
    if threads:
        torch.set_num_threads(threads)
    layout = checkpoint.rope_layout  # the files' own q/k order: no copy of q/k at load
    model = build_model(checkpoint.args, checkpoint.state_dict(layout), TORCH_DTYPES[dtype],
                        rope_layout=layout)
    model.kernel = use_decode_kernel(model) if kernel else "aten"
    return model


def load_cpu_model(checkpoint: Checkpoint, variant: Variant, tokenizer: Tokenizer,
                   options: LoadOptions) -> LlamaModel:
    dtype = options.dtype or DEFAULT_DTYPE
    started = time.perf_counter()
    model = build_decoder(checkpoint, dtype, options.threads)
    info = {"load_seconds": time.perf_counter() - started, "threads": torch.get_num_threads(),
            "kernel": model.kernel,
            "checkpoint": str(checkpoint.path), "format": checkpoint.format}
    return LlamaModel(model, tokenizer, variant, backend="cpu", dtype=dtype, info=info)
