"""Helpers of the hub tests: the running hub, accounts, link URLs (fixtures are in conftest.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from llamahub import crypto

CLI = [sys.executable, "-m", "llamahub.cli"]
# The shared test hubs register users and issue links for the whole suite from 127.0.0.1, far over
# the production rate limits; tests/hub/test_hostile.py checks the limits on a hub of its own.
NO_RATE_LIMITS = [arg for name in ("register.ip", "link.token", "link.ip", "sign-in.ip", "sign-in.token")
                  for arg in ("--rate-limit", f"{name}=off")]
STARTUP_TIMEOUT = 60.0


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Hub:
    url: str
    data: Path
    admin_token: str
    port: int
    _clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self._clients.append(c)
        return c

    def admin(self) -> httpx.Client:
        return self.client(self.admin_token)

    def close(self) -> None:
        for c in self._clients:
            c.close()


def wait_ready(url: str, proc: subprocess.Popen, log: Path, *, path: str = "/api/health",
               what: str = "hub server", timeout: float = STARTUP_TIMEOUT) -> None:
    """Return once ``url + path`` answers 200; fail the test with the log if ``proc`` exits or
    ``timeout`` passes first (the process is then killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{what} did not start within {timeout} s:\n{log.read_text()}")


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def init_hub(data: Path, *, seed: bool = True) -> str:
    """``hub init`` (and the llama-debug variants unless ``seed`` is off); returns the admin token."""
    init = run_cli("hub", "init", "--data", str(data), "--json")
    assert init.returncode == 0, init.stderr
    if seed:
        seeded = run_cli("hub", "seed-demo", "--data", str(data))
        assert seeded.returncode == 0, seeded.stderr
    return json.loads(init.stdout)["admin_token"]


@contextmanager
def serving(data: Path, admin_token: str, *args: str, port: int | None = None,
            log: Path | None = None) -> Iterator[tuple[Hub, subprocess.Popen]]:
    """``hub serve`` with ``args`` on ``port`` (default: a free one), its log in ``log`` (default
    data/server.log); yields once it answers, stops it on exit."""
    port, log = port or free_port(), log or data / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*CLI, "hub", "serve", "--data", str(data), "--port", str(port),
                                 "--log-level", "warning", *args], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        hub = Hub(url=url, data=data, admin_token=admin_token, port=port)
        yield hub, proc
        hub.close()
    finally:
        stop(proc)


@dataclass
class Account:
    id: str
    email: str
    organisation: str
    token: str
    http: httpx.Client

    def link(self, expect: int = 201, **body: Any) -> dict[str, Any]:
        response = self.http.post("/api/links", json=body)
        assert response.status_code == expect, response.text
        return response.json()


MakeUser = Callable[..., Account]


def link_query(url: str) -> dict[str, str]:
    """Policy, Signature and Key-Pair-Id of a signed link."""
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def file_url(link_url: str, path: str) -> str:
    assert "/*?" in link_url
    return link_url.replace("*", path, 1)


def manifest(hub: Hub, link_url: str) -> dict[str, Any]:
    response = httpx.get(f"{hub.url}/api/links/manifest", params=link_query(link_url))
    assert response.status_code == 200, response.text
    return response.json()


def downloads(hub: Hub, link_url: str) -> dict[str, int]:
    return {f["path"]: f["downloads"] for f in manifest(hub, link_url)["files"]}


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def published_keys(hub: Hub) -> dict[str, crypto.Ed25519PublicKey]:
    """What an offline client keeps: the hub's non-revoked public keys by id."""
    doc = httpx.get(f"{hub.url}/.well-known/llamahub-keys.json").json()
    return {k["kid"]: crypto.public_key_from_raw(crypto.b64url_decode(k["x"]))
            for k in doc["keys"] if not k["revoked"]}
