"""Clients of the real hub (tests/conftest.py): each with its own LLAMAHUB_HOME, account and profile.

A client runs in-process (``use()`` sets its environment for ``llamahub.load``) or as
``llamahub`` subprocesses (``cli()``, ``popen()``) with the same environment.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hubtest import CLI, Account, Hub, MakeUser

from llamahub.client.config import LocalProfile, load_config, save_config


@dataclass
class Client:
    home: Path
    hub: Hub
    account: Account
    env: dict[str, str] = field(default_factory=dict)

    def use(self, monkeypatch: pytest.MonkeyPatch, **extra: str) -> None:
        for key, value in (self.env | extra).items():
            monkeypatch.setenv(key, value)

    def cli(self, *args: str, timeout: float = 180, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                              env=os.environ | self.env | extra, stdin=subprocess.DEVNULL)

    def popen(self, *args: str, hub_url: str | None = None) -> subprocess.Popen:
        env = os.environ | self.env | ({"LLAMAHUB_HUB_URL": hub_url} if hub_url else {})
        return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, stdin=subprocess.DEVNULL)

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    def blobs(self) -> list[Path]:
        folder = self.cache / "blobs"
        return sorted(folder.iterdir()) if folder.is_dir() else []

    def links(self) -> list[dict]:
        response = self.account.http.get("/api/links")
        assert response.status_code == 200, response.text
        return response.json()["links"]


MakeClient = Callable[..., Client]


@pytest.fixture
def make_client(hub: Hub, make_user: MakeUser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MakeClient:
    """A client whose local profile matches its hub account (MAU, uses, accepted licenses)."""
    count = 0

    def make(*, mau: int = 1_000, uses: Sequence[str] = ("chatbot",),
             accept: Sequence[str] = ("llama-debug",)) -> Client:
        nonlocal count
        count += 1
        account = make_user(mau=mau, uses=uses, accept=accept)
        home = tmp_path / f"client-{count}"
        env = {"LLAMAHUB_HOME": str(home), "LLAMAHUB_HUB_URL": hub.url, "LLAMAHUB_TOKEN": account.token,
               "LLAMAHUB_PROGRESS": "0"}
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            cfg = load_config()
            profile = LocalProfile(organisation=account.organisation, country="US", mau=mau,
                                   intended_uses=tuple(uses))
            save_config(type(cfg)(hub_url=hub.url, token=account.token, email=account.email, profile=profile,
                                  cache=cfg.cache))
        return Client(home=home, hub=hub, account=account, env=env)

    return make


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to make every outgoing connection of this process fail (proves "zero network calls")."""
    import socket

    def block() -> None:
        def refuse(self: socket.socket, address: object) -> None:
            raise AssertionError(f"network call to {address} in offline mode")

        monkeypatch.setattr(socket.socket, "connect", refuse)
        monkeypatch.setattr(socket.socket, "connect_ex", refuse)

    return block
