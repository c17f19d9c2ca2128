"""GPU decode: the cuda backend on one GPU and with tp=N, next to transformers, same weights.

Real-shaped llama-2-7b with random weights (fp16, a Hugging Face folder written once into
--work, so both engines read the same file); batch 1, greedy, a 32-token prompt (seed 0), 128
new tokens with no stop. Reports decode tok/s (127 / (t[token 128] - t[token 1])) and time to
first token, median (min-max) of --runs after --warmup. Without a CUDA device it prints why
and exits 0 (nothing to measure); with one, commit its output:

    .venv/bin/python bench/bench_cuda.py --tp 1,2 --out bench/results/cuda.json
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

NEW_TOKENS, PROMPT_LEN, SEED = 128, 32, 0


def skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}, CUDA build: {torch.version.cuda})"
    return None


def ensure_weights(work: Path) -> Path:
    from llamahub.model.tokenizer import train_sentencepiece
    from llamahub.model.writer import random_state_dict, write_hf
    from llamahub.registry import shipped

    args = shipped().resolve("llama-2-7b").arch
    folder = work / "llama-2-7b-random-fp16"
    if (folder / "bench.json").is_file():
        return folder
    print(f"writing random llama-2-7b weights to {folder} (about 13.5 GB)", file=sys.stderr)
    write_hf(folder, args, random_state_dict(args, seed=SEED, dtype=torch.float16))
    train_sentencepiece(folder / "tokenizer.model", args.vocab_size)
    (folder / "bench.json").write_text(json.dumps({"seed": SEED, "dtype": "fp16"}))
    return folder


def timed(run: Callable[[], list[float]], runs: int, warmup: int) -> dict[str, Any]:
    """``run()`` generates and returns the time stamp of each new token; tok/s and TTFT per run."""
    rates, ttft = [], []
    for i in range(warmup + runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        stamps = run()  # each token reached the host: its stamp is after the GPU's work
        if i >= warmup:
            rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
            ttft.append(stamps[0] - start)
    return {"decode_tok_s": _stats(rates), "ttft_s": _stats(ttft)}


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def bench_llamahub(folder: Path, tp: int, prompt: list[int], opts: argparse.Namespace) -> dict[str, Any]:
    import llamahub_cuda

    from llamahub.interfaces import LoadOptions
    from llamahub.model.generation import Sampling, generate_ids
    from llamahub.reference import folder_artifacts
    from llamahub.registry import shipped

    options = LoadOptions(device="cuda", dtype="fp16", extra={"tp": tp})
    started = time.perf_counter()
    model = llamahub_cuda.CudaBackend().load(folder_artifacts(folder, opts.work / "cache"),
                                             shipped().resolve("llama-2-7b"), options)
    load_s = time.perf_counter() - started
    decoder = model.decoder if tp == 1 else model.decoder.last_logits
    try:
        def run() -> list[float]:
            steps = generate_ids(decoder, [prompt], NEW_TOKENS, Sampling(temperature=0), frozenset())
            return [time.perf_counter() for _ in steps]

        return {"engine": f"llamahub tp={tp}", "load_s": load_s} | timed(run, opts.runs, opts.warmup)
    finally:
        model.close()


def bench_transformers(folder: Path, prompt: list[int], opts: argparse.Namespace) -> dict[str, Any]:
    from transformers import LlamaForCausalLM
    from transformers.generation.streamers import BaseStreamer

    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float16).to("cuda").eval()
    ids = torch.tensor([prompt], device="cuda")

    class Stamps(BaseStreamer):
        def __init__(self) -> None:
            self.seen: list[float] = []

        def put(self, value: torch.Tensor) -> None:
            self.seen.append(time.perf_counter())

        def end(self) -> None:
            pass

    def run() -> list[float]:
        stamps = Stamps()
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                           streamer=stamps)
        return stamps.seen[1:]  # the first put() is the prompt

    return {"engine": "transformers"} | timed(run, opts.runs, opts.warmup)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tp", default="1", help="comma-separated tensor-parallel sizes, e.g. 1,2")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "llamahub-bench")
    p.add_argument("--out", type=Path)
    opts = p.parse_args()
    why = skip_reason()
    if why:
        print(f"bench_cuda: skipped: {why}")
        return 0
    folder = ensure_weights(opts.work)
    gen = torch.Generator().manual_seed(SEED)
    prompt = torch.randint(0, 32000, (PROMPT_LEN,), generator=gen).tolist()
    results = [bench_llamahub(folder, int(tp), prompt, opts) for tp in opts.tp.split(",")]
    results.append(bench_transformers(folder, prompt, opts))
    record = {"variant": "llama-2-7b (random weights)", "dtype": "fp16", "batch": 1,
              "prompt_tokens": PROMPT_LEN, "new_tokens": NEW_TOKENS, "gpu": torch.cuda.get_device_name(0),
              "gpus": torch.cuda.device_count(), "torch": torch.__version__, "results": results}
    text = json.dumps(record, indent=2)
    print(text)
    if opts.out:
        opts.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
