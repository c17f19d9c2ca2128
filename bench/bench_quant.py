"""CPU weight-only quantization benchmark: llamahub fp32/bf16/int8/int4 vs transformers fp32/bf16 and
llama.cpp f32/f16/q8_0/q4_0, on the same random weights (seed 0), in one run.

Per (config, engine), in its own process, after the page cache is warm:

- decode: batch 1, greedy, 32-token prompt (seed 0), 128 new tokens, no EOS stop, --threads;
  tok/s = 127 / (t[token 128] - t[token 1]), median (min-max) of --runs after --warmup
  (the method of /work/shared/reference/cpu-baselines.md);
- prefill: one forward over a fixed 512-token prompt, tok/s = 512 / seconds (median of --runs);
  llamahub and transformers compute the logits of every position, llama.cpp of the last only
  (what each gives its users);
- accuracy: next-token logits at each of the same 512 positions; mean KL(fp32 || engine) and
  top-1 agreement, both against llamahub fp32 (llama.cpp f32 next to it shows the engines agree);
  llamahub int8/int4 also teacher-forced one token at a time over the first 128 positions
  (decode_kl_mean, decode_top1_agreement: the decode kernels round activations, prefill does not);
- bandwidth: bytes read per decoded token (all matrices incl. the head, once; not the embedding
  lookup or the KV cache) x tok/s, as a fraction of the ceiling: the higher of the copy bandwidth
  (bench/bandwidth.py) and the best GB/s llama.cpp reaches in this run;
- load: llamahub int8/int4 map their cached artifact (made once beforehand, timed as make_s):
  load + first 1-token forward (which faults the mapped pages in), over the time to read that
  file once from a warm cache, timed by the driver just before it starts the child
  (load_over_read_once; the issue's bound is 1.3).

    python bench/bench_quant.py --config 110m,1b --out bench/results/quant.jsonl     # the lead's run
    python bench/bench_quant.py --config tiny --runs 1 --warmup 0 --out /tmp/quant-tiny.jsonl   # smoke

GGUFs come from llamahub's converter (f32/f16/q8_0) and llama.cpp's quantizer (q4_0), via the
llamacpp backend's derived cache, from the same fp32 safetensors (bench_llamacpp.artifacts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from bandwidth import memory_bandwidth, read_once, stats  # noqa: E402
from bench_cpu import (  # noqa: E402
    CONFIGS,
    MARK,
    NEW_TOKENS,
    machine_info,
    prompt_ids,
    rss_mib,
    timed_decode,
    transformers_loader,
)
from bench_llamacpp import CONFIGS_CTX, artifacts, run_direct  # noqa: E402

ENGINES = ("llamahub:fp32", "llamahub:bf16", "llamahub:int8", "llamahub:int4", "transformers:fp32",
           "transformers:bf16", "llama.cpp:f32", "llama.cpp:f16", "llama.cpp:q8_0", "llama.cpp:q4_0")
PREFILL, SEQUENCE_SEED = 512, 1
DECODE_POSITIONS = 128  # int8/int4 decode (integer activations) is also scored one token at a time
REFERENCE = "llamahub:fp32"


def sequence(vocab: int) -> list[int]:
    gen = torch.Generator().manual_seed(SEQUENCE_SEED)
    return torch.randint(0, vocab, (PREFILL,), generator=gen).tolist()


# --- llamahub ---------------------------------------------------------------------------------


def llamahub_model(work: Path, config: str, dtype: str) -> tuple[Any, dict[str, Any]]:
    from llamahub_cpu.engine import build_decoder, build_quant_decoder
    from llamahub_cpu.quant import SCHEMES

    arts, _ = artifacts(work, config)
    from llamahub.model.checkpoint import open_checkpoint

    reader = open_checkpoint(arts.folder).reader()
    if dtype in SCHEMES:
        model, cache = build_quant_decoder(arts, reader, dtype)
        return model, {"kernel": model.kernel, "artifact": cache["path"], "built": cache["built"]}
    model = build_decoder(reader, dtype)
    return model, {"kernel": model.kernel}


def llamahub_child(opts: argparse.Namespace, dtype: str) -> dict[str, Any]:
    from llamahub_cpu.kernels import kernel, qkernel

    from llamahub.model.generation import Sampling, generate_ids

    kernel(), qkernel()  # shared libraries are imports: not in the timed load
    artifacts(opts.work, opts.config)  # the weights exist (made by the driver)
    prompt = prompt_ids(CONFIGS[opts.config].vocab_size)
    t = time.perf_counter()
    model, info = llamahub_model(opts.work, opts.config, dtype)
    with torch.inference_mode():  # the first token faults in the mapped pages: part of the load
        model(torch.tensor([prompt[:1]]), 0)
    load_s = time.perf_counter() - t

    def run() -> tuple[float, list[float], list[int]]:
        stamps, tokens = [], []
        start = time.perf_counter()
        for step in generate_ids(model, [prompt], NEW_TOKENS, Sampling(temperature=0), frozenset()):
            stamps.append(time.perf_counter())
            tokens.append(int(step[0] or 0))
        return start, stamps, tokens

    seq = torch.tensor([sequence(CONFIGS[opts.config].vocab_size)])

    def forward() -> torch.Tensor:
        model.reset_cache()
        return model(seq, 0)[0]

    with torch.inference_mode():
        out = timed_decode(run, opts.warmup, opts.runs, opts.engine)
        out |= prefill_and_logits(opts, forward)
        if dtype in ("int8", "int4"):  # the decode kernels round activations: score them too
            model.reset_cache()
            steps = [model(seq[:, i:i + 1], i)[0] for i in range(DECODE_POSITIONS)]
            torch.save(torch.cat(steps).float(), logits_path(opts.work, opts.config, opts.engine + "-decode"))
    return out | info | {"load_s": load_s}


def prefill_and_logits(opts: argparse.Namespace, forward: Any) -> dict[str, Any]:
    """Time ``forward`` (512 positions → logits [512, vocab]) and save its last result's logits."""
    seconds, logits = [], None
    for i in range(opts.warmup + opts.runs):
        t = time.perf_counter()
        logits = forward()
        if i >= opts.warmup:
            seconds.append(time.perf_counter() - t)
    assert logits is not None
    path = logits_path(opts.work, opts.config, opts.engine)
    torch.save(logits.float().contiguous(), path)
    return {"prefill_tok_s": stats([PREFILL / s for s in seconds]), "logits": str(path)}


