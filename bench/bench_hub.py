"""Hub throughput on loopback: signed-link issuance (requests/s) and serving a 1 GiB file (MB/s).

The hub runs as ``llamahub hub serve`` in its own process on 127.0.0.1, on a fresh data dir
(``hub init`` + ``hub import``); this process is the client. Both share the machine's cores.

- Issuance: ``POST /api/links`` (gates, Ed25519 signature, one SQLite write transaction with its
  audit row) from N threads, each with its own keep-alive httpx client; requests/s over the whole
  batch, and per-request latency (median, p95).
- Serving: a 1 GiB file of random bytes through a signed link, streamed by httpx (bytes counted,
  not stored) and fetched by ``curl -o /dev/null`` from the same server; for reference, the same
  blob read from disk with the page cache warm (1 MiB ``readinto``).

The 1 GiB file enters the hub through the existing importer: an HF-format ``llama-debug-3.1``
folder (``generate_checkpoint``) plus ``blob-1024mib.bin``; the HF importer serves every file of the
folder under ``<variant>/``. The source folder is kept in ``--work`` and reused.

Each figure is the median (min-max) of ``--runs`` runs; MB = 10^6 bytes.

``--backends sqlite,postgres`` measures both in the same run, one after the other, each on a fresh
hub: the same blobs on disk, the store on SQLite or on PostgreSQL (``--database-url``, else a
throwaway cluster started from Debian's binaries with fsync on, as tests/pgcluster.py does).

    .venv/bin/python bench/bench_hub.py --backends sqlite,postgres
    .venv/bin/python bench/bench_hub.py --size-mib 64 --runs 1 --requests 200 --out-dir /tmp/hub-bench
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "llamahub.cli"]
VARIANT = "llama-debug-3.1"
MB = 1e6
READ_CHUNK = 1 << 20


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def fmt(s: dict[str, Any], digits: int = 0) -> str:
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}–{s['max']:,.{digits}f})"


def human(size: int) -> str:
    return f"{size >> 30} GiB" if size % (1 << 30) == 0 else f"{size / 2**20:,.0f} MiB"


def log(msg: str) -> None:
    print(f"[bench_hub] {msg}", file=sys.stderr, flush=True)


# --- the data and the server -----------------------------------------------------------------------


def blob_name(size: int) -> str:
    return f"blob-{size >> 20}mib.bin"


def source_folder(work: Path, size: int) -> tuple[Path, str]:
    """The HF folder to import, with ``blob-<N>mib.bin`` of random bytes (seed 0); (folder, md5)."""
    from llamahub.model.writer import generate_checkpoint
    from llamahub.registry import resolve

    root = work / f"hub-src-{size}"
    folder = root / VARIANT
    marker = folder / ".bench.json"  # a dot file: the importer skips it
    if marker.is_file() and (folder / blob_name(size)).is_file():
        return folder, json.loads(marker.read_text())["md5"]
    shutil.rmtree(root, ignore_errors=True)
    log(f"writing {size:,} random bytes to {folder / blob_name(size)}")
    folder = generate_checkpoint(resolve(VARIANT), root, fmt="hf")
    rng, md5, left = np.random.default_rng(0), hashlib.md5(), size
    with (folder / blob_name(size)).open("wb") as f:
        while left:
            block = rng.bytes(min(64 << 20, left))
            md5.update(block)
            f.write(block)
            left -= len(block)
    (folder / "checklist.chk").write_text(f"{md5.hexdigest()}  {blob_name(size)}\n")
    marker.write_text(json.dumps({"size": size, "md5": md5.hexdigest()}))
    return folder, md5.hexdigest()


def cli(*args: str) -> str:
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        sys.exit(f"llamahub {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the bench is one user issuing thousands of links from 127.0.0.1: far over the production limits
NO_RATE_LIMITS = [arg for name in ("register.ip", "link.token", "link.ip")
                  for arg in ("--rate-limit", f"{name}=off")]


class Server:
    def __init__(self, data: Path, db: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data / "server.log"
        with self.log.open("w") as out:
            # a high per-file cap: every timed transfer goes through one link
            self.proc = subprocess.Popen([*CLI, "hub", "serve", "--data", str(data), "--host", "127.0.0.1",
                                          "--port", str(self.port), "--log-level", "warning",
                                          "--max-downloads", "1000", *NO_RATE_LIMITS, *(db or [])],
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"the hub exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        sys.exit(f"the hub did not start within 60 s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def account(url: str) -> dict[str, str]:
    """Auth header of a user allowed to get links for llama-debug."""
    r = httpx.post(f"{url}/api/users", json={"email": "bench@example.com", "name": "Bench",
                                             "organisation": "Bench", "country": "DE"})
    r.raise_for_status()
    auth = {"Authorization": f"Bearer {r.json()['token']}"}
    httpx.put(f"{url}/api/profile", headers=auth, json={"mau": 1000, "intended_uses": ["research"]}
              ).raise_for_status()
    httpx.post(f"{url}/api/licenses/llama-debug/accept", headers=auth).raise_for_status()
    return auth


# --- (a) link issuance -----------------------------------------------------------------------------


def issuance(url: str, auth: dict[str, str], workers: int, requests: int) -> dict[str, Any]:
    """``requests`` POST /api/links spread over ``workers`` threads; throughput and latency."""
    per_worker = [requests // workers + (i < requests % workers) for i in range(workers)]
    latencies: list[list[float]] = [[] for _ in range(workers)]
    failures: list[str] = []
    start = threading.Barrier(workers + 1)

    def work(i: int) -> None:
        with httpx.Client(base_url=url, headers=auth, timeout=60) as client:
            client.get("/api/health")  # connect before the clock starts
            start.wait()
            for _ in range(per_worker[i]):
                t = time.perf_counter()
                r = client.post("/api/links", json={"variant": VARIANT})
                latencies[i].append(time.perf_counter() - t)
                if r.status_code != 201:
                    failures.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for th in threads:
        th.start()
    start.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    if failures:
        sys.exit(f"{len(failures)} link requests failed, e.g. {failures[0]}")
    lat = np.array([x for per in latencies for x in per]) * 1000
    return {"requests": int(lat.size), "seconds": wall, "requests_per_s": lat.size / wall,
            "latency_median_ms": float(np.median(lat)), "latency_p95_ms": float(np.percentile(lat, 95))}


# --- (b) file serving ------------------------------------------------------------------------------


def via_httpx(url: str, size: int) -> float:
    """Seconds to stream the file (request to last byte) with httpx, counting the bytes."""
    with httpx.Client(timeout=120) as client:
        t = time.perf_counter()
        with client.stream("GET", url) as r:
            if r.status_code != 200:
                sys.exit(f"httpx download: HTTP {r.status_code} {r.read()[:200]!r}")
            n = sum(len(chunk) for chunk in r.iter_raw())
        seconds = time.perf_counter() - t
    if n != size:
        sys.exit(f"httpx received {n:,} bytes of {size:,}")
    return seconds


def via_curl(url: str, size: int) -> float:
    """Seconds for ``curl -o /dev/null`` to fetch the file (wall time of the curl process)."""
    t = time.perf_counter()
    out = subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}", url],
                         capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t
    if out.returncode != 0 or int(out.stdout) != size:
        sys.exit(f"curl failed ({out.returncode}, {out.stdout} bytes): {out.stderr}")
    return seconds


def from_disk(path: Path, size: int) -> float:
    """Seconds to read the blob once with 1 MiB ``readinto`` (page cache warm)."""
    buf = bytearray(READ_CHUNK)
    view, n = memoryview(buf), 0
    t = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while got := f.readinto(view):
            n += got
    seconds = time.perf_counter() - t
    if n != size:
        sys.exit(f"read {n:,} bytes of {size:,} from {path}")
    return seconds


def verify(url: str, md5: str) -> None:
    """One untimed download whose md5 must be the source file's (it also warms the server's cache)."""
    h = hashlib.md5()
    with httpx.Client(timeout=300) as client, client.stream("GET", url) as r:
        r.raise_for_status()
        for chunk in r.iter_raw():
            h.update(chunk)
    if h.hexdigest() != md5:
        sys.exit(f"served bytes have md5 {h.hexdigest()}, the source {md5}")


def serving(url: str, blob: Path, size: int, runs: int) -> dict[str, Any]:
    ways: dict[str, Callable[[], float]] = {"hub_httpx": lambda: via_httpx(url, size),
                                           "hub_curl": lambda: via_curl(url, size),
                                           "disk_read": lambda: from_disk(blob, size)}
    from_disk(blob, size)  # warm the page cache
    seconds: dict[str, list[float]] = {k: [] for k in ways}
    for run in range(runs):  # interleaved, so drift hits every way alike
        for name, way in ways.items():
            seconds[name].append(way())
            log(f"run {run + 1}/{runs} {name}: {size / MB / seconds[name][-1]:,.0f} MB/s")
    return {name: {"seconds": summary(s), "MB_per_s": summary([size / MB / x for x in s])}
            for name, s in seconds.items()}


# --- report ----------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "")
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    git = subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    packages = ("httpx", "uvicorn", "httptools", "uvloop", "fastapi", "starlette", "h11")
    versions = {m: _version(m) for m in packages}
    return {"cpu": cpu, "nproc": int(nproc), "kernel": platform.release(),
            "python": platform.python_version(), **versions, "curl": " ".join(curl.split()[:2]),
            "sqlite": sqlite3.sqlite_version, "git": git}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


BACKEND_NAMES = {"sqlite": "SQLite (WAL, synchronous=FULL)", "postgres": "PostgreSQL (fsync on)"}


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Hub throughput on loopback",
        "",
        "Written by `bench/bench_hub.py`; do not edit by hand. Method: `bench/README.md`, section "
        "\"Hub benchmark\".",
        "",
        "## Machine and run",
        "",
        f"- CPU: {m['cpu']}, nproc {m['nproc']}; Linux {m['kernel']}. The hub (one uvicorn process) and "
        "the client share these cores.",
        f"- Python {m['python']}, uvicorn {m['uvicorn']} (httptools {m.get('httptools')}, uvloop "
        f"{m.get('uvloop')}), fastapi {m['fastapi']}, httpx {m['httpx']}, "
        f"{m['curl']}, SQLite {m['sqlite']}; llamahub {m['git']}.",
        f"- Date: {r['date']}; 1-minute load average before the run: {r['loadavg_before']:.2f}.",
        f"- Median (min–max) of {r['runs']} runs; MB = 10^6 bytes.",
        "",
        "```",
        r["command"],
        "```",
        "",
    ]
    for backend, figures in r["backends"].items():
        lines += backend_section(r, BACKEND_NAMES.get(backend, backend), figures["issuance"],
                                 figures["serving"])
    return "\n".join(lines)


def backend_section(r: dict[str, Any], store: str, a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [
        f"## The store on {store}",
        "",
        "### (a) Link issuance: `POST /api/links`",
        "",
        f"{a['workers']} client threads (one keep-alive httpx client each), {a['requests_per_run']:,} "
        f"requests per run (after {a['warmup']} untimed); every request a 201 with a signed link "
        "(gates, Ed25519 signature, one write transaction with its audit row). "
        "Requests/s = requests ÷ wall time from the common start to the last answer; latency per request.",
        "",
        "| | median (min–max) |",
        "|---|---|",
        f"| requests/s | {fmt(a['requests_per_s'])} |",
        f"| latency median, ms | {fmt(a['latency_median_ms'], 1)} |",
        f"| latency p95, ms | {fmt(a['latency_p95_ms'], 1)} |",
        "",
        f"### (b) Serving a {human(r['file_bytes'])} file ({r['file_bytes']:,} bytes)",
        "",
        f"`{r['file']}` (random bytes, imported with `llamahub hub import` from an HF-format folder) "
        "through one signed link; the hub checks the link, counts the download and streams the blob in "
        "1 MiB blocks. httpx: a new connection per run, timed from the request to the last byte; curl: "
        "wall time of the curl process. The three readers take turns within each run.",
        "",
        "| reader | MB/s, median (min–max) | seconds, median |",
        "|---|---|---|",
        f"| hub → httpx client (`iter_raw`, bytes counted) | {fmt(b['hub_httpx']['MB_per_s'])} | "
        f"{b['hub_httpx']['seconds']['median']:.2f} |",
        f"| hub → `curl -o /dev/null` | {fmt(b['hub_curl']['MB_per_s'])} | "
        f"{b['hub_curl']['seconds']['median']:.2f} |",
        f"| the blob read from disk, page cache warm (1 MiB `readinto`) | "
        f"{fmt(b['disk_read']['MB_per_s'])} | {b['disk_read']['seconds']['median']:.2f} |",
        "",
        f"Served bytes checked once (untimed) against the source md5 `{r['file_md5']}`.",
        "",
    ]


def measure(opts: argparse.Namespace, folder: Path, md5: str, size: int, db: list[str]) -> dict[str, Any]:
    """Issuance and serving on a fresh hub whose store is ``db`` (``[]``: SQLite in the data dir)."""
    served_path = f"{VARIANT}/{blob_name(size)}"
    data = opts.work.resolve() / "hub-data"
    shutil.rmtree(data, ignore_errors=True)
    cli("hub", "init", "--data", str(data), "--json", *db)
    t = time.perf_counter()
    cli("hub", "import", str(folder), "--variant", VARIANT, "--data", str(data), *db)
    import_s = time.perf_counter() - t
    log(f"imported {folder} in {import_s:.1f} s")
    os.sync()  # let the writeback of the fresh blob finish before the database's fsyncs are timed
    server = Server(data, db)
    try:
        auth = account(server.url)
        log(f"issuance: {opts.warmup} warm-up, then {opts.runs} x {opts.requests} requests, "
            f"{opts.workers} workers")
        issuance(server.url, auth, opts.workers, opts.warmup)
        runs_a = []
        for run in range(opts.runs):
            runs_a.append(issuance(server.url, auth, opts.workers, opts.requests))
            log(f"run {run + 1}/{opts.runs}: {runs_a[-1]['requests_per_s']:,.0f} requests/s")
        link = httpx.post(f"{server.url}/api/links", headers=auth,
                          json={"variant": VARIANT, "max_downloads": 1000}).json()
        manifest = httpx.get(link["manifest_url"]).json()
        entry = next(f for f in manifest["files"] if f["path"] == served_path)
        if (entry["size"], entry["md5"]) != (size, md5):
            sys.exit(f"the manifest says {entry}, the source is {size} bytes with md5 {md5}")
        url = link["url"].replace("*", served_path, 1)
        verify(url, md5)
        blob = data / "blobs" / "sha256" / entry["sha256"][:2] / entry["sha256"][2:]
        served = serving(url, blob, size, opts.runs)
    finally:
        server.stop()
    shutil.rmtree(data, ignore_errors=True)  # the blob copy; the source folder is kept
    return {"import_seconds": import_s, "serving": served,
            "issuance": {"workers": opts.workers, "requests_per_run": opts.requests, "warmup": opts.warmup,
                         **{k: summary([r[k] for r in runs_a]) for k in
                            ("requests_per_s", "latency_median_ms", "latency_p95_ms", "seconds")},
                         "runs": runs_a}}


def postgres_url(opts: argparse.Namespace, cleanup: list[Callable[[], None]]) -> str:
    """``--database-url``, else a fresh database in a throwaway cluster (removed at the end)."""
    if opts.database_url:
        return opts.database_url
    sys.path.insert(0, str(HERE.parent / "tests"))
    from pgcluster import start_cluster

    cluster = start_cluster(durable=True)
    cleanup.append(cluster.remove)
    log(f"started a throwaway PostgreSQL cluster from {cluster.bindir}")
    return cluster.new_database()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=1024, help="size of the served file")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", type=int, default=8, help="concurrent issuance clients")
    p.add_argument("--requests", type=int, default=1500, help="link requests per issuance run")
    p.add_argument("--warmup", type=int, default=100, help="untimed link requests first")
    p.add_argument("--backends", default="sqlite", help="stores to measure, in turn: sqlite,postgres")
    p.add_argument("--database-url", help="the PostgreSQL database for --backends postgres (it must be "
                                          "empty); default: a throwaway cluster")
    p.add_argument("--work", type=Path, default=HERE / "work", help="source folder and hub data dir")
    p.add_argument("--out-dir", type=Path, default=HERE / "results", help="hub.json and hub.md go here")
    opts = p.parse_args()
    backends = [b.strip() for b in opts.backends.split(",") if b.strip()]
    if not backends or set(backends) - {"sqlite", "postgres"}:
        sys.exit(f"--backends takes sqlite and/or postgres, not {opts.backends!r}")
    if shutil.which("curl") is None:
        sys.exit("curl is needed (Debian: apt-get install -y curl)")
    exe = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    command = shlex.join([exe, *sys.argv])
    size = opts.size_mib << 20

    folder, md5 = source_folder(opts.work.resolve(), size)
    loadavg = os.getloadavg()[0]
    cleanup: list[Callable[[], None]] = []
    figures = {}
    try:
        for backend in backends:
            db = ["--database-url", postgres_url(opts, cleanup)] if backend == "postgres" else []
            log(f"--- store on {backend}")
            figures[backend] = measure(opts, folder, md5, size, db)
    finally:
        for done in cleanup:
            done()
    first = figures[backends[0]]
    result = {
        "benchmark": "hub", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command, "machine": machine_info(), "loadavg_before": loadavg, "runs": opts.runs,
        "file": f"{VARIANT}/{blob_name(size)}", "file_bytes": size, "file_md5": md5,
        "import_seconds": first["import_seconds"], "issuance": first["issuance"], "serving": first["serving"],
        "backends": figures,
    }
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    (opts.out_dir / "hub.json").write_text(json.dumps(result, indent=2) + "\n")
    (opts.out_dir / "hub.md").write_text(markdown(result))
    log(f"wrote {opts.out_dir / 'hub.json'} and {opts.out_dir / 'hub.md'}")


if __name__ == "__main__":
    main()
