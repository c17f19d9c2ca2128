"""``llamahub serve NAME`` end to end: the model comes through load() with its gates from a real hub,
and LLAMAHUB_OFFLINE=1 serves it again from the cache."""

from __future__ import annotations

import os
from pathlib import Path

import openai
import pytest
from clienttest import MakeClient
from hubtest import free_port
from servetest import start_server, stop_server

import llamahub

VARIANT = "llama-debug-2-chat"
HELLO = [{"role": "user", "content": "Hello"}]


def _ask(url: str) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    reply = client.chat.completions.create(model=VARIANT, temperature=0, max_tokens=16, messages=HELLO)
    return reply.choices[0].message.content or ""


def test_serve_by_name_then_offline(make_client: MakeClient, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client()
    env = os.environ | client.env | {"LLAMAHUB_CPU_KERNEL": "0"}
    proc, url = start_server(["debug:2-chat", "--dtype", "fp32"], env, tmp_path / "online.log")
    try:
        online = _ask(url)
    finally:
        stop_server(proc)
    client.use(monkeypatch, LLAMAHUB_CPU_KERNEL="0")
    with llamahub.load(VARIANT, dtype="fp32") as model:
        assert online == model.chat(HELLO, temperature=0, max_new_tokens=16)

    links = client.links()
    offline_env = env | {"LLAMAHUB_OFFLINE": "1"}
    proc, url = start_server([VARIANT, "--dtype", "fp32"], offline_env, tmp_path / "offline.log")
    try:
        assert _ask(url) == online
    finally:
        stop_server(proc)
    assert client.links() == links  # served from the cache: the hub issued nothing, counted nothing


def test_serve_refuses_without_the_license(make_client: MakeClient, tmp_path: Path) -> None:
    client = make_client(accept=())
    done = client.cli("serve", VARIANT, "--port", str(free_port()))
    assert done.returncode == 1
    assert "license" in done.stderr.lower() and "next:" in done.stderr
    assert client.blobs() == [] and client.links() == []  # refused before any link or download
