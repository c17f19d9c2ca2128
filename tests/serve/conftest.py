"""A real ``llamahub serve`` process on 127.0.0.1 over the tiny debug chat models (Llama 2 and 3.1
formats), loaded from their folders; tests talk to it with the official ``openai`` client.

The CPU decode kernel is off (LLAMAHUB_CPU_KERNEL=0) in the server and in the in-process models
the tests compare with, so no test waits for its first compile; both run the same aten path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from servetest import API_KEYS, SLOTS, Server, start_server, stop_server


@pytest.fixture(autouse=True)
def no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAHUB_CPU_KERNEL", "0")


@pytest.fixture(scope="module")
def server(debug_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve")
    keys = tmp / "keys.txt"
    keys.write_text(f"# the test's keys\n{API_KEYS[0]}\n\n{API_KEYS[1]}\n")
    folders = {name: debug_root / name / name for name in ("llama-debug-2-chat", "llama-debug-3.1-instruct")}
    env = os.environ | {"LLAMAHUB_HOME": str(tmp / "home"), "LLAMAHUB_CPU_KERNEL": "0",
                        "LLAMAHUB_PROGRESS": "0"}
    args = [*map(str, folders.values()), "--dtype", "fp32", "--slots", str(SLOTS), "--threads", "1",
            "--api-keys-file", str(keys)]
    proc, url = start_server(args, env, tmp / "server.log")
    try:
        yield Server(url, tmp / "server.log", folders)
    finally:
        stop_server(proc)
