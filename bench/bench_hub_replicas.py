"""Two hub replicas under load, bounded, with the books checked afterwards.

Two ``llamahub hub serve`` processes on 127.0.0.1 share one database (a SQLite file in the data dir
by default, or ``--database-url``, e.g. PostgreSQL), one blob store (the data dir's ``blobs/``, or
an S3 bucket on moto's standalone server with ``--blobs s3``) and one keys folder. ``--clients``
threads run ``--ops`` operations in all, then stop. One operation is what a new user does:
register, declare a profile, accept the license, get a signed link, read its manifest and download
every file of ``--variant`` (sha256 checked). Each request goes to the next replica in turn (the
link's host swapped), so every step of one user lands on both replicas. One operation per replica
runs first as a warm-up and is not counted.

Reported: requests/s and operations/s over the whole run, p50/p99 latency per kind of request,
errors (target 0). Afterwards the audit log must hold exactly one ``user.register``,
``profile.update``, ``license.accept`` and ``link.issue`` per completed operation (rows of its user)
and one ``download.start`` per file of each (rows of its link), and every link's manifest must count
each file served
exactly once (its size in bytes); the script exits 1, loudly, if any count differs.

    .venv/bin/python bench/bench_hub_replicas.py                          # 32 clients, 25 MB variant
    .venv/bin/python bench/bench_hub_replicas.py --blobs s3 --postgres   # or --database-url postgresql+psycopg://...
    .venv/bin/python bench/bench_hub_replicas.py --clients 4 --ops 8 --variant llama-debug-2-chat \\
        --out-dir /tmp/replicas-smoke                                      # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "llamahub.cli"]
NO_LIMITS = [a for n in ("register.ip", "link.token", "link.ip", "sign-in.ip", "sign-in.token")
             for a in ("--rate-limit", f"{n}=off")]
BUCKET = "hub-replicas"


def log(msg: str) -> None:
    print(f"[bench_hub_replicas] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, path: str | None = None) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            if path is None:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{what} did not start on port {port}")


@contextlib.contextmanager
def process(cmd: list[str], port: int, what: str, log_file: Path, env: dict[str, str],
            path: str | None = None) -> Iterator[subprocess.Popen]:
    with log_file.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port(port, proc, what, path)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(cmd: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{done.stderr}")
    return done.stdout


@contextlib.contextmanager
def s3_endpoint(work: Path) -> Iterator[dict[str, str]]:
    """moto's standalone S3 server on 127.0.0.1 with a fresh bucket; yields the AWS_* environment."""
    import boto3

    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with process(cmd, port, "moto's S3 server", work / "moto.log", dict(os.environ)):
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        s3 = boto3.session.Session().client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                                            region_name="us-east-1", aws_access_key_id="testing",
                                            aws_secret_access_key="testing")
        s3.create_bucket(Bucket=BUCKET)
        yield env


# --- the load --------------------------------------------------------------------------------------


class Load:
    """Runs the operations; records each request's kind, latency and outcome (thread-safe)."""

    def __init__(self, replicas: list[str], variant: str) -> None:
        self.replicas, self.variant = replicas, variant
        self.latencies: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.links: list[dict[str, Any]] = []  # the link and file sizes of each completed operation
        self._turn = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    def _next(self) -> str:
        with self._lock:
            self._turn += 1
            return self.replicas[self._turn % len(self.replicas)]

    def _http(self) -> httpx.Client:
        if not hasattr(self._local, "http"):
            self._local.http = httpx.Client(timeout=120)
        return self._local.http

    def request(self, kind: str, method: str, path: str, *, expect: int, token: str | None = None,
                url: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        started = time.perf_counter()
        response = self._http().request(method, url or self._next() + path, headers=headers, **kw)
        elapsed = time.perf_counter() - started
        with self._lock:
            self.latencies.setdefault(kind, []).append(elapsed)
        if response.status_code != expect:
            raise RuntimeError(f"{kind}: HTTP {response.status_code}: {response.text[:300]}")
        return response

    def operation(self, i: int) -> None:
        try:
            self._operation(i)
        except Exception as e:
            with self._lock:
                self.errors.append(f"op {i}: {e}")

    def _operation(self, i: int) -> None:
        tag = f"{i}-{uuid.uuid4().hex[:8]}"
        user = self.request("register", "POST", "/api/users", expect=201, json={
            "email": f"bench-{tag}@example.com", "name": f"B {tag}", "organisation": f"Org {tag}",
            "country": "us"}).json()
        token = user["token"]
        self.request("profile", "PUT", "/api/profile", expect=200, token=token,
                     json={"mau": 1000, "intended_uses": ["chatbot"], "certifications": []})
        self.request("accept", "POST", "/api/licenses/llama-debug/accept", expect=201, token=token)
        link = self.request("link", "POST", "/api/links", expect=201, token=token,
                            json={"variant": self.variant}).json()
        query = link["url"].partition("?")[2]
        files = self.request("manifest", "GET", f"/api/links/manifest?{query}", expect=200).json()["files"]
        for f in files:
            path = link["url"].partition("?")[0].replace("*", f["path"], 1)
            path = path[path.index("/dl/"):] + "?" + query  # the link's host swapped for the next replica
            digest = hashlib.sha256()
            started = time.perf_counter()
            with self._http().stream("GET", self._next() + path) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"download {f['path']}: HTTP {r.status_code}")
                for block in r.iter_bytes(1 << 20):
                    digest.update(block)
            with self._lock:
                self.latencies.setdefault("download", []).append(time.perf_counter() - started)
            if digest.hexdigest() != f["sha256"]:
                raise RuntimeError(f"download {f['path']}: sha256 mismatch")
        with self._lock:
            self.links.append({"url": link["url"], "link_id": link["link_id"], "user_id": user["user"]["id"],
                               "sizes": {f["path"]: f["size"] for f in files}})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- the books -------------------------------------------------------------------------------------


