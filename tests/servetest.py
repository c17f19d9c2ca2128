"""Starting and stopping a real ``llamahub serve`` process for tests (tests/serve, tests/e2e)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest
from hubtest import CLI, free_port


def start_server(args: list[str], env: dict[str, str], log: Path, timeout: float = 120) -> tuple[
        subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen([*CLI, "serve", *args, "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llamahub serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"llamahub serve did not start within {timeout} s:\n{log.read_text()}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
