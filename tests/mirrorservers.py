"""Real object stores on 127.0.0.1 for the mirror tests: moto's S3 server and Azurite.

moto comes with the test extra (``moto[server]``). Azurite comes from the npm registry:
``.ci/run`` installs it into ``.ci/azurite`` (``npm install --prefix .ci/azurite azurite``); a
test that needs it skips when neither that nor an ``azurite-blob`` on PATH is there.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hubtest import free_port

ROOT = Path(__file__).resolve().parents[1]
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's documented development account key (public; it only opens the local emulator)
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _wait(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


@contextmanager
def _running(cmd: list[str], port: int, what: str) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(port, proc, what)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


@dataclass
class S3Server:
    endpoint: str
    proc: subprocess.Popen

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="moto[server] is not installed (the test extra has it)")
    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _running(cmd, port, "moto's S3 server") as proc:
        yield S3Server(f"http://127.0.0.1:{port}", proc)


def azurite_command() -> str | None:
    local = ROOT / ".ci" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    return str(local) if local.is_file() else shutil.which("azurite-blob")


@dataclass
class AzureServer:
    endpoint: str  # http://127.0.0.1:PORT/devstoreaccount1
    proc: subprocess.Popen

    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={self.endpoint};")


@contextmanager
def azure_server(workdir: Path) -> Iterator[AzureServer]:
    pytest.importorskip("azure.storage.blob", reason="azure-storage-blob is not installed")
    command = azurite_command()
    if command is None:
        pytest.skip("Azurite is not installed (npm install --prefix .ci/azurite azurite)")
    port = free_port()
    cmd = [command, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(workdir),
           "--silent", "--skipApiVersionCheck", "--loose"]
    with _running(cmd, port, "Azurite") as proc:
        yield AzureServer(f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}", proc)
