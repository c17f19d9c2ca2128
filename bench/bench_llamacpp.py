"""llama.cpp decode benchmark: the ``llamacpp`` backend vs llama.cpp driven directly, same file, same run.

Method of /work/shared/reference/cpu-baselines.md: batch 1, greedy, 32-token prompt (ids drawn
with seed 0), 128 new tokens, no EOS stop, 2 threads; decode tok/s = 127 / (t[token 128] -
t[token 1]); median (min-max) of --runs after --warmup. Each (config, quant, engine) runs in its
own process on the same GGUF file:

- ``llamahub``: ``LlamaCppBackend().load()`` and the model's own generator (our sampler chain
  over llama-cpp-python's C API), as ``llamahub.load(..., backend="llamacpp")`` runs it;
- ``llama.cpp``: ``llama_cpp.Llama(model_path=...)`` and its ``generate()`` with top_k=1 (what a
  llama-cpp-python user writes), with ``flash_attn=True``: the backend keeps llama.cpp's default
  (flash attention "auto", which is on for a CPU), while ``Llama()`` turns it off by default, and
  the two attentions are different computations (other speed, other rounding: the greedy tokens
  part). With the same setting both engines compute the same tokens, which the run checks. On a
  CPU with AMX both run without llama.cpp's "extra" (AMX) weight buffers, which crash
  llama-cpp-python 0.3.36 there (``llamahub_llamacpp.runtime.has_amx``).

- ``c-loop``: the floor under both: llama.cpp's C API in the plainest Python loop (one
  ``llama_decode`` and one ``llama_sampler_sample`` per token, a greedy sampler, the backend's
  context settings), so that each engine's own Python cost per token shows (the wrapper cost is
  reported against ``llama.cpp``, as the issue asks, and against this floor).

The export step is timed too (our converter for f16/q8_0, llama.cpp's quantizer for q4_0 from
the f16 file): seconds per GB written.

    python bench/bench_llamacpp.py --out bench/results/llamacpp.jsonl                 # 110m and 1b
    python bench/bench_llamacpp.py --config tiny --runs 1 --out /tmp/llamacpp-tiny.jsonl   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_cpu import CONFIGS, MARK, NEW_TOKENS, ensure_weights, prompt_ids, rss_mib, timed_decode  # noqa: E402

QUANTS = ("f16", "q8_0", "q4_0")
ENGINES = ("llamahub", "llama.cpp", "c-loop")
CONFIGS_CTX = 256  # the context both engines get: prompt + new tokens fit


def artifacts(work: Path, config: str) -> tuple[Any, Any]:
    """The HF folder of ``config`` (fp32, seed 0) with a synthetic tiktoken tokenizer, as Artifacts."""
    from llamahub.model.tokenizer import write_tiktoken_ranks
    from llamahub.reference import folder_artifacts, identify_folder
    from llamahub.registry import Registry

    folder = ensure_weights(config, "fp32", work)
    if not (folder / "tokenizer.model").is_file():
        write_tiktoken_ranks(folder / "tokenizer.model", CONFIGS[config].vocab_size - 256)
    return folder_artifacts(folder, work / "cache"), identify_folder(folder, None, Registry([]))


def export(work: Path, config: str) -> list[dict[str, Any]]:
    """Make every quant's GGUF afresh, timing each (q4_0 from the f16 file)."""
    from llamahub_llamacpp.derive import derived_gguf

    arts, v = artifacts(work, config)
    shutil.rmtree(arts.derived_root, ignore_errors=True)
    rows = []
    for quant in QUANTS:
        t = time.perf_counter()
        path = derived_gguf(arts, v, quant, threads=2)
        seconds = time.perf_counter() - t
        size = path.stat().st_size
        rows.append({"kind": "export", "config": config, "quant": quant, "seconds": seconds,
                     "bytes": size, "s_per_gb": seconds / (size / 1e9), "path": str(path)})
        print(f"export {config} {quant}: {size / 1e6:.1f} MB in {seconds:.2f} s", file=sys.stderr)
    return rows


def run_llamahub(path: Path, work: Path, config: str, prompt: list[int], threads: int) -> Any:
    from llamahub_llamacpp import LlamaCppBackend

    from llamahub.interfaces import LoadOptions
    from llamahub.model.generation import Sampling

    arts, v = artifacts(work, config)
    quant = path.stem.rsplit("-", 1)[-1]
    model = LlamaCppBackend().load(arts, v, LoadOptions(backend="llamacpp", threads=threads,
                                                        extra={"quant": quant}))
    assert Path(model.info["gguf"]) == path, (model.info["gguf"], path)

    def run() -> tuple[float, list[float], list[int]]:
        stamps, tokens = [], []
        start = time.perf_counter()
        for step in model.generator([prompt], NEW_TOKENS, Sampling(temperature=0), frozenset()):
            stamps.append(time.perf_counter())
            tokens.append(int(step[0] or 0))
        return start, stamps, tokens
    return run


