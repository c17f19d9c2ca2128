"""Tensor parallelism on CPU ranks: decode tok/s of tp=2 (1 thread per rank) next to tp=1 (2 threads).

Same random weights (bench_cpu's configs, a Meta folder with 2 shards so each rank maps its
own file), same method as bench_cpu: batch 1, greedy, a 32-token prompt (seed 0), 128 new
tokens with no stop; decode tok/s = 127 / (t[token 128] - t[token 1]); median (min-max) of
--runs timed runs after --warmup. For tp=2 it also reports rank 0's time in collectives per
token (the broadcast of the tokens, the all-reduces, the gather of the logits), from the
engine's own counters. Engines, all in one run:

- ``cpu``: the cpu backend (its AVX2 decode kernel), 2 threads, one process;
- ``tp1``: the cuda backend's engine with tp=1 on the CPU (plain aten linears), 2 threads;
- ``tp2``: the cuda backend's engine, 2 gloo ranks of 1 thread each, driven from this process.

    .venv/bin/python bench/bench_tp.py --config 1b --dtype bf16 --out bench/results/tp.json

Run it on an otherwise idle machine: the three share the same 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_cpu import CONFIGS, NEW_TOKENS, SEED, machine_info, prompt_ids

from llamahub.interfaces import LoadOptions
from llamahub.model.generation import Sampling, generate_ids
from llamahub.model.tokenizer import write_tiktoken_ranks
from llamahub.model.writer import random_state_dict, write_meta
from llamahub.reference import folder_artifacts, local_variant
from llamahub.registry import Variant

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
Decoder = Callable[[torch.Tensor, int], torch.Tensor]


def ensure_folder(config: str, dtype: str, work: Path) -> Path:
    """A 2-shard Meta folder of ``config`` with a tiktoken-style tokenizer of the same vocabulary."""
    args = CONFIGS[config]
    folder = work / f"tp-{config}-{dtype}"
    stamp = {"config": config, "dtype": dtype, "seed": SEED, "args": args.as_dict(), "shards": 2}
    marker = folder / "bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return folder
    print(f"writing {config} {dtype} weights (2 shards) to {folder}", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    write_tiktoken_ranks(folder / "tokenizer.model", args.vocab_size - 256)
    write_meta(folder, args, random_state_dict(args, seed=SEED, dtype=DTYPES[dtype]), shards=2)
    marker.write_text(json.dumps(stamp))
    return folder


def variant_of(folder: Path) -> Variant:
    from llamahub.model.checkpoint import open_checkpoint

    return local_variant(open_checkpoint(folder))


def time_runs(decoder: Decoder, prompt: list[int], runs: int, warmup: int) -> dict[str, Any]:
    rates, firsts = [], []
    for i in range(warmup + runs):
        stamps = []
        start = time.perf_counter()
        for _ in generate_ids(decoder, [prompt], NEW_TOKENS, Sampling(temperature=0), frozenset()):
            stamps.append(time.perf_counter())
        if i >= warmup:
            rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
            firsts.append(stamps[0] - start)
    return {"decode_tok_s": _stats(rates), "prefill_s": _stats(firsts)}


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def bench_cpu_backend(folder: Path, dtype: str, prompt: list[int],
                      opts: argparse.Namespace) -> dict[str, Any]:
    from llamahub_cpu.engine import build_decoder

    from llamahub.model.checkpoint import open_checkpoint

    torch.set_num_threads(2)
    model = build_decoder(open_checkpoint(folder).reader(), dtype)
    return {"engine": "cpu", "threads": 2, "kernel": model.kernel} | time_runs(model, prompt, opts.runs,
                                                                               opts.warmup)


def bench_cuda_engine(folder: Path, dtype: str, prompt: list[int], tp: int,
                      opts: argparse.Namespace) -> dict[str, Any]:
    import llamahub_cuda

    threads = 2 // tp
    options = LoadOptions(device="cpu", dtype=dtype, threads=threads, extra={"tp": tp})
    torch.set_num_threads(threads)
    started = time.perf_counter()
    model = llamahub_cuda.CudaBackend().load(folder_artifacts(folder, opts.work / "cache"),
                                             variant_of(folder), options)
    loaded = time.perf_counter() - started
    try:
        if tp == 1:
            return {"engine": "tp1", "threads": threads, "load_s": loaded} | time_runs(
                model.decoder, prompt, opts.runs, opts.warmup)
        engine = model.decoder
        before = engine.stats()
        result = time_runs(engine.last_logits, prompt, opts.runs, opts.warmup)
        after = engine.stats()
        steps = after["steps"] - before["steps"]
        return {"engine": "tp2", "threads_per_rank": threads, "load_s": loaded,
                "comm_ms_per_step": 1000 * (after["comm_seconds"] - before["comm_seconds"]) / steps,
                "step_ms": 1000 * (after["step_seconds"] - before["step_seconds"]) / steps,
                "steps": steps} | result
    finally:
        model.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="1b", choices=sorted(CONFIGS))
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "llamahub-bench")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    opts = p.parse_args()
    folder = ensure_folder(opts.config, opts.dtype, opts.work)
    prompt = prompt_ids(CONFIGS[opts.config].vocab_size)
    loadavg = os.getloadavg()[0]
    results = [bench_cpu_backend(folder, opts.dtype, prompt, opts),
               bench_cuda_engine(folder, opts.dtype, prompt, 1, opts),
               bench_cuda_engine(folder, opts.dtype, prompt, 2, opts)]
    record = {"config": opts.config, "dtype": opts.dtype, "batch": 1, "prompt_tokens": len(prompt),
              "new_tokens": NEW_TOKENS, "runs": opts.runs, "warmup": opts.warmup,
              "loadavg_before": loadavg, "machine": machine_info(), "results": results}
    text = json.dumps(record, indent=2)
    print(text)
    if opts.out:
        opts.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