def logits_path(work: Path, config: str, engine: str) -> Path:
    folder = work / "logits"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{config}-{engine.replace(':', '-')}.pt"


# --- transformers and llama.cpp ------------------------------------------------------------------


def transformers_child(opts: argparse.Namespace, dtype: str) -> dict[str, Any]:
    from bench_cpu import DTYPES
    from transformers import LlamaForCausalLM

    folder, _ = artifacts(opts.work, opts.config)
    run, load_s, _, impl = transformers_loader()(folder.folder, dtype, opts.threads,
                                                 prompt_ids(CONFIGS[opts.config].vocab_size))
    model = LlamaForCausalLM.from_pretrained(folder.folder, dtype=DTYPES[dtype]).eval()
    seq = torch.tensor([sequence(CONFIGS[opts.config].vocab_size)])
    with torch.inference_mode():
        out = timed_decode(run, opts.warmup, opts.runs, opts.engine)
        out |= prefill_and_logits(opts, lambda: model(seq).logits[0])
    return out | {"kernel": impl, "load_s": load_s}


def gguf_path(work: Path, config: str, quant: str) -> Path:
    from llamahub_llamacpp.derive import derived_gguf

    arts, variant = artifacts(work, config)
    return derived_gguf(arts, variant, quant, threads=2)


