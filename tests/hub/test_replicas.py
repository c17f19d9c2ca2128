"""Several hub replicas over one data dir (SQLite file, blobs, keys): real ``hub serve`` processes on
127.0.0.1 behind a tiny TCP front (tests/frontproxy.py). Links signed by one replica verify on the
other, a key rotated on one signs on the other, ``hub init`` run twice at once initialises once,
``--workers`` serves from several processes, and a replica killed with SIGKILL mid-download leaves
the client to resume on the other one, with the download cap and the audit log exact afterwards."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from frontproxy import RoundRobinFront
from hubtest import CLI, NO_RATE_LIMITS, free_port, init_hub, link_query, run_cli, serving

from llamahub.client.download import DownloadOptions, download
from llamahub.hub.store import Store
from llamahub.interfaces import RemoteFile
from llamahub.model.writer import generate_checkpoint
from llamahub.registry import resolve

BIG = "llama-debug-big-25m"


@dataclass
class Cluster:
    data: Path
    admin_token: str
    front: RoundRobinFront
    urls: dict[str, str]  # replica name -> its own URL
    ports: dict[str, int]

    def admin(self, url: str) -> httpx.Client:
        return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    data = tmp_path_factory.mktemp("replicas")
    token = init_hub(data, seed=False)
    generate_checkpoint(resolve(BIG), data / "big-src")
    imported = run_cli("hub", "import", str(data / "big-src"), "--variant", BIG, "--data", str(data))
    assert imported.returncode == 0, imported.stderr
    ports = {"a": free_port(), "b": free_port()}
    front = RoundRobinFront([ports["a"], ports["b"]])
    args = [*NO_RATE_LIMITS, "--public-url", front.url]
    with serving(data, token, *args, port=ports["a"], log=data / "a.log"), \
            serving(data, token, *args, port=ports["b"], log=data / "b.log"):
        yield Cluster(data, token, front, {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}, ports)
    front.close()


def register(url: str) -> httpx.Client:
    """A new user with a profile and the llama-debug license accepted, as a client of ``url``."""
    tag = uuid.uuid4().hex[:10]
    r = httpx.post(f"{url}/api/users", json={"email": f"r-{tag}@example.com", "name": f"R {tag}",
                                             "organisation": f"Org {tag}", "country": "us"})
    assert r.status_code == 201, r.text
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {r.json()['token']}"}, timeout=30)
    assert http.put("/api/profile", json={"mau": 1000, "intended_uses": ["chatbot"],
                                          "certifications": []}).status_code == 200
    assert http.post("/api/licenses/llama-debug/accept").status_code == 201
    return http


def on(url: str, link: str, path: str, front: RoundRobinFront) -> str:
    """The link's file ``path``, on the replica at ``url`` instead of the front (the host swapped)."""
    assert link.startswith(front.url + "/dl/")
    return url + link[len(front.url):].replace("*", path, 1)


def manifest_files(url: str, link: str) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"{url}/api/links/manifest", params=link_query(link), timeout=30)
    assert r.status_code == 200, r.text
    return {f["path"]: f for f in r.json()["files"]}


def test_a_link_signed_by_one_replica_verifies_on_the_other(cluster: Cluster) -> None:
    a, b = cluster.urls["a"], cluster.urls["b"]
    for issuer, server in ((a, b), (b, a)):
        user = register(issuer)
        link = user.post("/api/links", json={"variant": BIG}).json()
        files = manifest_files(server, link["url"])
        params = next(p for p in files if p.endswith("params.json"))
        body = httpx.get(on(server, link["url"], params, cluster.front), timeout=30)
        assert body.status_code == 200, body.text
        assert hashlib.sha256(body.content).hexdigest() == files[params]["sha256"]
        assert files[params]["bytes_served"] == 0 and manifest_files(issuer, link["url"])[params][
            "bytes_served"] == len(body.content)  # counted once, seen by both


