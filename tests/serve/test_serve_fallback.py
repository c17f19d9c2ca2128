"""A backend with only its own ``Generator`` (the cuda backend's tensor-parallel engine, here on two
CPU ranks) is served one request at a time, over the same API, with the same greedy answers."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
from servetest import start_server, stop_server

import llamahub

NAME = "llama-debug-2-chat"
DIALOG = [{"role": "user", "content": "What is a llama?"}]


def test_a_generator_only_backend_is_served_one_request_at_a_time(llama2_debug_folder: Path,
                                                                   tmp_path: Path) -> None:
    env = os.environ | {"LLAMAHUB_HOME": str(tmp_path / "home"), "LLAMAHUB_CPU_KERNEL": "0"}
    args = [str(llama2_debug_folder), "--backend", "cuda", "--device", "cpu", "-o", "tp=2", "--dtype", "fp32",
            "--threads", "1"]
    proc, url = start_server(args, env, tmp_path / "server.log")
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        [entry] = client.models.list().data
        assert entry.model_extra["llamahub"]["engine"] == "serial"
        assert entry.model_extra["llamahub"]["backend"] == "cuda"

        def ask(_: int) -> str:
            reply = client.chat.completions.create(model=NAME, messages=DIALOG, temperature=0, max_tokens=24)
            return reply.choices[0].message.content or ""

        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(ask, range(3)))
        with llamahub.load(llama2_debug_folder, dtype="fp32") as model:
            assert answers == [model.chat(DIALOG, temperature=0, max_new_tokens=24)] * 3
        streamed = client.chat.completions.create(model=NAME, messages=DIALOG, temperature=0, max_tokens=24,
                                                  stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == answers[0]
        stats = httpx.get(f"{url}/stats").json()["models"][NAME]
        assert stats["finished"] == 4 and stats["steps"] > 0 and stats["max_rows"] == 1
    finally:
        stop_server(proc)
