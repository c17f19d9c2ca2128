"""Starting and stopping a real ``llamahub serve`` process for tests (tests/serve, tests/e2e), and
what the serve tests know of one."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
from hubtest import CLI, free_port, stop, wait_ready

API_KEYS = ("key-one", "key-two")
SLOTS = 4


@dataclass
class Server:
    url: str
    log: Path
    folders: dict[str, Path]  # served model name -> its folder

    def client(self, key: str = API_KEYS[0], **kw: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60, **kw)

    def stats(self, model: str) -> dict:
        response = httpx.get(f"{self.url}/stats", headers={"Authorization": f"Bearer {API_KEYS[1]}"})
        assert response.status_code == 200, response.text
        return response.json()["models"][model]


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
