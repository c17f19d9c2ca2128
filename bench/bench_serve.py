"""Load test of ``llamahub serve`` on loopback: N concurrent streaming clients vs one alone.

Bounded: every client sends ``--requests`` completions of ``--tokens`` tokens (EOS ignored) and
the whole run stops after ``--timeout`` seconds. Per scenario: aggregate tok/s (completion tokens
/ wall time), p50/p99 time to first token and inter-token latency, errors. With llama-cpp-python
installed with its server's dependencies (the ``llamacpp-server`` extra), the same
clients run against llama.cpp's own server, ``python -m llama_cpp.server``, on the same weights:
converted to GGUF by our own converter (f32 for fp32, f16 for bf16) unless ``--gguf FILE`` names
one; ``--gguf none`` skips it. ``--md FILE`` writes the table of both (serve.md).

    python bench/bench_serve.py --config 110m --dtype fp32 --out bench/results/serve.jsonl \
        --md bench/results/serve.md
    python bench/bench_serve.py --config tiny --tokens 16 --requests 1 --work /tmp/bw \
        --out /tmp/serve.jsonl --md /tmp/serve.md  # smoke

Weights: bench_cpu.py's random checkpoints (``bench/work/<config>-<dtype>``) with the real Llama 2
tokenizer (``--tokenizer``, default ../shared/data/llama2-tokenizer.model) beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
GGUF_QUANTS = {"fp32": "f32", "bf16": "f16"}  # our dtype -> the GGUF our converter writes


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


def make_gguf(opts: argparse.Namespace, folder: Path) -> Path:
    """The serve folder's weights as GGUF, written once by our converter (llamahub_llamacpp)."""
    from llamahub_llamacpp.derive import derived_gguf

    from llamahub.reference import folder_artifacts, identify_folder
    from llamahub.registry import Registry

    arts = folder_artifacts(folder, opts.work / "cache")
    variant = identify_folder(folder, None, Registry([]))
    return derived_gguf(arts, variant, GGUF_QUANTS[opts.dtype], threads=opts.threads)


def run_llama_cpp(opts: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    if str(opts.gguf) == "none":
        return []
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama_cpp is not installed: llama.cpp's server skipped", file=sys.stderr)
        return [{"server": "llama.cpp", "clients": 0, "error": "llama-cpp-python is not installed"}]
    gguf = make_gguf(opts, folder) if str(opts.gguf) == "auto" else opts.gguf
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, str(HERE / "llama_cpp_server.py"), "--model", str(gguf), "--host", "127.0.0.1",
           "--port", str(port), "--n_threads", str(opts.threads), "--n_threads_batch", str(opts.threads),
           "--n_ctx", "1024", "--flash_attn", "true",
           # by default a new request interrupts the one streaming: the other clients would fail
           "--interrupt_requests", "false"]
    try:
        proc = start(cmd, url, opts.work / "serve-llama-cpp.log")
    except RuntimeError as e:  # e.g. llama-cpp-python without its [server] extra
        print(e, file=sys.stderr)
        return [{"server": "llama.cpp", "clients": 0, "error": str(e).splitlines()[0]}]
    try:
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        rows = measure("llama.cpp", url, model, opts)
        for row in rows:
            row["gguf"] = str(gguf)
        return rows
    finally:
        stop(proc)


def machine() -> str:
    """CPU, cores, library versions and the commit measured."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = []
    for dist in ("torch", "llama-cpp-python"):
        with contextlib.suppress(PackageNotFoundError):
            versions.append(f"{dist} {version(dist)}")
    commit = subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip()
    python = f"Python {platform.python_version()}"
    return f"{cpu}, {os.cpu_count()} cores; {python}, {', '.join(versions)}; llamahub {commit}"


def markdown(rows: list[dict[str, Any]], stamp: dict[str, Any]) -> str:
    """serve.md: both servers in one table, with the run's settings."""
    lines = [
        "# `llamahub serve` under concurrent streaming clients, next to llama.cpp's server",
        "",
        "Written by `bench/bench_serve.py --md`; the rows are also in the JSON lines file (`--out`).",
        "",
        f"- Machine: {stamp['machine']}.",
        f"- When: {stamp['when']}; load average at the end {stamp['load1']:.2f}.",
        f"- Command: `{stamp['command']}`",
        f"- Setup: {stamp['config']} random weights, {stamp['dtype']}, greedy, EOS ignored (banned through "
        f"`logit_bias` for llama.cpp), {stamp['tokens']} tokens per request, {stamp['requests']} "
        f"requests per client, {stamp['threads']} threads. llama.cpp: `python -m llama_cpp.server` on the "
        "same weights converted to GGUF by our converter, flash attention on (llama.cpp's CPU default), "
        "its default f16 KV cache, `--interrupt_requests false` (else each new request cuts "
        "the one streaming); it decodes one request at a time.",
        "",
        "| server | clients | tok/s | speedup over 1 client | TTFT p50 / p99 ms | ITL p50 / p99 ms "
        "| errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        errors = r.get("errors", r.get("error"))
        lines.append(f"| {r['server']} | {r['clients']} | {r.get('tok_s', '')} | "
                     f"{_x(r.get('speedup'))} | {_pair(r, 'ttft')} | {_pair(r, 'itl')} | {errors} |")
    ours = [r for r in rows if r["server"] == "llamahub" and r.get("speedup")]
    if ours:
        met = "met" if ours[-1]["speedup"] >= 4 else "**not met**"
        speedup = _x(ours[-1]["speedup"])
        lines += ["", f"Target: ≥ 4× aggregate over one client for llamahub: {speedup}, {met}."]
    return "\n".join(lines) + "\n"


def _x(value: float | None) -> str:
    return f"{value}×" if value else ""


def _pair(row: dict[str, Any], key: str) -> str:
    return f"{row.get(key + '_p50_ms')} / {row.get(key + '_p99_ms')}"


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
    parser.add_argument("--gguf", default="auto",
                        help="the same weights as GGUF for llama.cpp's server: 'auto' (converted by our "
                             "converter), a file, or 'none' (skip llama.cpp)")
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--out", type=Path, help="append the records here (JSON lines)")
    parser.add_argument("--md", type=Path, help="write this run's table here (bench/results/serve.md)")
    opts = parser.parse_args()
    if not opts.tokenizer.is_file():
        sys.exit(f"no tokenizer at {opts.tokenizer}: pass --tokenizer tokenizer.model (32000 pieces)")
    opts.work.mkdir(parents=True, exist_ok=True)
    folder = model_folder(opts)
    rows = run_llamahub(opts, folder) + run_llama_cpp(opts, folder)
    stamp = {"when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
             "config": opts.config, "dtype": opts.dtype, "tokens": opts.tokens, "requests": opts.requests,
             "threads": opts.threads, "load1": os.getloadavg()[0], "command": " ".join(sys.argv),
             "machine": machine()}
    if opts.out:
        with opts.out.open("a") as f:
            for row in rows:
                f.write(json.dumps(stamp | row) + "\n")
    text = markdown(rows, stamp)
    if opts.md:
        opts.md.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
