"""Crash safety: the hub runs in its own process and is killed with SIGKILL mid-work, then restarted.

- Mid-download: a client reads part of a 64 MiB file through a signed link and stops reading;
  the server is killed while it is sending. After a restart on the same data dir and port,
  ``curl -C -`` finishes the file, ``md5sum -c`` passes, and the resume cost only the bytes it fetched.
- Mid-acceptance: client threads keep accepting licenses and updating profiles while the
  server is killed after a random delay, several times. After each restart the SQLite database is
  opened directly and checked: integrity, every acceptance with exactly one audit row (and no audit
  row without its acceptance), no half-written rows, every answered request durable.

All traffic goes to 127.0.0.1. Every server process is killed in ``finally``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hubtest import CLI, NO_RATE_LIMITS, file_url, free_port, run_cli, stop, wait_ready

from llamahub.model.writer import generate_checkpoint
from llamahub.registry import _builtin

VARIANT = "llama-debug-3.1"
BIG = f"{VARIANT}/large.bin"  # served path of the big file (HF folders are served under <variant>/)
BIG_SIZE = 64 << 20
READ_BEFORE_KILL = 8 << 20
KILLS = 6  # kill/restart cycles of the acceptance test
KILL_DELAY = (0.05, 0.6)  # seconds of hammering before each SIGKILL
HAMMER_BUDGET = 30.0  # seconds; no new cycle starts after this
WORKERS = 4
USERS = 24
USES = (["chatbot"], ["research"], ["chatbot", "research"])


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian: apt-get install -y {tool})")
    return path


# --- the hub process -------------------------------------------------------------------------------


class Server:
    """``llamahub hub serve`` in a child process, on a fixed port so links stay valid across restarts."""

    def __init__(self, data: Path, port: int) -> None:
        self.data, self.port = data, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = data / "server.log"
        self.proc: subprocess.Popen | None = None
        self.kills = 0

    def start(self) -> None:
        assert self.proc is None, "already running"
        with self.log.open("a") as out:
            self.proc = subprocess.Popen([*CLI, "hub", "serve", "--data", str(self.data), "--host",
                                          "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
                                          *NO_RATE_LIMITS],
                                         stdout=out, stderr=subprocess.STDOUT)
        wait_ready(self.url, self.proc, self.log)

    def kill(self) -> None:
        """SIGKILL: no shutdown handler, no flush, no rollback."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL
        self.proc = None
        self.kills += 1

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            stop(proc)


@dataclass(frozen=True)
class HubData:
    data: Path
    big_md5: str
    big_sha256: str


@pytest.fixture(scope="module")
def hub_data(tmp_path_factory: pytest.TempPathFactory) -> HubData:
    """An initialised data dir with llama-debug-3.1 imported from an HF folder that also holds a
    64 MiB random ``large.bin`` and a Meta-style ``checklist.chk`` for it (the HF importer serves
    every file of the folder)."""
    data = tmp_path_factory.mktemp("crash-hub")
    init = run_cli("hub", "init", "--data", str(data), "--json")
    assert init.returncode == 0, init.stderr
    folder = generate_checkpoint(_builtin().resolve(VARIANT), tmp_path_factory.mktemp("src"), fmt="hf")
    md5, sha = hashlib.md5(), hashlib.sha256()
    rng = np.random.default_rng(7)
    with (folder / "large.bin").open("wb") as f:
        for _ in range(BIG_SIZE >> 22):
            block = rng.bytes(4 << 20)
            md5.update(block)
            sha.update(block)
            f.write(block)
    (folder / "checklist.chk").write_text(f"{md5.hexdigest()}  large.bin\n")
    imported = run_cli("hub", "import", str(folder), "--variant", VARIANT, "--data", str(data))
    assert imported.returncode == 0, imported.stderr
    return HubData(data, md5.hexdigest(), sha.hexdigest())


@pytest.fixture
def server(hub_data: HubData) -> Iterator[Server]:
    s = Server(hub_data.data, free_port())
    try:
        s.start()
        yield s
    finally:
        s.stop()