def run_direct(path: Path, prompt: list[int], threads: int) -> Any:
    import llama_cpp
    from llama_cpp_server import turn_off_amx_buffers

    turn_off_amx_buffers()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=CONFIGS_CTX, n_threads=threads,
                          n_threads_batch=threads, flash_attn=True, verbose=False)

    def run() -> tuple[float, list[float], list[int]]:
        stamps, tokens = [], []
        llm.reset()
        start = time.perf_counter()
        for tok in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, reset=True):
            stamps.append(time.perf_counter())
            tokens.append(int(tok))
            if len(tokens) == NEW_TOKENS:
                break
        return start, stamps, tokens
    return run


def run_c_loop(path: Path, prompt: list[int], threads: int) -> Any:
    """Greedy decoding through llama.cpp's C API and nothing else (the backend's context settings:
    batch = min(context, 512), flash attention auto, no AMX buffers on an AMX CPU)."""
    from llamahub_llamacpp.runtime import has_amx, llama_lib

    lc = llama_lib()  # llama_cpp, initialised, its log lines sent to Python logging (not stderr)
    mparams = lc.llama_model_default_params()
    mparams.use_extra_bufts = not has_amx()
    model = lc.llama_model_load_from_file(str(path).encode(), mparams)
    cparams = lc.llama_context_default_params()
    cparams.n_ctx = CONFIGS_CTX
    cparams.n_batch = cparams.n_ubatch = min(CONFIGS_CTX, 512)
    cparams.n_threads = cparams.n_threads_batch = threads
    ctx = lc.llama_init_from_model(model, cparams)
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
    arr = (lc.llama_token * len(prompt))(*prompt)
    one = (lc.llama_token * 1)()
    step = lc.llama_batch_get_one(one, 1)

    def run() -> tuple[float, list[float], list[int]]:
        stamps, tokens = [], []
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        start = time.perf_counter()
        lc.llama_decode(ctx, lc.llama_batch_get_one(arr, len(prompt)))
        tok = lc.llama_sampler_sample(chain, ctx, -1)
        stamps.append(time.perf_counter())
        tokens.append(tok)
        for _ in range(NEW_TOKENS - 1):
            one[0] = tok
            lc.llama_decode(ctx, step)
            tok = lc.llama_sampler_sample(chain, ctx, -1)
            stamps.append(time.perf_counter())
            tokens.append(tok)
        return start, stamps, tokens
    return run


def child(opts: argparse.Namespace) -> dict[str, Any]:
    prompt = prompt_ids(CONFIGS[opts.config].vocab_size)
    path = Path(opts.gguf)
    path.read_bytes()  # warm the page cache
    t = time.perf_counter()
    if opts.engine == "llamahub":
        run = run_llamahub(path, opts.work, opts.config, prompt, opts.threads)
    elif opts.engine == "c-loop":
        run = run_c_loop(path, prompt, opts.threads)
    else:
        run = run_direct(path, prompt, opts.threads)
    load_s = time.perf_counter() - t
    timed = timed_decode(run, opts.warmup, opts.runs, opts.engine)
    return {"kind": "decode", "config": opts.config, "quant": path.stem.rsplit("-", 1)[-1],
            "engine": opts.engine, "threads": opts.threads, "load_s": load_s, **timed,
            "peak_rss_mib": rss_mib("VmHWM"), "loadavg_1m": os.getloadavg()[0]}


def spawn(opts: argparse.Namespace, gguf: str, engine: str) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", "--config", opts.config, "--gguf", gguf, "--engine", engine,
            "--work", str(opts.work), "--threads", str(opts.threads), "--runs", str(opts.runs),
            "--warmup", str(opts.warmup)]
    proc = subprocess.run(args, stdout=subprocess.PIPE, text=True, check=True)
    found = [ln.removeprefix(MARK) for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    return json.loads(found[-1])


def drive(opts: argparse.Namespace) -> None:
    rows: list[dict[str, Any]] = []
    for config in opts.config.split(","):
        opts_c = argparse.Namespace(**{**vars(opts), "config": config})
        made = export(opts.work, config)
        rows += made
        for row in made:
            pair = {e: spawn(opts_c, row["path"], e) for e in ENGINES}
            if len({str(pair[e]["tokens"]) for e in ENGINES}) > 1:
                print(f"warning: {config} {row['quant']}: the engines' greedy tokens differ: they do not "
                      "compute the same thing (settings?)", file=sys.stderr)
            ours, direct, floor = (pair[e]["decode_tok_s"]["median"] for e in ENGINES)
            for e in ENGINES:
                rows.append(pair[e] | {"wrapper_cost_pct": 100 * (direct - ours) / direct,
                                       "cost_vs_c_loop_pct": 100 * (floor - pair[e]["decode_tok_s"]["median"])
                                       / floor})
            print(f"{config} {row['quant']}: llamahub {ours:.1f} tok/s, llama.cpp {direct:.1f} tok/s "
                  f"(wrapper cost {100 * (direct - ours) / direct:+.1f}%), C loop {floor:.1f} tok/s",
                  file=sys.stderr)
    with open(opts.out, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="110m,1b", help="comma-separated: tiny, 110m, 1b")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("BENCH_WORK", "/tmp/llamahub-bench")))
    p.add_argument("--out", default="bench/results/llamacpp.jsonl")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--gguf", help=argparse.SUPPRESS)
    p.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.child:
        print(MARK + json.dumps(child(opts)), flush=True)
    else:
        drive(opts)


if __name__ == "__main__":
    main()