def audit_counts(url: str, admin_token: str, actors: set[str]) -> Counter[str]:
    """How many audit rows of each action ``actors`` have (the whole log, read page by page)."""
    counts: Counter[str] = Counter()
    after = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=60) as http:
        while True:
            rows = http.get("/api/admin/audit", params={"after": after, "limit": 1000}).json()["entries"]
            if not rows:
                return counts
            counts.update(r["action"] for r in rows if r["actor"] in actors)
            after = rows[-1]["id"]


def check_books(load: Load, url: str, admin_token: str) -> list[str]:
    """Every mismatch between what the operations did and what the hub counted (empty: exact)."""
    done = len(load.links)
    files = sum(len(link["sizes"]) for link in load.links)
    actors = {f"user:{link['user_id']}" for link in load.links}
    actors |= {f"link:{link['link_id']}" for link in load.links}
    counts = audit_counts(url, admin_token, actors)
    wanted = {"user.register": done, "profile.update": done, "license.accept": done, "link.issue": done,
              "download.start": files}
    problems = [f"audit {action}: {counts[action]} rows, {n} expected" for action, n in wanted.items()
                if counts[action] != n]
    for link in load.links:
        query = link["url"].partition("?")[2]
        served = {f["path"]: f["bytes_served"]
                  for f in httpx.get(f"{url}/api/links/manifest?{query}", timeout=60).json()["files"]}
        problems += [f"link {link['link_id']} {path}: {served.get(path)} bytes counted, {size} served"
                     for path, size in link["sizes"].items() if served.get(path) != size]
    return problems


# --- main ------------------------------------------------------------------------------------------


def prepare(work: Path, args: argparse.Namespace, env: dict[str, str]) -> tuple[list[str], str]:
    """``hub init`` and ``hub import`` of the variant; returns (the hub options, the admin token)."""
    from llamahub.model.writer import generate_checkpoint
    from llamahub.registry import resolve

    data = work / "data"
    hub_args = ["--data", str(data)]
    if args.database_url:
        hub_args += ["--database-url", args.database_url]
    if args.blobs == "s3":
        hub_args += ["--blobs", f"s3://{BUCKET}/hub"]
    token = json.loads(run([*CLI, "hub", "init", *hub_args, "--json"], env))["admin_token"]
    generate_checkpoint(resolve(args.variant), work / "src")
    run([*CLI, "hub", "import", str(work / "src"), "--variant", args.variant, *hub_args], env)
    return hub_args, token


