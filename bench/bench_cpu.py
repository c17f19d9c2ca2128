"""CPU decode benchmark: llamahub vs transformers on the same random weights, in the same run.

Method of /work/shared/reference/cpu-baselines.md: batch 1, greedy, 32-token prompt (ids drawn
with seed 0), 128 new tokens, no EOS stop; decode tok/s = 127 / (t[token 128] - t[token 1]);
prefill = call to first token. Every (config, dtype, engine) is measured in its own process,
so peak RSS (VmHWM) is per engine; load is timed in --load-runs fresh processes in all.

    python bench/bench_cpu.py --all --out bench/results/cpu.jsonl
    python bench/bench_cpu.py --config tiny --dtype fp32 --engine llamahub --runs 1 --out x.jsonl

Layouts: ``hf`` (one safetensors file, both engines) and ``meta1``/``meta2``/``meta4`` (Meta's
consolidated.NN.pth shards, llamahub only: transformers does not read Meta's format), so the
load time and peak memory of merging N shards are measured too.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bandwidth import stats, warm

from llamahub.model.args import ModelArgs

HERE = Path(__file__).resolve().parent
PROMPT_LEN, NEW_TOKENS, SEED = 32, 128, 0
MARK = "BENCH_JSON "
# The stated fixed overhead on top of the imports: KV cache for 160 positions, activations, the
# allocator's per-thread arenas and GEMM packing buffers. It does not grow with the weights.
WORKING_MIB = 64
CONFIGS: dict[str, ModelArgs] = {
    # FFN widths by Meta's formula (128, 2048, 5632), so the Meta layouts can write params.json.
    "tiny": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=32000, multiple_of=128,
                      ffn_dim_multiplier=0.75, max_seq_len=1024, tie_embeddings=True),
    "110m": ModelArgs(dim=768, n_layers=12, n_heads=12, vocab_size=32000, max_seq_len=1024,
                      tie_embeddings=True),
    "1b": ModelArgs(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=32000, max_seq_len=2048),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ENGINES = ("llamahub", "transformers")
LAYOUTS = ("hf", "meta1", "meta2", "meta4")
# A run returns (time of the call, time stamp of each new token, the new token ids).
Run = Callable[[], tuple[float, list[float], list[int]]]
# A loader returns (run, load seconds, first 1-token forward seconds, what was loaded).
Loader = Callable[[Path, str, int, list[int]], tuple[Run, float, float, str]]


def weight_bytes(args: ModelArgs, dtype: str) -> tuple[int, int]:
    """(bytes of all weights, bytes read per decoded token).

    Per token every matrix is read once; the embedding lookup reads one row, so the table
    counts only as the (tied) output head. KV-cache reads are not included.
    """
    size = DTYPES[dtype].itemsize
    per_token = args.param_count() - (0 if args.tie_embeddings else args.vocab_size * args.dim)
    return args.param_count() * size, per_token * size


def weights_folder(work: Path, config: str, dtype: str, layout: str) -> Path:
    return work / (f"{config}-{dtype}" if layout == "hf" else f"{config}-{dtype}-{layout}")


def ensure_weights(config: str, dtype: str, work: Path, layout: str = "hf") -> Path:
    """Random checkpoint (seed 0) for (config, dtype, layout) in ``work``, written once and reused."""
    from llamahub.model.writer import random_state_dict, write_hf, write_meta

    args, folder = CONFIGS[config], weights_folder(work, config, dtype, layout)
    stamp = {"config": config, "dtype": dtype, "seed": SEED, "args": args.as_dict(), "layout": layout}
    marker = folder / "bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return folder
    print(f"writing {config} {dtype} {layout} weights to {folder}", file=sys.stderr)
    state = random_state_dict(args, seed=SEED, dtype=DTYPES[dtype])
    if layout == "hf":
        write_hf(folder, args, state)
    else:
        write_meta(folder, args, state, shards=int(layout.removeprefix("meta")))
    marker.write_text(json.dumps(stamp))
    return folder


def prompt_ids(vocab: int) -> list[int]:
    gen = torch.Generator().manual_seed(SEED)
    return torch.randint(0, vocab, (PROMPT_LEN,), generator=gen).tolist()


def llamahub_loader() -> Loader:
    from llamahub_cpu.engine import build_decoder
    from llamahub_cpu.kernels import kernel

    from llamahub.model.checkpoint import open_checkpoint
    from llamahub.model.generation import Sampling, generate_ids

    # Loading the decode kernel's shared library is an import (once per process, ~0.06 s): it
    # happens here, with the other imports, not inside the timed load.
    built = kernel()
    how = "llamahub_cpu.engine.build_decoder" + ("" if not isinstance(built, str) else f" (aten: {built})")

    def load(folder: Path, dtype: str, threads: int, prompt: list[int]) -> tuple[Run, float, float, str]:
        t0 = time.perf_counter()
        torch.set_num_threads(threads)
        decoder = build_decoder(open_checkpoint(folder).reader(), dtype)
        t1 = time.perf_counter()
        with torch.inference_mode():
            decoder(torch.tensor([prompt[:1]]), 0)
        t2 = time.perf_counter()

        def run() -> tuple[float, list[float], list[int]]:
            stamps, tokens = [], []
            start = time.perf_counter()
            for step in generate_ids(decoder, [prompt], NEW_TOKENS, Sampling(temperature=0), frozenset()):
                stamps.append(time.perf_counter())
                tokens.append(int(step[0] or 0))
            return start, stamps, tokens
        return run, t1 - t0, t2 - t1, how
    return load


def transformers_loader() -> Loader:
    from transformers import LlamaForCausalLM, LogitsProcessor, LogitsProcessorList
    from transformers.utils import logging

    logging.disable_progress_bar()

    class Stamp(LogitsProcessor):
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            self.times.append(time.perf_counter())
            return scores

    def load(folder: Path, dtype: str, threads: int, prompt: list[int]) -> tuple[Run, float, float, str]:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        model = LlamaForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype]).eval()
        t1 = time.perf_counter()
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            model(ids[:, :1])
        t2 = time.perf_counter()
        model.generation_config.eos_token_id = None

        def run() -> tuple[float, list[float], list[int]]:
            stamp = Stamp()
            start = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, eos_token_id=None,
                                 pad_token_id=0, logits_processor=LogitsProcessorList([stamp]))
            return start, stamp.times, out[0, PROMPT_LEN:].tolist()
        return run, t1 - t0, t2 - t1, f"transformers {importlib.metadata.version('transformers')} eager"
    return load


def rss_mib(field: str = "VmRSS") -> float:
    """Resident set size of this process (VmRSS: now; VmHWM: peak since exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def timed_decode(run: Callable[[], tuple[float, list[float], list[int]]], warmup: int, runs: int,
                 engine: str) -> dict[str, Any]:
    """Decode tok/s and prefill seconds over ``runs`` calls of ``run`` after ``warmup`` ones; ``run``
    returns (start time, a time stamp per new token, the tokens)."""
    decode, prefill, tokens = [], [], []
    for i in range(warmup + runs):
        start, stamps, tokens = run()
        if len(stamps) != NEW_TOKENS:
            raise RuntimeError(f"{engine} produced {len(stamps)} tokens, expected {NEW_TOKENS}")
        if i >= warmup:
            decode.append((NEW_TOKENS - 1) / (stamps[-1] - stamps[0]))
            prefill.append(stamps[0] - start)
    return {"decode_tok_s": stats(decode), "prefill_s": stats(prefill), "tokens": tokens}


def child(opts: argparse.Namespace) -> dict[str, Any]:
    """One process: import, warm the page cache, load, then (unless load-only) decode."""
    loader = (llamahub_loader if opts.engine == "llamahub" else transformers_loader)()
    # Importing torch (and transformers) leaves ~170k young objects; Python's first full
    # collection of them (~75 ms here) would land in whatever allocates next. It belongs to the
    # imports, so pay it here, before anything is timed, for both engines alike.
    gc.collect()
    rss_imports = rss_mib()
    folder = weights_folder(opts.work, opts.config, opts.dtype, opts.layout)
    warm(folder)
    prompt = prompt_ids(CONFIGS[opts.config].vocab_size)
    run, load_s, first_s, impl = loader(folder, opts.dtype, opts.threads, prompt)
    out: dict[str, Any] = {"impl": impl, "load_s": load_s, "first_forward_s": first_s,
                           "rss_after_imports_mib": rss_imports, "threads_used": torch.get_num_threads()}
    if opts.child == "measure":
        out |= timed_decode(run, opts.warmup, opts.runs, opts.engine)
    # VmHWM, not ru_maxrss: after fork+exec ru_maxrss still carries the parent's peak.
    out["peak_rss_mib"] = rss_mib("VmHWM")
    return out


def spawn(args: list[str], threads: int) -> dict[str, Any]:
    """Run ``args`` (a script and its options) in a fresh Python; return its JSON result."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, *args], env=env, stdout=subprocess.PIPE, text=True, check=True)
    lines = proc.stdout.splitlines()
    found = [ln.removeprefix(MARK) for ln in lines if ln.startswith(MARK)] or lines[-1:]
    return json.loads(found[-1])


def machine_info() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "")
    git = subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "nproc": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": importlib.metadata.version("transformers"),
            "git": git, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def measure(opts: argparse.Namespace, config: str, dtype: str, engine: str,
            memory: dict[str, Any], reading: dict[str, Any]) -> dict[str, Any]:
    """Measure one (config, dtype, engine) in fresh processes and derive the ratios."""
    loadavg = os.getloadavg()[0]  # > ~0.5 before a run means another process shares the cores
    base = [str(Path(__file__)), "--config", config, "--dtype", dtype, "--engine", engine,
            "--threads", str(opts.threads), "--work", str(opts.work), "--layout", opts.layout]
    rec = spawn([*base, "--child", "measure", "--runs", str(opts.runs), "--warmup", str(opts.warmup)],
                opts.threads)
    loads = [rec] + [spawn([*base, "--child", "load"], opts.threads) for _ in range(opts.load_runs - 1)]
    total, per_token = weight_bytes(CONFIGS[config], dtype)
    bandwidth = memory["copy_GBps"]["median"] * 1e9
    ceiling = bandwidth / per_token
    load = stats([r["load_s"] for r in loads])
    read_s = reading["seconds"]["median"]
    return {
        "config": config, "dtype": dtype, "engine": engine, "layout": opts.layout, "impl": rec["impl"],
        "threads": opts.threads,
        "batch": 1, "prompt_tokens": PROMPT_LEN, "new_tokens": NEW_TOKENS,
        "runs": opts.runs, "warmup": opts.warmup, "params": CONFIGS[config].param_count(),
        "decode_tok_s": rec["decode_tok_s"], "prefill_s": rec["prefill_s"],
        "load_s": load | {"processes": len(loads)},
        "first_forward_s": stats([r["first_forward_s"] for r in loads]),
        "read_once_s": read_s, "file_bytes": reading["bytes"],
        "load_over_read_once": load["median"] / read_s,
        "load_first_forward_over_read_once":
            (load["median"] + statistics.median(r["first_forward_s"] for r in loads)) / read_s,
        "peak_rss_mib": rec["peak_rss_mib"], "rss_after_imports_mib": rec["rss_after_imports_mib"],
        "load_only_peak_rss_mib": [r["peak_rss_mib"] for r in loads[1:]],
        "working_overhead_mib": WORKING_MIB,
        "rss_over_weights":
            (rec["peak_rss_mib"] - rec["rss_after_imports_mib"] - WORKING_MIB) * 2**20 / total,
        "weight_bytes": total, "bytes_per_token": per_token,
        "copy_GBps": memory["copy_GBps"], "sum_GBps": memory["sum_GBps"]["median"],
        "ceiling_tok_s": ceiling, "fraction_of_ceiling": rec["decode_tok_s"]["median"] / ceiling,
        "loadavg_before": loadavg, "tokens": rec["tokens"],
    }


def drive(opts: argparse.Namespace) -> None:
    exe = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    command = shlex.join([exe, *sys.argv])
    machine = machine_info()
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    layouts = opts.layout.split(",")
    for config in opts.config.split(","):
        for dtype in opts.dtype.split(","):
            for layout in layouts:
                opts.layout = layout
                folder = ensure_weights(config, dtype, opts.work, layout)
                bw = spawn([str(HERE / "bandwidth.py"), "--threads", str(opts.threads), "--size-mib",
                            str(opts.bandwidth_mib), "--read-once", str(folder)], opts.threads)
                for engine in opts.engine.split(","):
                    if engine == "transformers" and layout != "hf":
                        continue  # transformers reads only Hugging Face folders
                    rec = measure(opts, config, dtype, engine, bw["memory"], bw["read_once"])
                    rec |= {"machine": machine, "command": command}
                    with opts.out.open("a") as f:
                        f.write(json.dumps(rec) + "\n")
                    print(f"{config} {dtype} {layout} {engine}: {rec['decode_tok_s']['median']:.1f} tok/s "
                          f"({rec['fraction_of_ceiling']:.0%} of ceiling), load "
                          f"{rec['load_s']['median']:.3f} s, peak RSS {rec['peak_rss_mib']:.0f} MiB "
                          f"({rec['rss_over_weights']:.2f}x weights)", file=sys.stderr)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--all", action="store_true", help="every config x dtype x engine not given below")
    p.add_argument("--config", help=f"comma-separated, of {', '.join(CONFIGS)} (--all: 110m,1b)")
    p.add_argument("--dtype", help="comma-separated, of fp32, bf16 (--all: both)")
    p.add_argument("--engine", help="comma-separated, of llamahub, transformers (--all: both)")
    p.add_argument("--layout", default="hf", help=f"comma-separated, of {', '.join(LAYOUTS)} (--all: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3, help="timed generations per process")
    p.add_argument("--warmup", type=int, default=1, help="untimed generations first")
    p.add_argument("--load-runs", type=int, default=3, help="fresh processes timing the load")
    p.add_argument("--bandwidth-mib", type=int, default=1024, help="copy-bandwidth tensor size")
    p.add_argument("--work", type=Path, default=HERE / "work", help="where the weights are kept")
    p.add_argument("--out", type=Path, default=HERE / "results" / "cpu.jsonl", help="JSON lines, appended")
    p.add_argument("--child", choices=("measure", "load"), help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.all:
        opts.config = opts.config or "110m,1b"
        opts.dtype = opts.dtype or ",".join(DTYPES)
        opts.engine = opts.engine or ",".join(ENGINES)
        opts.layout = opts.layout if opts.layout != "hf" else ",".join(LAYOUTS)
    if not (opts.config and opts.dtype and opts.engine):
        p.error("give --all, or all of --config, --dtype and --engine")
    for name, allowed in (("config", CONFIGS), ("dtype", DTYPES), ("engine", ENGINES), ("layout", LAYOUTS)):
        bad = set(getattr(opts, name).split(",")) - set(allowed)
        if bad:
            p.error(f"unknown --{name} {', '.join(sorted(bad))}; choose from {', '.join(allowed)}")
    opts.work = opts.work.resolve()
    return opts


def main() -> None:
    opts = parse()
    if opts.child:
        print(MARK + json.dumps(child(opts)), flush=True)
    else:
        drive(opts)


if __name__ == "__main__":
    main()
