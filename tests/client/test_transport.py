"""The download engine's client reads the socket in 256 KiB pieces without changing httpx or
httpcore for anyone else in the process, and still honours a proxy from the environment."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpcore
import httpx
import pytest
from faultserver import FaultServer

from llamahub.client.download import DownloadOptions, RemoteFile, download
from llamahub.client.transport import NETWORK_READ, download_client
from llamahub.errors import DownloadError

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    s = FaultServer()
    s.files["big.bin"] = hashlib.sha256(b"x").digest() * (8 << 15)  # 8 MiB
    yield s
    s.close()


def _pieces(client: httpx.Client, url: str) -> list[int]:
    with client.stream("GET", url) as r:
        return [len(b) for b in r.iter_raw()]


@pytest.mark.usefixtures("no_proxy_env")
def test_the_engine_reads_wide_and_nobody_else_does(server: FaultServer, tmp_path: Path) -> None:
    default = httpcore.HTTP11Connection.READ_NUM_BYTES
    url = server.url("big.bin")
    with download_client(timeout=30, max_connections=4) as wide:
        pieces = _pieces(wide, url)
    assert sum(pieces) == 8 << 20 and max(pieces) > default and max(pieces) <= NETWORK_READ
    data = server.files["big.bin"]
    [got] = download([RemoteFile("big.bin", url, len(data), sha256=hashlib.sha256(data).hexdigest())],
                     tmp_path, options=DownloadOptions(workers=2, chunk_bytes=1 << 20, progress=False))
    assert got.path.read_bytes() == data
    assert default == httpcore.HTTP11Connection.READ_NUM_BYTES  # no process-wide change
    with httpx.Client(timeout=30) as plain:
        assert max(_pieces(plain, url)) <= default


def test_a_proxy_from_the_environment_is_used(no_proxy_env: None, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """The engine's requests go to HTTP_PROXY (here a listener that records them and answers 502)."""
    seen: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                seen.append(conn.recv(65536).split(b"\r\n")[0])
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        with pytest.raises(DownloadError):
            download([RemoteFile("a.bin", "http://files.invalid/a.bin", 10)], tmp_path,
                     options=DownloadOptions(retries=1, backoff=0.01, progress=False))
    finally:
        listener.close()
    assert seen and seen[0].startswith(b"GET http://files.invalid/a.bin")