def measure(args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict[str, Any]:
    hub_args, admin_token = prepare(work, args, env)
    ports = [free_port() for _ in range(args.replicas)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    with contextlib.ExitStack() as stack:
        for i, port in enumerate(ports):
            cmd = [*CLI, "hub", "serve", *hub_args, "--port", str(port), "--log-level", "warning",
                   "--public-url", urls[0], *NO_LIMITS]
            log_file = work / f"replica{i}.log"
            stack.enter_context(process(cmd, port, f"replica {i}", log_file, env, "/api/health"))
        for url in urls:  # warm-up, not counted: each replica loads its catalogue, opens its pools
            warm = Load([url], args.variant)
            warm.operation(-1)
            if warm.errors:
                raise SystemExit(f"warm-up on {url} failed: {warm.errors[0]}")
        load = Load(urls, args.variant)
        log(f"{args.replicas} replicas up; {args.ops} operations from {args.clients} clients")
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(load.operation, range(args.ops)))
        wall = time.perf_counter() - started
        problems = check_books(load, urls[-1], admin_token)
    requests = sum(len(v) for v in load.latencies.values())
    all_latencies = [x for v in load.latencies.values() for x in v]
    variant_bytes = sum(load.links[0]["sizes"].values()) if load.links else 0
    return {
        "replicas": args.replicas, "clients": args.clients, "operations": args.ops,
        "completed": len(load.links), "errors": len(load.errors), "error_samples": load.errors[:10],
        "variant": args.variant, "variant_bytes": variant_bytes,
        "files_per_operation": len(load.links[0]["sizes"]) if load.links else 0,
        "database": "postgresql" if (args.database_url or "").startswith("postgres") else "sqlite",
        "blobs": args.blobs, "seconds": wall, "requests": requests, "requests_per_s": requests / wall,
        "operations_per_s": len(load.links) / wall,
        "download_mb_per_s": len(load.links) * variant_bytes / wall / 1e6,
        "latency_ms": {kind: {"n": len(v), "p50": 1e3 * percentile(v, 0.5), "p99": 1e3 * percentile(v, 0.99),
                              "mean": 1e3 * statistics.fmean(v)}
                       for kind, v in [("all", all_latencies), *sorted(load.latencies.items())] if v},
        "books_exact": not problems, "book_problems": problems[:20],
    }


def markdown(result: dict[str, Any], command: str) -> str:
    r = result
    lines = [
        "# Two hub replicas under load", "",
        f"`{command}`", "",
        f"{r['replicas']} replicas, {r['database']} database, {r['blobs']} blobs; {r['clients']} clients, "
        f"{r['operations']} operations (register, profile, accept, link, manifest, download "
        f"{r['variant']}: {r['variant_bytes'] / 1e6:.1f} MB); {r['machine']}, {r['date']}.", "",
        f"- {r['requests_per_s']:.1f} requests/s, {r['operations_per_s']:.2f} operations/s, "
        f"{r['download_mb_per_s']:.0f} MB/s of verified downloads, {r['seconds']:.1f} s in all",
        f"- errors: {r['errors']} of {r['requests']} requests ({r['completed']} operations completed)",
        f"- books exact (audit rows and per-link byte counters = completed operations): "
        f"{'yes' if r['books_exact'] else 'NO'}", "",
        "| request | n | p50 ms | p99 ms | mean ms |", "|---|---|---|---|---|",
    ]
    lines += [f"| {kind} | {s['n']} | {s['p50']:.1f} | {s['p99']:.1f} | {s['mean']:.1f} |"
              for kind, s in r["latency_ms"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--ops", type=int, default=256, help="operations in all (the run stops after them)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--variant", default="llama-debug-big-25m", help="what each operation downloads")
    parser.add_argument("--blobs", choices=["local", "s3"], default="local")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: a SQLite file in the data dir)")
    parser.add_argument("--postgres", action="store_true",
                        help="a throwaway PostgreSQL cluster (fsync on) as the database")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    parser.add_argument("--name", default="hub-replicas", help="results file name (.json, .md)")
    args = parser.parse_args()
    command = shlex.join(["python", "bench/bench_hub_replicas.py", *sys.argv[1:]])
    env = {**os.environ, "LLAMAHUB_PROGRESS": "0"}
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hub-replicas-")))
        work.mkdir(parents=True, exist_ok=True)
        if args.blobs == "s3":
            env.update(stack.enter_context(s3_endpoint(work)))
        if args.postgres and not args.database_url:
            from bench_hub import postgres_url  # a durable throwaway cluster, removed at the end

            cleanup: list[Callable[[], None]] = []
            args.database_url = postgres_url(args, cleanup)
            for remove in cleanup:
                stack.callback(remove)
        result = measure(args, work, env)
    result.update(date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                  machine=f"{platform.machine()}, {os.cpu_count()} cores", command=command)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / f"{args.name}.md").write_text(markdown(result, command))
    print(markdown(result, command))
    if result["errors"] or not result["books_exact"]:
        log(f"FAILED: {result['errors']} errors {result['error_samples'][:3]}; "
            f"book problems: {result['book_problems'][:5]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
