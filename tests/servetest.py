"""Starting and stopping a real ``llamahub serve`` process for tests (tests/serve, tests/e2e)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from hubtest import CLI, free_port, stop, wait_ready


def start_server(args: list[str], env: dict[str, str], log: Path, timeout: float = 120) -> tuple[
        subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen([*CLI, "serve", *args, "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    wait_ready(url, proc, log, path="/health", what="llamahub serve", timeout=timeout)
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    stop(proc, timeout=20)