def register(url: str, tag: str, *, accept: tuple[str, ...] = ()) -> tuple[str, str]:
    """(user id, token) of a fresh user with a modest profile."""
    r = httpx.post(f"{url}/api/users", json={"email": f"{tag}@example.com", "name": tag,
                                             "organisation": f"Org {tag}", "country": "DE"})
    assert r.status_code == 201, r.text
    user, token = r.json()["user"]["id"], r.json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    r = httpx.put(f"{url}/api/profile", headers=auth, json={"mau": 1000, "intended_uses": ["chatbot"]})
    assert r.status_code == 200, r.text
    for license_id in accept:
        r = httpx.post(f"{url}/api/licenses/{license_id}/accept", headers=auth)
        assert r.status_code == 201, r.text
    return user, token


def issue_link(url: str, token: str, **body: Any) -> str:
    r = httpx.post(f"{url}/api/links", headers={"Authorization": f"Bearer {token}"}, json=body)
    assert r.status_code == 201, r.text
    return r.json()["url"]


def manifest_files(url: str, link: str) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"{url}/api/links/manifest?{link.partition('?')[2]}")
    assert r.status_code == 200, r.text
    return {f["path"]: f for f in r.json()["files"]}


# --- mid-download ----------------------------------------------------------------------------------


def test_sigkill_mid_download_then_curl_resumes(server: Server, hub_data: HubData, tmp_path: Path) -> None:
    curl, md5sum = need("curl"), need("md5sum")
    _, token = register(server.url, "dl-crash", accept=("llama-debug",))
    link = issue_link(server.url, token, variant=VARIANT, max_downloads=2)
    entry = manifest_files(server.url, link)[BIG]
    assert (entry["size"], entry["md5"], entry["sha256"]) == (BIG_SIZE, hub_data.big_md5, hub_data.big_sha256)

    target = tmp_path / "large.bin"
    received, cut = 0, False
    with target.open("wb") as out, httpx.Client(timeout=10) as client, \
            client.stream("GET", file_url(link, BIG)) as response:
        assert response.status_code == 200
        try:
            for chunk in response.iter_raw(1 << 16):
                out.write(chunk)
                received += len(chunk)
                if received >= READ_BEFORE_KILL and server.proc is not None:
                    server.kill()  # the server is blocked sending the rest: mid-transfer
        except httpx.TransportError:
            cut = True  # what was in flight arrived; then the connection died
    assert server.kills == 1 and cut, "the transfer was not interrupted"
    assert READ_BEFORE_KILL <= target.stat().st_size == received < BIG_SIZE

    server.start()  # same data dir, same port: the link URL is unchanged
    # the bytes were counted before they were sent (the first slice: the whole 64 MiB file)
    assert manifest_files(server.url, link)[BIG]["bytes_served"] == BIG_SIZE
    resumed = subprocess.run([curl, "-sS", "--fail", "-C", "-", "-o", str(target), file_url(link, BIG)],
                             capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    checklist = subprocess.run([curl, "-sS", "--fail", "-o", str(tmp_path / "checklist.chk"),
                                file_url(link, f"{VARIANT}/checklist.chk")],
                               capture_output=True, text=True, timeout=60)
    assert checklist.returncode == 0, checklist.stderr
    check = subprocess.run([md5sum, "-c", "checklist.chk"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0 and "large.bin: OK" in check.stdout, check.stdout + check.stderr
    assert target.stat().st_size == BIG_SIZE
    assert hashlib.sha256(target.read_bytes()).hexdigest() == entry["sha256"]

    # the resume cost only what it fetched: of the cap of 2 × the file, exactly what the client had
    # received before the kill is left; a whole copy more is refused, a range that fits is served
    assert manifest_files(server.url, link)[BIG]["bytes_left"] == received
    with httpx.Client(timeout=30) as client:
        whole = client.get(file_url(link, BIG))
        assert whole.status_code == 403 and whole.json()["error"]["code"] == "download_cap_reached"
        tail = client.get(file_url(link, BIG), headers={"Range": f"bytes={BIG_SIZE - received}-"})
        assert tail.status_code == 206 and len(tail.content) == received
        probe = client.get(file_url(link, BIG), headers={"Range": "bytes=0-0"})
        assert probe.status_code == 403  # nothing is left, not even one byte
    assert manifest_files(server.url, link)[BIG]["bytes_left"] == 0


# --- mid-acceptance --------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the clients were told: answered acceptances and profile updates must survive a kill."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: dict[tuple[str, str], str] = field(default_factory=dict)  # (user, license) -> acceptance id
    profiles: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # user -> updated_at
    answered: int = 0
    cut: int = 0  # requests that got no answer because the server died under them
    errors: list[str] = field(default_factory=list)

    def acceptance(self, user: str, license_id: str, response: httpx.Response) -> None:
        with self.lock:
            self.answered += 1
            if response.status_code not in (200, 201):
                self.errors.append(f"accept {license_id}: {response.status_code} {response.text[:200]}")
                return
            body = response.json()
            got = body["acceptance"]["id"]
            known = self.accepted.setdefault((user, license_id), got)
            if known != got or body["created"] != (response.status_code == 201):
                self.errors.append(f"{user} {license_id}: acceptance {got}, earlier {known}, "
                                   f"created {body['created']}")

    def profile(self, user: str, response: httpx.Response) -> None:
        with self.lock:
            self.answered += 1
            if response.status_code != 200:
                self.errors.append(f"profile: {response.status_code} {response.text[:200]}")
                return
            self.profiles[user].append(response.json()["updated_at"])


def hammer(url: str, tokens: dict[str, str], work: Iterator[tuple[str, str]], work_lock: threading.Lock,
           stop: threading.Event, ledger: Ledger, seed: int) -> None:
    """Accept (user, license) after (user, license) and update that user's profile, until the server dies."""
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            with work_lock:
                user, license_id = next(work)
            auth = {"Authorization": f"Bearer {tokens[user]}"}
            try:
                accepted = client.post(f"/api/licenses/{license_id}/accept", headers=auth)
                ledger.acceptance(user, license_id, accepted)
                profile = {"mau": rng.randrange(1, 10**6), "intended_uses": rng.choice(USES)}
                ledger.profile(user, client.put("/api/profile", headers=auth, json=profile))
            except httpx.TransportError:
                with ledger.lock:
                    ledger.cut += 1
                return


def work_items(users: list[str], licenses: list[str], rng: random.Random) -> Iterator[tuple[str, str]]:
    """Every (user, license) once in random order (first acceptances), then random repeats forever."""
    pairs = [(u, lic) for u in users for lic in licenses]
    rng.shuffle(pairs)
    yield from pairs
    while True:
        yield rng.choice(pairs)


def check_database(db: Path, users: list[str], digests: dict[str, str],
                   ledger: Ledger) -> dict[tuple[str, str], str]:
    """Open hub.db directly and check it; returns (user, license) -> acceptance id."""
    con = sqlite3.connect(db, timeout=30)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        ours = set(users)

        rows = [r for r in con.execute("SELECT id, user_id, license_id, text_sha256, accepted_at "
                                       "FROM acceptances") if r[1] in ours]
        acceptances = {r[0]: r for r in rows}
        pairs = Counter((r[1], r[2]) for r in rows)
        assert max(pairs.values(), default=1) == 1, "a license accepted twice by one user"
        for aid, _, license_id, digest, accepted_at in rows:  # complete rows only
            assert re.fullmatch(r"a_[0-9a-f]{16}", aid), aid
            assert license_id in digests and digest == digests[license_id], (aid, license_id, digest)
            assert dt.datetime.fromisoformat(accepted_at).tzinfo is not None, accepted_at

        audits: dict[str, list[tuple]] = defaultdict(list)
        for actor, target, detail in con.execute(
                "SELECT actor, target, detail FROM audit WHERE action = 'license.accept'"):
            d = json.loads(detail)
            if actor.removeprefix("user:") in ours:
                audits[d["acceptance_id"]].append((actor, target, d["text_sha256"]))
        orphans = set(audits) - set(acceptances)
        assert not orphans, f"audit rows claim acceptances that do not exist: {sorted(orphans)}"
        for aid, (_, user, license_id, digest, _) in acceptances.items():
            expected = [(f"user:{user}", license_id, digest)]
            assert audits.get(aid) == expected, f"acceptance {aid} has audit rows {audits.get(aid)}"

        for user in users:
            assert con.execute("SELECT count(*) FROM tokens WHERE user_id = ?", (user,)).fetchone() == (1,)
            history = con.execute("SELECT changed_at, profile FROM profile_history WHERE user_id = ? "
                                  "ORDER BY id", (user,)).fetchall()
            audited = con.execute("SELECT count(*) FROM audit WHERE action = 'profile.update' AND target = ?",
                                  (user,)).fetchone()[0]
            assert audited == len(history) >= 1, (user, audited, len(history))
            current = con.execute("SELECT mau, intended_uses, updated_at FROM profiles WHERE user_id = ?",
                                  (user,)).fetchone()
            last_at, last = history[-1][0], json.loads(history[-1][1])
            assert current == (last["mau"], json.dumps(last["intended_uses"]), last_at), (user, current, last)
            lost = set(ledger.profiles.get(user, ())) - {at for at, _ in history}
            assert not lost, f"answered profile updates of {user} are missing: {lost}"

        found = {(user, license_id): aid for aid, user, license_id, _, _ in rows}
        for pair, aid in ledger.accepted.items():  # answered before the kill: durable
            assert found.get(pair) == aid, f"answered acceptance {pair} {aid} is missing after the crash"
        return found
    finally:
        con.close()


def test_sigkill_during_acceptances_leaves_the_database_consistent(server: Server) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    url, db = server.url, server.data / "hub.db"
    r = httpx.get(f"{url}/api/licenses")
    assert r.status_code == 200
    digests = {lic["id"]: lic["text_sha256"] for lic in r.json()["licenses"]}
    tokens = dict(register(url, f"acc-{seed}-{i}") for i in range(USERS))
    users = list(tokens)
    work, work_lock, ledger = work_items(users, list(digests), rng), threading.Lock(), Ledger()

    deadline = time.monotonic() + HAMMER_BUDGET
    for cycle in range(KILLS):
        if time.monotonic() > deadline:
            break
        stop = threading.Event()
        threads = [threading.Thread(target=hammer, daemon=True,
                                    args=(url, tokens, work, work_lock, stop, ledger, rng.randrange(1 << 30)))
                   for _ in range(WORKERS)]
        for th in threads:
            th.start()
        time.sleep(rng.uniform(*KILL_DELAY))
        server.kill()
        stop.set()
        for th in threads:
            th.join(timeout=15)
            assert not th.is_alive()
        server.start()
        check_database(db, users, digests, ledger)
        assert not ledger.errors, f"seed {seed}, cycle {cycle}: {ledger.errors[:5]}"
    assert server.kills >= 3, f"only {server.kills} kill cycles ran within {HAMMER_BUDGET} s"
    assert ledger.cut >= 1, f"seed {seed}: no request was in flight at any kill"
    assert ledger.accepted, "no acceptance was answered between the kills"

    # after the last restart: every user can still accept every version, and has exactly one acceptance
    found = check_database(db, users, digests, ledger)
    with httpx.Client(base_url=url, timeout=10) as client:
        for user, token in tokens.items():
            auth = {"Authorization": f"Bearer {token}"}
            for license_id in digests:
                r = client.post(f"/api/licenses/{license_id}/accept", headers=auth)
                before = found.get((user, license_id))
                assert r.status_code == (200 if before else 201), (user, license_id, r.text)
                assert before in (None, r.json()["acceptance"]["id"])
                ledger.acceptance(user, license_id, r)
            status = client.get("/api/licenses/status", headers=auth).json()["licenses"]
            assert all(s["accepted"] and s["receipt"] for s in status)
    assert not ledger.errors, ledger.errors[:5]
    final = check_database(db, users, digests, ledger)
    assert set(final) == set(itertools.product(users, digests))

    # and it answers normally: a link for a user who went through all this, and a file through it
    assert httpx.get(f"{url}/api/health").json()["status"] == "ok"
    token = tokens[users[0]]
    httpx.put(f"{url}/api/profile", headers={"Authorization": f"Bearer {token}"},
              json={"mau": 1000, "intended_uses": ["chatbot"]}).raise_for_status()
    link = issue_link(url, token, variant=VARIANT)
    entry = manifest_files(url, link)[f"{VARIANT}/config.json"]
    body = httpx.get(file_url(link, f"{VARIANT}/config.json"))
    assert body.status_code == 200 and hashlib.md5(body.content).hexdigest() == entry["md5"]
