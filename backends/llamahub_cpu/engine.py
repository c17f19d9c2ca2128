"""Loading the reference transformer for the CPU."""

from __future__ import annotations

import time

import torch

from llamahub.interfaces import LoadOptions
from llamahub.model.checkpoint import Checkpoint
from llamahub.model.llm import LlamaModel
from llamahub.model.tokenizer import Tokenizer
from llamahub.model.transformer import build_model
from llamahub.registry import Variant

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def default_dtype(checkpoint: Checkpoint) -> str:
    """bf16 by default (half the memory); fp32 when asked for."""
    return "bf16"


def load_cpu_model(checkpoint: Checkpoint, variant: Variant, tokenizer: Tokenizer,
                   options: LoadOptions) -> LlamaModel:
    if options.threads:
        torch.set_num_threads(options.threads)
    dtype = options.dtype or default_dtype(checkpoint)
    started = time.perf_counter()
    model = build_model(checkpoint.args, checkpoint.state_dict(), TORCH_DTYPES[dtype])
    info = {"load_seconds": time.perf_counter() - started, "threads": torch.get_num_threads(),
            "checkpoint": str(checkpoint.path), "format": checkpoint.format}
    return LlamaModel(model, tokenizer, variant, backend="cpu", dtype=dtype, info=info)
