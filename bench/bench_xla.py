"""The tpu backend on XLA's CPU device: compile time and steady-state decode tok/s.

Same weights and method as bench_cpu/bench_tp (a 2-shard Meta folder of random weights, seed 0;
batch 1, greedy, a 32-token prompt, 128 new tokens with no stop). Each (config, dtype, devices)
runs in a fresh process of the XLA venv, with a fresh persistent compilation cache unless
--warm-cache; it records:

- ``load_s``: llamahub.load() to a model on the device (weights transferred, sharded);
- ``first_generation_s`` and ``compile_s``: the first generation, and the part of it torch_xla's
  metrics count as compiling (the prefill bucket, the decode step, the cache set-up);
- ``compiles_second_generation``: programs the second, untimed generation compiled (seen: 1 in
  bf16 on 2 devices, where the prefill compiles once more; cause not pinned down yet);
- ``decode_tok_s``: 127 / (t[token 128] - t[token 1]) for --runs timed generations after those,
  median (min-max); ``compiles_after_warmup``: programs compiled by those runs (must be 0).

An honest figure: XLA:CPU is not built for speed; on a TPU the same script measures the TPU.

    PJRT_DEVICE=CPU CPU_NUM_DEVICES=2 .venv-xla/bin/python bench/bench_xla.py \
        --config 110m --dtype fp32,bf16 --devices 1,2 --out bench/results/xla.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_cpu import CONFIGS, NEW_TOKENS, prompt_ids
from bench_tp import ensure_folder


def measure(folder: Path, config: str, dtype: str, devices: int, runs: int) -> dict[str, Any]:
    """In this process: load, the first (compiling) generation, then timed ones."""
    from llamahub_tpu.device import compile_count, compile_seconds

    import llamahub
    from llamahub.model.generation import Sampling

    started = time.perf_counter()
    model = llamahub.load(folder, device="xla", dtype=dtype, devices=devices)
    load_s = time.perf_counter() - started
    prompt = prompt_ids(CONFIGS[config].vocab_size)

    def generation() -> list[float]:
        stamps = [time.perf_counter()]
        for _ in model.generator([prompt], NEW_TOKENS, Sampling(temperature=0), frozenset()):
            stamps.append(time.perf_counter())
        return stamps

    before = compile_seconds()
    first = generation()
    compile_s, after_first = compile_seconds() - before, compile_count()
    generation()  # under SPMD a bucket's prefill may compile once more on its second use
    warm = compile_count()
    rates, prefills = [], []
    for _ in range(runs):
        stamps = generation()
        rates.append((len(stamps) - 2) / (stamps[-1] - stamps[1]))
        prefills.append(stamps[1] - stamps[0])
    return {"load_s": load_s, "first_generation_s": first[-1] - first[0], "compile_s": compile_s,
            "compiles_first_generation": after_first, "compiles_second_generation": warm - after_first,
            "compiles_after_warmup": compile_count() - warm,
            "decode_tok_s": _stats(rates), "prefill_s": _stats(prefills), "info": model.info}


def machine_info() -> dict[str, Any]:
    import datetime
    import importlib.metadata
    import platform

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "")
    git = subprocess.run(["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "nproc": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "torch": importlib.metadata.version("torch"),
            "torch_xla": importlib.metadata.version("torch-xla"),
            "git": git, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def child(opts: argparse.Namespace) -> None:
    folder = ensure_folder(opts.config, opts.dtype, opts.work)
    out = measure(folder, opts.config, opts.dtype, opts.devices, opts.runs)
    print(json.dumps(out | {"loadavg_1m": os.getloadavg()[0]}, default=str))


def run_one(opts: argparse.Namespace, config: str, dtype: str, devices: int) -> dict[str, Any]:
    ensure_folder(config, dtype, opts.work)  # written once, outside the timed process
    with tempfile.TemporaryDirectory() as home:
        env = os.environ | {"PJRT_DEVICE": os.environ.get("PJRT_DEVICE", "CPU"),
                            "CPU_NUM_DEVICES": str(max(devices, int(os.environ.get("CPU_NUM_DEVICES", "1")))),
                            "LLAMAHUB_PROGRESS": "0"}
        if not opts.warm_cache:
            env["LLAMAHUB_HOME"] = home
        cmd = [sys.executable, __file__, "--child", "--config", config, "--dtype", dtype,
               "--devices", str(devices), "--runs", str(opts.runs), "--work", str(opts.work)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{config} {dtype} devices={devices} failed:\n{done.stderr[-3000:]}")
    rec = json.loads(done.stdout.strip().splitlines()[-1])
    return {"config": config, "dtype": dtype, "devices": devices, "engine": "llamahub-tpu",
            "pjrt_device": rec["info"]["pjrt_device"], "batch": 1, "new_tokens": NEW_TOKENS,
            "runs": opts.runs, "params": CONFIGS[config].param_count(), **rec,
            "machine": machine_info(), "command": " ".join(sys.argv)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="tiny", help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--dtype", default="fp32", help="comma-separated, of fp32, bf16")
    p.add_argument("--devices", default="1", help="comma-separated device counts (SPMD above 1)")
    p.add_argument("--runs", type=int, default=3, help="timed generations after the first")
    p.add_argument("--work", type=Path, default=Path(__file__).parent / "work")
    p.add_argument("--warm-cache", action="store_true", help="keep the persistent compilation cache")
    p.add_argument("--out", type=Path, help="append one JSON line per measurement")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.child:
        opts.devices = int(opts.devices)
        return child(opts)
    for config in opts.config.split(","):
        for dtype in opts.dtype.split(","):
            for devices in (int(d) for d in opts.devices.split(",")):
                rec = run_one(opts, config, dtype, devices)
                line = json.dumps(rec, default=str)
                print(f"{config} {dtype} devices={devices}: load {rec['load_s']:.2f} s, first generation "
                      f"{rec['first_generation_s']:.1f} s (compiling {rec['compile_s']:.1f} s), "
                      f"decode {rec['decode_tok_s']['median']:.1f} tok/s, "
                      f"{rec['compiles_after_warmup']} compiles after warm-up")
                if opts.out:
                    with opts.out.open("a") as f:
                        f.write(line + "\n")


if __name__ == "__main__":
    main()