def llamacpp_child(opts: argparse.Namespace, quant: str) -> dict[str, Any]:
    import llama_cpp
    import numpy as np

    path = gguf_path(opts.work, opts.config, quant)
    path.read_bytes()  # warm the page cache
    t = time.perf_counter()
    run = run_direct(path, prompt_ids(CONFIGS[opts.config].vocab_size), opts.threads)
    load_s = time.perf_counter() - t
    out = timed_decode(run, opts.warmup, opts.runs, opts.engine)
    seq = sequence(CONFIGS[opts.config].vocab_size)
    ctx = max(CONFIGS_CTX, PREFILL + 16)
    fast = llama_cpp.Llama(model_path=str(path), n_ctx=ctx, n_batch=PREFILL, n_ubatch=PREFILL,
                           n_threads=opts.threads, n_threads_batch=opts.threads, verbose=False)
    seconds = []
    for i in range(opts.warmup + opts.runs):
        fast.reset()
        t = time.perf_counter()
        fast.eval(seq)
        if i >= opts.warmup:
            seconds.append(time.perf_counter() - t)
    del fast
    every = llama_cpp.Llama(model_path=str(path), n_ctx=ctx, n_batch=PREFILL, n_ubatch=PREFILL,
                            n_threads=opts.threads, n_threads_batch=opts.threads, logits_all=True,
                            verbose=False)
    every.eval(seq)
    logits = torch.from_numpy(np.array(every.scores[:PREFILL], dtype=np.float32))
    torch.save(logits, logits_path(opts.work, opts.config, opts.engine))
    return out | {"prefill_tok_s": stats([PREFILL / s for s in seconds]), "load_s": load_s,
                  "kernel": f"llama-cpp-python {llama_cpp.__version__}", "gguf": str(path),
                  "logits": str(logits_path(opts.work, opts.config, opts.engine))}


