"""Load test of ``llamahub serve`` on loopback: N concurrent streaming clients vs one alone.

Bounded: every client sends ``--requests`` completions of ``--tokens`` tokens (EOS ignored) and
the whole run stops after ``--timeout`` seconds. Per scenario: aggregate tok/s (completion tokens
/ wall time), p50/p99 time to first token and inter-token latency, errors. With llama-cpp-python
installed and ``--gguf FILE`` (the same weights as GGUF), the same clients run against
``python -m llama_cpp.server`` too.

    python bench/bench_serve.py --config 110m --dtype fp32 --out bench/results/serve.jsonl
    python bench/bench_serve.py --config tiny --tokens 16 --requests 1 --out /tmp/serve.jsonl  # smoke

Weights: bench_cpu.py's random checkpoints (``bench/work/<config>-<dtype>``) with the real Llama 2
tokenizer (``--tokenizer``, default ../shared/data/llama2-tokenizer.model) beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bench_cpu import CONFIGS, ensure_weights

HERE = Path(__file__).resolve().parent
TOKENIZER = HERE.parents[1] / "shared" / "data" / "llama2-tokenizer.model"
PROMPT = "Once upon a time, in a quiet valley high in the mountains, there lived a herd of llamas"
EOS = 2  # Llama 2's </s>: banned through logit_bias where a server has no ignore_eos


@dataclass
class Result:
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], url: str, log: Path, timeout: float = 600) -> subprocess.Popen:
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"{' '.join(cmd[:4])} exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start within {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def one_request(http: httpx.AsyncClient, url: str, model: str, tokens: int) -> Result:
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "logit_bias": {str(EOS): -100}}
    result, last = Result(), None
    started = time.perf_counter()
    try:
        async with http.stream("POST", f"{url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    result.error = str(chunk["error"])[:200]
                    return result
                if not chunk.get("choices") or not chunk["choices"][0].get("text"):
                    continue
                now = time.perf_counter()
                if last is None:
                    result.ttft = now - started
                else:
                    result.gaps.append(now - last)
                last = now
                result.tokens += 1
    except httpx.HTTPError as e:
        result.error = f"{type(e).__name__}: {e}"
    return result


async def scenario(url: str, model: str, clients: int, requests: int, tokens: int,
                   timeout: float) -> dict[str, Any]:
    async def client(http: httpx.AsyncClient) -> list[Result]:
        return [await one_request(http, url, model, tokens) for _ in range(requests)]

    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        started = time.perf_counter()
        try:
            done = await asyncio.wait_for(asyncio.gather(*(client(http) for _ in range(clients))), timeout)
        except TimeoutError:
            return {"clients": clients, "error": f"timed out after {timeout} s"}
        wall = time.perf_counter() - started
    results = [r for rs in done for r in rs]
    ttfts = [r.ttft for r in results if r.ttft is not None]
    gaps = [g for r in results for g in r.gaps]
    total = sum(r.tokens for r in results)
    return {"clients": clients, "requests": len(results), "tokens": total, "wall_s": round(wall, 3),
            "tok_s": round(total / wall, 2), "ttft_p50_ms": _ms(ttfts, 50), "ttft_p99_ms": _ms(ttfts, 99),
            "itl_p50_ms": _ms(gaps, 50), "itl_p99_ms": _ms(gaps, 99),
            "errors": sum(r.error is not None for r in results),
            "first_error": next((r.error for r in results if r.error), None)}


def _ms(values: list[float], pct: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0] * 1000, 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[pct - 1] * 1000, 2)


def measure(name: str, url: str, model: str, opts: argparse.Namespace) -> list[dict[str, Any]]:
    asyncio.run(one_request(httpx.AsyncClient(timeout=opts.timeout), url, model, 4))  # warm-up
    rows = []
    for clients in (1, opts.clients):
        row = asyncio.run(scenario(url, model, clients, opts.requests, opts.tokens, opts.timeout))
        rows.append({"server": name, **row})
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) == 2 and rows[0].get("tok_s") and rows[1].get("tok_s"):
        rows[1]["speedup"] = round(rows[1]["tok_s"] / rows[0]["tok_s"], 2)
    return rows


def model_folder(opts: argparse.Namespace) -> Path:
    weights = ensure_weights(opts.config, opts.dtype, opts.work)
    folder = opts.work / f"serve-{opts.config}-{opts.dtype}"
    folder.mkdir(parents=True, exist_ok=True)
    for item in weights.iterdir():
        target = folder / item.name
        if not target.exists():
            target.symlink_to(item.resolve())
    if not (folder / "tokenizer.model").exists():
        shutil.copyfile(opts.tokenizer, folder / "tokenizer.model")
    return folder


def run_llamahub(opts: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "llamahub.cli", "serve", str(folder), "--dtype", opts.dtype,
           "--slots", str(opts.clients), "--threads", str(opts.threads), "--port", str(port)]
    proc = start(cmd, url, opts.work / "serve-llamahub.log")
    try:
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        rows = measure("llamahub", url, model, opts)
        stats = httpx.get(f"{url}/stats").json()["models"][model]
        rows[-1]["engine_stats"] = stats
        return rows
    finally:
        stop(proc)


def run_llama_cpp(opts: argparse.Namespace) -> list[dict[str, Any]]:
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama_cpp is not installed: llama.cpp's server skipped", file=sys.stderr)
        return []
    if opts.gguf is None:
        print("no --gguf FILE: llama.cpp's server skipped", file=sys.stderr)
        return []
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(opts.gguf), "--host", "127.0.0.1",
           "--port", str(port), "--n_threads", str(opts.threads), "--n_ctx", "1024"]
    try:
        proc = start(cmd, url, opts.work / "serve-llama-cpp.log")
    except RuntimeError as e:  # e.g. llama-cpp-python without its [server] extra
        print(e, file=sys.stderr)
        return [{"server": "llama.cpp", "clients": 0, "error": str(e).splitlines()[0]}]
    try:
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        return measure("llama.cpp", url, model, opts)
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="110m")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="completions per client")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per completion")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900, help="seconds for each scenario")
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER)
    parser.add_argument("--gguf", type=Path, help="the same weights as GGUF, for llama.cpp's server")
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--out", type=Path, help="append the records here (JSON lines)")
    opts = parser.parse_args()
    if not opts.tokenizer.is_file():
        sys.exit(f"no tokenizer at {opts.tokenizer}: pass --tokenizer tokenizer.model (32000 pieces)")
    opts.work.mkdir(parents=True, exist_ok=True)
    rows = run_llamahub(opts, model_folder(opts)) + run_llama_cpp(opts)
    stamp = {"when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
             "config": opts.config, "dtype": opts.dtype, "tokens": opts.tokens, "requests": opts.requests,
             "threads": opts.threads, "load1": os.getloadavg()[0], "command": " ".join(sys.argv)}
    if opts.out:
        with opts.out.open("a") as f:
            for row in rows:
                f.write(json.dumps(stamp | row) + "\n")
    print("\n| server | clients | tok/s | speedup | TTFT p50/p99 ms | ITL p50/p99 ms | errors |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        ttft, itl = (f"{r.get(k + '_p50_ms')}/{r.get(k + '_p99_ms')}" for k in ("ttft", "itl"))
        print(f"| {r['server']} | {r['clients']} | {r.get('tok_s')} | {r.get('speedup', '')} | {ttft} | "
              f"{itl} | {r.get('errors', r.get('error'))} |")


if __name__ == "__main__":
    main()
