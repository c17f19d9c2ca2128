"""The launcher of the embedded hub: with no hub configured, a real hub runs on 127.0.0.1 inside
this process. The one module that knows both the client and the hub: the client receives only a
URL and a token (``Session(embedded=embedded_hub)``), and the hub knows nothing of the client.


It is the same FastAPI app as ``llamahub hub serve``, served by uvicorn in a daemon thread on a
free port, with its data in ``<data dir>/embedded-hub``. The first use initialises it (signing
key, admin token), imports the tiny random ``llama-debug`` variants and registers a local
account whose token is kept beside the data. Several processes may share it: setup is locked and
SQLite (WAL) serialises writes.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamahub.client.config import LocalProfile, data_dir
from llamahub.client.locks import file_lock
from llamahub.errors import HubUnreachableError
from llamahub.fsutil import atomic_write

LOCAL_EMAIL = "you@localhost.localdomain"


@dataclass(frozen=True)
class EmbeddedHub:
    url: str
    token: str
    data: Path


_lock = threading.Lock()
_running: EmbeddedHub | None = None


def embedded_dir() -> Path:
    return data_dir() / "embedded-hub"


def _prepare(data: Path, profile: LocalProfile, echo: Callable[[str], None]) -> str:
    """Initialise, seed and register once (across processes); returns the local account's token."""
    from llamahub.hub.context import init_hub, open_store
    from llamahub.hub.importer import seed_demo

    account = data / "local-account.json"
    with file_lock(data / "setup.lock", what="the embedded hub's setup", waiting=echo):
        if account.is_file():
            return str(json.loads(account.read_text())["token"])
        store, blobs, _ = open_store(data, create=True)
        try:
            if not store.signing_keys():
                store.close()
                init_hub(data)
                store, blobs, _ = open_store(data)
            if not store.imported("llama-debug"):
                echo("embedded hub: generating and importing the tiny llama-debug variants (once)")
                with tempfile.TemporaryDirectory(dir=data, prefix="seed-") as work:
                    seed_demo(store, blobs, Path(work))
            user, token = store.create_user(LOCAL_EMAIL, os.environ.get("USER") or "local user",
                                            profile.organisation, profile.country)
        finally:
            store.close()
        atomic_write(account, json.dumps({"user_id": user["id"], "token": token}), mode=0o600)
        return token


def _serve(app: Any, sock: socket.socket) -> Any:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="llamahub-embedded-hub",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise HubUnreachableError("the embedded hub did not start",
                                      hint="set LLAMAHUB_HUB_URL to a running hub, or check the data "
                                           f"folder {embedded_dir()}")
        time.sleep(0.02)
    atexit.register(lambda: setattr(server, "should_exit", True))
    return server


def start_embedded(profile: LocalProfile, echo: Callable[[str], None] = lambda _m: None) -> EmbeddedHub:
    """The embedded hub of this process (started on first call)."""
    global _running
    with _lock:
        if _running is not None:
            return _running
        from llamahub.hub.app import create_app

        data = embedded_dir()
        data.mkdir(parents=True, exist_ok=True)
        token = _prepare(data, profile, echo)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        _serve(create_app(data, rate_limits={}), sock)  # one local user: no rate limits
        _running = EmbeddedHub(url=f"http://127.0.0.1:{sock.getsockname()[1]}", token=token, data=data)
        return _running


def embedded_hub(profile: LocalProfile, echo: Callable[[str], None]) -> tuple[str, str]:
    """(URL, token) of this process's embedded hub, started on first use: a ``Session`` starter."""
    running = start_embedded(profile, echo)
    return running.url, running.token
