"""A real hub on 127.0.0.1: `llamahub hub init`, `seed-demo` and `serve` run as subprocesses, once.

Clients are httpx and the real wget/curl binaries. Every test makes its own users (unique emails
and organisations) and links, so tests do not depend on each other's state.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator, Sequence

import httpx
import pytest
from hubtest import CLI, Account, Hub, MakeUser, free_port, run_cli, wait_ready


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    data = tmp_path_factory.mktemp("hub-data")
    init = run_cli("hub", "init", "--data", str(data), "--json")
    assert init.returncode == 0, init.stderr
    admin_token = json.loads(init.stdout)["admin_token"]
    seed = run_cli("hub", "seed-demo", "--data", str(data))
    assert seed.returncode == 0, seed.stderr
    port = free_port()
    log = data / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*CLI, "hub", "serve", "--data", str(data), "--port", str(port),
                                 "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        h = Hub(url=url, data=data, admin_token=admin_token, port=port)
        yield h
        h.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def make_user(hub: Hub) -> MakeUser:
    """Register a user; by default with a modest profile and the llama-debug license accepted."""

    def make(*, mau: int | None = 1_000, uses: Sequence[str] = ("chatbot",),
             certifications: Sequence[str] = (), accept: Sequence[str] = ("llama-debug",),
             organisation: str | None = None) -> Account:
        tag = uuid.uuid4().hex[:10]
        org = organisation or f"Org {tag}"
        response = httpx.post(f"{hub.url}/api/users", json={
            "email": f"user-{tag}@example.com", "name": f"U {tag}", "organisation": org, "country": "us"})
        assert response.status_code == 201, response.text
        body = response.json()
        account = Account(body["user"]["id"], body["user"]["email"], org, body["token"],
                          hub.client(body["token"]))
        if mau is not None:
            r = account.http.put("/api/profile", json={"mau": mau, "intended_uses": list(uses),
                                                       "certifications": list(certifications)})
            assert r.status_code == 200, r.text
        for license_id in accept:
            r = account.http.post(f"/api/licenses/{license_id}/accept")
            assert r.status_code == 201, r.text
        return account

    return make
