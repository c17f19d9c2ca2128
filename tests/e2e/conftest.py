"""Clients of the real hub (tests/conftest.py): each with its own LLAMAHUB_HOME, account and profile.

A client runs in-process (``use()`` sets its environment for ``llamahub.load``) or as
``llamahub`` subprocesses (``cli()``, ``popen()``) with the same environment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from clienttest import Client, MakeClient
from hubtest import Hub, MakeUser

from llamahub.client.config import LocalProfile, load_config, save_config


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
