"""Loading for the tpu backend: the reference model on an XLA device, sharded when asked.

The model is built on the meta device, its weights assigned on the XLA device in the chosen
dtype and, across several devices, annotated for SPMD with the tensor-parallel split (Meta's
rules, as the cuda backend cuts its ranks): column-parallel wq, wk, wv, w1, w3 and the output
head on their output rows; row-parallel wo and w2 on their input columns; the embedding on the
dimension the checkpoint splits it; the KV cache on its kv heads; norms replicated. XLA's SPMD
partitioner then inserts the all-reduces and all-gathers the cuda backend does by hand.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from llamahub.plugin import (
    Artifacts,
    LlamaModel,
    LoadOptions,
    Transformer,
    Variant,
    assign_weights,
    build_meta,
    open_reference,
)
from llamahub_tpu import DTYPES, device_label, pjrt_device
from llamahub_tpu.decoding import XlaDecoder, XlaGenerator
from llamahub_tpu.device import make_mesh, shard, start_runtime, xla_device

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
COLUMN = ("wq", "wk", "wv")  # attention's column-parallel linears (w1, w3 in the feed-forward)
COLUMN_SPEC = ("model", None)  # weights are [out, in]: split the output rows
ROW_SPEC = (None, "model")  # split the input columns
CACHE_SPEC = (None, "model", None, None)  # [batch, kv heads, positions, head_dim]


def cache_key(devices: int) -> str:
    """The derived-artifact key of XLA's persistent compilation cache: per device kind and count
    (programs are keyed by their HLO, so dtypes and shapes share it safely)."""
    return f"xla-{(pjrt_device() or 'none').lower()}-{devices}dev"


def load_xla_model(artifacts: Artifacts, variant: Variant, options: LoadOptions,
                   devices: int) -> LlamaModel:
    dtype = options.dtype or DTYPES[0]
    started = time.perf_counter()
    cache = artifacts.derived(cache_key(devices))
    runtime = start_runtime(cache, spmd=devices > 1)
    ref = open_reference(artifacts, variant, options)
    device = xla_device()
    model = build_meta(ref.args, ref.rope_layout)
    state = ref.reader.state_dict(ref.rope_layout, dtype=TORCH_DTYPES[dtype])
    model = assign_weights(model, state, device=device)
    mesh = make_mesh(devices) if devices > 1 else None
    if mesh is not None:
        shard_weights(model, mesh, ref.reader.embedding_split_dim())
    info: dict[str, Any] = {
        "device": device_label(), "pjrt_device": pjrt_device(), "xla_device": str(device),
        "devices": devices, "spmd": mesh is not None, "compile_cache": str(runtime.cache),
        "checkpoint": str(ref.checkpoint.path), "format": ref.checkpoint.format,
    }
    reshard = (lambda: shard_cache(model, mesh)) if mesh is not None else None
    generator = XlaGenerator(model, ref.args.max_seq_len, reshard)
    info["load_seconds"] = time.perf_counter() - started
    info["prefill_buckets"] = list(generator.buckets)
    return LlamaModel(XlaDecoder(generator), ref.tokenizer, variant, backend="tpu", dtype=dtype,
                      info=info, generator=generator, context_length=ref.args.max_seq_len,
                      close=generator.close)


def shard_weights(model: Transformer, mesh: Any, embedding_dim: int) -> None:
    """Annotate every weight with the tensor-parallel split (norms stay replicated)."""
    for layer in model.layers:
        attn, ffn = layer.attention, layer.feed_forward
        for name in COLUMN:
            shard(getattr(attn, name).weight, mesh, COLUMN_SPEC)
        shard(attn.wo.weight, mesh, ROW_SPEC)
        shard(ffn.w1.weight, mesh, COLUMN_SPEC)
        shard(ffn.w3.weight, mesh, COLUMN_SPEC)
        shard(ffn.w2.weight, mesh, ROW_SPEC)
    shard(model.output.weight, mesh, COLUMN_SPEC)
    shard(model.tok_embeddings.weight, mesh, ROW_SPEC if embedding_dim == 1 else COLUMN_SPEC)


def shard_cache(model: Transformer, mesh: Any) -> None:
    """Annotate a freshly set-up KV cache: each device holds its kv heads."""
    for layer in model.layers:
        cache = layer.attention.cache
        if cache is not None:
            shard(cache.k, mesh, CACHE_SPEC)
            shard(cache.v, mesh, CACHE_SPEC)