def test_a_key_rotated_on_one_replica_signs_on_the_other(cluster: Cluster) -> None:
    a, b = cluster.urls["a"], cluster.urls["b"]
    user = register(cluster.front.url)
    before = user.post("/api/links", json={"variant": BIG}).json()
    rotated = cluster.admin(b).post("/api/admin/keys/rotate")
    assert rotated.status_code == 201, rotated.text
    new_kid = rotated.json()["active"]
    assert new_kid != before["key_id"] and (cluster.data / "keys" / f"{new_kid}.pem").is_file()
    assert httpx.get(f"{a}/.well-known/llamahub-keys.json").json()["active"] == new_kid
    after = httpx.Client(base_url=a, headers=user.headers).post("/api/links", json={"variant": BIG}).json()
    assert after["key_id"] == new_kid == link_query(after["url"])["Key-Pair-Id"]
    for link in (before, after):  # the old key still verifies, on both replicas
        for url in (a, b):
            params = next(p for p in manifest_files(url, link["url"]) if p.endswith("params.json"))
            assert httpx.get(on(url, link["url"], params, cluster.front)).status_code == 200


def test_a_web_session_started_on_one_replica_goes_on_on_the_other(cluster: Cluster) -> None:
    """The pages keep no session of their own: the cookie is the token, the form check is the
    Origin header against --public-url, so a sign-in on A holds on B and a form posted to B works."""
    user = register(cluster.front.url)
    token = user.headers["Authorization"].removeprefix("Bearer ")
    origin = {"Origin": cluster.front.url}
    with httpx.Client(base_url=cluster.urls["a"]) as a:
        signed = a.post("/enterprise/sign-in", data={"token": token}, headers=origin)
    assert signed.status_code == 303 and signed.cookies.get("llamahub_token") == token
    with httpx.Client(base_url=cluster.urls["b"], cookies={"llamahub_token": token}) as b:
        page = b.get("/enterprise")
        assert page.status_code == 200 and "sign-out" in page.text
        out = b.post("/enterprise/sign-out", headers=origin)
        assert out.status_code == 303 and 'llamahub_token=""' in out.headers.get("set-cookie", "")
        foreign = b.post("/enterprise/sign-out", headers={"Origin": cluster.urls["b"]})
        assert foreign.status_code == 403  # not the public URL: refused on every replica alike


