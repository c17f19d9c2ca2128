"""A client of the real hub for end-to-end tests: its own LLAMAHUB_HOME, account and profile.

A client runs in-process (``use()`` sets its environment for ``llamahub.load``) or as
``llamahub`` subprocesses (``cli()``, ``popen()``) with the same environment. The ``make_client``
fixture (tests/e2e/conftest.py) makes them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hubtest import CLI, Account, Hub


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
