"""Loading for the cuda backend: in the caller's process (tp=1), or across worker ranks (tp=N)."""

from __future__ import annotations

import os
import time

from llamahub.plugin import (
    Artifacts,
    ConfigError,
    DecoderLoop,
    LlamaModel,
    LoadOptions,
    Variant,
    open_reference,
)
from llamahub_cuda import DTYPES, default_threads, option, tp_of
from llamahub_cuda.worker import WorkerSpec, build_rank_model, rank_device


def load_model(artifacts: Artifacts, variant: Variant, options: LoadOptions, device: str) -> LlamaModel:
    dtype = options.dtype or DTYPES[0]
    tp = tp_of(options)
    started = time.perf_counter()
    ref = open_reference(artifacts, variant, options)
    info = {"tp": tp, "device": device, "checkpoint": str(ref.checkpoint.path),
            "format": ref.checkpoint.format, "shards": ref.reader.n_files}
    if tp == 1:
        model = build_rank_model(ref.reader, ref.args, 0, 1, rank_device(device, 0), dtype)
        info["load_seconds"] = time.perf_counter() - started
        return LlamaModel(model, ref.tokenizer, variant, backend="cuda", dtype=dtype, info=info,
                          context_length=ref.args.max_seq_len, threads=options.threads,
                          close=model.reset_cache)
    from llamahub_cuda.driver import Engine, free_port

    spec = WorkerSpec(artifacts=artifacts, variant=variant, options=options, world=tp, device=device,
                      dtype=dtype, threads=options.threads or default_threads(tp),
                      timeout_s=float(option(options, "timeout", 600.0)))
    nnodes = int(option(options, "nnodes", 1))
    if nnodes > 1:  # torchrun's variables; the other nodes run `python -m llamahub_cuda.node`
        addr = str(option(options, "master_addr", os.environ.get("MASTER_ADDR", "127.0.0.1")))
        port = option(options, "master_port", os.environ.get("MASTER_PORT"))
        if port is None:
            raise ConfigError(f"nnodes={nnodes} needs the rendezvous port every node uses",
                              hint="set MASTER_ADDR and MASTER_PORT (or pass master_port=)")
    else:
        addr, port = "127.0.0.1", free_port()
    engine = Engine(spec, addr, int(port), local_ranks=tp // nnodes)
    info |= {"pids": engine.pids, "threads_per_rank": spec.threads,
             "load_seconds": time.perf_counter() - started}
    return LlamaModel(engine, ref.tokenizer, variant, backend="cuda", dtype=dtype, info=info,
                      generator=DecoderLoop(engine.last_logits), context_length=ref.args.max_seq_len,
                      close=engine.close)