def test_two_inits_at_once_make_one_hub(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    procs = [subprocess.Popen([*CLI, "hub", "init", "--data", str(data), "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    assert sorted(code for code, _, _ in results) == [0, 1], results
    assert any("already initialised" in err for _, _, err in results)
    store = Store.for_dir(data)
    try:
        keys = store.signing_keys()
    finally:
        store.close()
    assert len(keys) == 1 and [p.stem for p in (data / "keys").glob("*.pem")] == [keys[0]["key_id"]]


def test_keys_in_a_folder_of_their_own(tmp_path: Path) -> None:
    data, keys = tmp_path / "hub", tmp_path / "shared-keys"
    init = run_cli("hub", "init", "--data", str(data), "--keys-dir", str(keys), "--json")
    assert init.returncode == 0, init.stderr
    assert len(list(keys.glob("*.pem"))) == 1 and not (data / "keys").exists()
    refused = run_cli("hub", "serve", "--data", str(data), "--port", str(free_port()), timeout=60)
    assert refused.returncode != 0 and "no usable signing key" in refused.stderr  # the keys are elsewhere
    rotated = run_cli("hub", "keys", "rotate", "--data", str(data), "--keys-dir", str(keys))
    assert rotated.returncode == 0, rotated.stderr
    assert len(list(keys.glob("*.pem"))) == 2


def test_a_database_url_hub_with_shared_keys_takes_every_command(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With an external database the data dir holds no hub.db: the keys folder (LLAMAHUB_HUB_KEYS)
    is what marks a hub, for every command, as in the README's replica set-up."""
    db = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    data, keys = tmp_path / "hub", tmp_path / "shared-keys"
    init = run_cli("hub", "init", "--data", str(data), "--database-url", db, "--keys-dir", str(keys))
    assert init.returncode == 0, init.stderr
    refused = run_cli("hub", "audit", "--data", str(data), "--database-url", db)
    assert refused.returncode == 1 and "is not a hub" in refused.stderr  # without the keys: not a hub
    monkeypatch.setenv("LLAMAHUB_HUB_KEYS", str(keys))
    audit = run_cli("hub", "audit", "--data", str(data), "--database-url", db, "--json")
    assert audit.returncode == 0, audit.stderr
    assert [row["action"] for row in json.loads(audit.stdout)].count("key.create") == 1
    rotated = run_cli("hub", "keys", "rotate", "--data", str(data), "--database-url", db)
    assert rotated.returncode == 0, rotated.stderr
    assert len(list(keys.glob("*.pem"))) == 2 and not (data / "keys").exists()


def test_serve_with_workers_answers_from_several_processes(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    data = tmp_path / "hub"
    token = init_hub(data)
    with serving(data, token, *NO_RATE_LIMITS, "--workers", "2") as (hub, proc):
        workers = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 2
        user = register(hub.url)
        link = user.post("/api/links", json={"variant": "llama-debug-2-chat"})
        assert link.status_code == 201, link.text
        files = manifest_files(hub.url, link.json()["url"])
        for path, f in files.items():
            with httpx.Client() as fresh:  # a new connection each: the kernel spreads them over the workers
                body = fresh.get(link.json()["url"].replace("*", path, 1), timeout=30)
            assert hashlib.sha256(body.content).hexdigest() == f["sha256"]
        served = manifest_files(hub.url, link.json()["url"])
        assert all(served[p]["bytes_served"] == f["size"] for p, f in files.items())


def _range_start(sent: str) -> int:
    match = re.search(r"(?i)^range: bytes=(\d+)-\s*$", sent, re.M)
    assert match, sent
    return int(match.group(1))


def test_killed_replica_mid_download_the_client_resumes_on_the_other(cluster: Cluster,
                                                                     tmp_path: Path) -> None:
    """A third replica (A2) takes the download through a failover front; kill -9 A2 mid-file: the
    download engine's retry reaches B, resumes with a Range and verifies the sha256. The link's cap
    then counts exactly A2's reservation (the whole file, never given back by a killed process) plus
    what B sent, and the audit log has one download.start for the file."""
    port_a2 = free_port()
    user = register(cluster.front.url)
    link = user.post("/api/links", json={"variant": BIG, "max_downloads": 2}).json()
    files = manifest_files(cluster.urls["b"], link["url"])
    path = max(files, key=lambda p: files[p]["size"])
    size, sha256 = files[path]["size"], files[path]["sha256"]
    assert size > 8 << 20
    slow = RoundRobinFront([port_a2, cluster.ports["b"]], rate=4e6, failover=True)
    staging = tmp_path / "staging"
    args = [*NO_RATE_LIMITS, "--public-url", cluster.front.url]
    result: dict[str, Any] = {}
    with serving(cluster.data, cluster.admin_token, *args, port=port_a2, log=tmp_path / "a2.log") as (_, a2):
        remote = RemoteFile(path, on(slow.url, link["url"], path, cluster.front), size=size, sha256=sha256)
        options = DownloadOptions(workers=1, progress=False, retries=5, backoff=0.2)

        def run() -> None:
            try:
                result["fetched"] = download([remote], staging, options=options)
            except BaseException as e:
                result["error"] = e

        worker = threading.Thread(target=run)
        worker.start()
        part = staging / f"{sha256}.part"
        deadline = time.monotonic() + 60
        while not (part.is_file() and part.stat().st_size > 2 << 20) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(a2.pid, signal.SIGKILL)
        a2.wait(timeout=10)
        worker.join(timeout=120)
    slow.close()
    assert "error" not in result, result.get("error")
    fetched = result["fetched"][0]
    assert fetched.sha256 == sha256 and hashlib.sha256(fetched.path.read_bytes()).hexdigest() == sha256
    assert slow.sent_to(port_a2) and slow.sent_to(cluster.ports["b"])  # both replicas served part of it
    resumed_at = _range_start(slow.sent_to(cluster.ports["b"]))
    assert 2 << 20 <= resumed_at < size
    counted = manifest_files(cluster.urls["a"], link["url"])[path]["bytes_served"]
    assert counted == size + (size - resumed_at)
    left = 2 * size - counted  # == resumed_at: exactly that many more bytes, and not one more
    b_file = on(cluster.urls["b"], link["url"], path, cluster.front)
    assert httpx.get(b_file, headers={"Range": f"bytes=0-{left - 1}"}, timeout=60).status_code == 206
    over = httpx.get(b_file, headers={"Range": "bytes=0-0"}, timeout=30)
    assert over.status_code == 403 and over.json()["error"]["code"] == "download_cap_reached"
    admin = cluster.admin(cluster.urls["b"])
    started = audit_rows(admin, "download.start")
    assert [e["target"] for e in started if e["actor"] == f"link:{link['link_id']}"] == [path]
    assert [e["target"] for e in audit_rows(admin, "link.issue")].count(link["link_id"]) == 1


def audit_rows(admin: httpx.Client, action: str) -> list[dict[str, Any]]:
    """Every audit row of ``action`` (the log read page by page)."""
    rows: list[dict[str, Any]] = []
    while True:
        after = rows[-1]["id"] if rows else 0
        page = admin.get("/api/admin/audit", params={"action": action, "limit": 1000, "after": after})
        if not page.json()["entries"]:
            return rows
        rows += page.json()["entries"]


def test_the_replica_bench_books_stay_exact_under_concurrent_clients(tmp_path: Path) -> None:
    """bench/bench_hub_replicas.py, tiny: 4 clients, 8 operations over 2 replicas on one SQLite file;
    it fails unless every audit count and per-link byte counter equals the completed operations."""
    bench = Path(__file__).resolve().parents[2] / "bench" / "bench_hub_replicas.py"
    args = ["--clients", "4", "--ops", "8", "--variant", "llama-debug-2-chat",
            "--work", str(tmp_path / "work"), "--out-dir", str(tmp_path)]
    done = subprocess.run([sys.executable, str(bench), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "hub-replicas.json").read_text())
    assert result["errors"] == 0 and result["completed"] == 8 and result["books_exact"] is True
    per_op = result["files_per_operation"]
    assert per_op >= 3 and result["requests"] == 8 * (5 + per_op)
    assert result["latency_ms"]["download"]["n"] == 8 * per_op
    assert (tmp_path / "hub-replicas.md").read_text().count("| register |") == 1


NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None)


def test_the_committed_nginx_config_balances_the_replicas(cluster: Cluster, tmp_path: Path) -> None:
    """deploy/nginx-llamahub.conf, with the replicas' and its own ports put in, in front of A and B:
    a user registers, gets a link and downloads a file in two ranges through it."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    site = (Path(__file__).resolve().parents[2] / "deploy" / "nginx-llamahub.conf").read_text()
    for old, new in (("127.0.0.1:8001", f"127.0.0.1:{cluster.ports['a']}"),
                     ("127.0.0.1:8002", f"127.0.0.1:{cluster.ports['b']}"),
                     ("listen 8080;", f"listen 127.0.0.1:{port};")):
        site = site.replace(old, new)
    (tmp_path / "site.conf").write_text(site)
    temp = " ".join(f"{k}_temp_path {tmp_path / k};"
                    for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"daemon off; {'user root;' if os.geteuid() == 0 else ''} pid {tmp_path / 'nginx.pid'}; "
        f"error_log {tmp_path / 'error.log'};\n"
        f"events {{}}\nhttp {{ access_log off; {temp} include {tmp_path / 'site.conf'}; }}\n")
    proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        user = register(url)
        link = user.post("/api/links", json={"variant": BIG}).json()
        files = manifest_files(url, link["url"])
        path = max(files, key=lambda p: files[p]["size"])
        whole = on(url, link["url"], path, cluster.front)
        first = httpx.get(whole, headers={"Range": "bytes=0-999999"}, timeout=60)
        rest = httpx.get(whole, headers={"Range": "bytes=1000000-"}, timeout=60)
        assert (first.status_code, rest.status_code) == (206, 206)
        assert hashlib.sha256(first.content + rest.content).hexdigest() == files[path]["sha256"]
        assert manifest_files(url, link["url"])[path]["bytes_served"] == files[path]["size"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