def child(opts: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(opts.threads)
    kind, dtype = opts.engine.split(":")
    runner = {"llamahub": llamahub_child, "transformers": transformers_child, "llama.cpp": llamacpp_child}
    out = runner[kind](opts, dtype)
    return out | {"peak_rss_mib": rss_mib("VmHWM"), "loadavg_1m": os.getloadavg()[0]}


# --- the driver -----------------------------------------------------------------------------------


def bytes_per_token(work: Path, config: str, engine: str) -> int:
    """Weight bytes one decoded token reads: every matrix, the head included, not the embedding."""
    import llamahub_cpu

    kind, dtype = engine.split(":")
    args = CONFIGS[config]
    emb = args.vocab_size * args.dim
    if kind == "llama.cpp":
        from gguf import GGUFReader

        reader = GGUFReader(gguf_path(work, config, dtype))
        sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
        skip = 0 if "output.weight" not in sizes else sizes["token_embd.weight"]
        return sum(sizes.values()) - skip
    if dtype in ("fp32", "bf16"):
        size = 4 if dtype == "fp32" else 2
        return (args.param_count() - (0 if args.tie_embeddings else emb)) * size
    _, variant = artifacts(work, config)
    return llamahub_cpu.weight_bytes(variant, dtype) - emb * 2  # without the bf16 embedding


def spawn(opts: argparse.Namespace, config: str, engine: str) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", "--config", config, "--engine", engine, "--work",
            str(opts.work), "--threads", str(opts.threads), "--runs", str(opts.runs), "--warmup",
            str(opts.warmup)]
    env = os.environ | {"OMP_NUM_THREADS": str(opts.threads), "MKL_NUM_THREADS": str(opts.threads)}
    proc = subprocess.run(args, stdout=subprocess.PIPE, text=True, check=True, env=env)
    found = [ln.removeprefix(MARK) for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    return json.loads(found[-1])


def prepare(opts: argparse.Namespace, config: str, engines: list[str]) -> dict[str, dict[str, Any]]:
    """Make the GGUFs and the quantized artifacts before anything is timed: their make times and,
    for llamahub int8/int4, the artifact's path."""
    made: dict[str, dict[str, Any]] = {}
    for engine in engines:
        kind, dtype = engine.split(":")
        t = time.perf_counter()
        info: dict[str, Any] = {}
        if kind == "llama.cpp":
            gguf_path(opts.work, config, dtype)
        elif kind == "llamahub" and dtype in ("int8", "int4"):
            info = llamahub_model(opts.work, config, dtype)[1]
        made[engine] = {"make_s": time.perf_counter() - t, "artifact": info.get("artifact")}
    return made


def spawn_loading(opts: argparse.Namespace, config: str, engine: str, artifact: str | None) -> dict[str, Any]:
    """``spawn``; for an engine that maps a cached artifact, first time one read of that file right
    before the child loads it, so that both find the page cache in the same state. (This VM's
    DAMON reclaims pages idle for a minute: the artifact made in ``prepare`` may be on disk again.)"""
    if artifact is None:
        return spawn(opts, config, engine)
    read = read_once(Path(artifact).parent)
    seconds = read["seconds"]["median"]
    rec = spawn(opts, config, engine)
    return rec | {"artifact_read_once_s": seconds, "artifact_bytes": read["bytes"],
                  "load_over_read_once": rec["load_s"] / seconds}


def accuracy(work: Path, config: str, engine: str) -> dict[str, float]:
    """KL and top-1 against the reference over the 512 positions (prefill), and for llamahub
    int8/int4 also over the first DECODE_POSITIONS decoded one at a time (``decode_`` keys)."""
    ref = torch.load(logits_path(work, config, REFERENCE)).double()
    out = _scores(ref, torch.load(logits_path(work, config, engine)).double())
    decoded = logits_path(work, config, engine + "-decode")
    if decoded.is_file():
        got = torch.load(decoded).double()
        out |= {f"decode_{k}": v for k, v in _scores(ref[:got.shape[0]], got).items()}
    return out


def _scores(ref: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    p_log, q_log = ref.log_softmax(-1), got.log_softmax(-1)
    kl = (p_log.exp() * (p_log - q_log)).sum(-1)
    return {"kl_mean": kl.mean().item(), "kl_max": kl.max().item(),
            "top1_agreement": (ref.argmax(-1) == got.argmax(-1)).double().mean().item()}


def drive(opts: argparse.Namespace) -> None:
    machine = machine_info()
    command = " ".join([os.path.relpath(sys.executable), *sys.argv])
    engines = opts.engines.split(",")
    memory = memory_bandwidth(opts.threads, opts.bandwidth_mib)
    rows: list[dict[str, Any]] = []
    for config in opts.config.split(","):
        made = prepare(opts, config, engines)
        recs = {e: spawn_loading(opts, config, e, made[e]["artifact"]) for e in engines}
        for e, rec in recs.items():
            rec["GBps"] = rec["decode_tok_s"]["median"] * bytes_per_token(opts.work, config, e) / 1e9
        llama_best = max((r["GBps"] for e, r in recs.items() if e.startswith("llama.cpp")), default=0.0)
        ceiling = max(memory["copy_GBps"]["median"], llama_best)
        for e, rec in recs.items():
            rec |= {"config": config, "engine": e, "threads": opts.threads, "make_s": made[e]["make_s"],
                    "bytes_per_token": bytes_per_token(opts.work, config, e), "ceiling_GBps": ceiling,
                    "fraction_of_ceiling": rec["GBps"] / ceiling, "copy_GBps": memory["copy_GBps"],
                    "machine": machine, "command": command}
            if REFERENCE in recs:
                rec |= accuracy(opts.work, config, e)
            rows.append(rec)
            print(f"{config} {e:18} decode {rec['decode_tok_s']['median']:7.1f} tok/s "
                  f"({rec['fraction_of_ceiling']:4.0%} of {ceiling:.1f} GB/s)  prefill "
                  f"{rec['prefill_tok_s']['median']:8.1f} tok/s  KL {rec.get('kl_mean', float('nan')):.5f}  "
                  f"top-1 {rec.get('top1_agreement', float('nan')):.3f}"
                  + (f"  decode KL {rec['decode_kl_mean']:.5f} top-1 {rec['decode_top1_agreement']:.3f}"
                     if "decode_kl_mean" in rec else ""), file=sys.stderr)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    with opts.out.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="110m,1b", help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated engine:dtype pairs")
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--bandwidth-mib", type=int, default=1024)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("BENCH_WORK", "/tmp/llamahub-bench")))
    p.add_argument("--out", type=Path, default=HERE / "results" / "quant.jsonl")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.child:
        print(MARK + json.dumps(child(opts)), flush=True)
    else:
        drive(opts)


if __name__ == "__main__":
    main()
