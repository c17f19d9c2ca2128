"""Continuous batching in the running server: concurrent streams share decode steps, each in its
own slot (answers unchanged), and a client that goes away frees its slot at once."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from servetest import API_KEYS, SLOTS, Server

MODEL = "llama-debug-2-chat"
PROMPTS = ["Once upon a time", "The llama", "In a land far away, there lived", "Hello"]


def _stream(server: Server, prompt: str, tokens: int) -> tuple[str, str | None]:
    chunks = server.client().completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=tokens,
                                                stream=True, extra_body={"ignore_eos": True})
    text, reason = "", None
    for chunk in chunks:
        text += chunk.choices[0].text
        reason = chunk.choices[0].finish_reason or reason
    return text, reason


def test_concurrent_streams_are_decoded_in_shared_steps(server: Server) -> None:
    alone = [_stream(server, p, 64) for p in PROMPTS]
    before = server.stats(MODEL)
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: _stream(server, p, 64), PROMPTS))
    after = server.stats(MODEL)
    assert together == alone  # each sequence in its own slot: nothing leaks between them
    assert all(reason == "length" for _, reason in together)
    steps = after["steps"] - before["steps"]
    shared = after["batched_steps"] - before["batched_steps"]
    assert shared > 0 and after["max_rows"] >= 2
    # 4 x 64 tokens (the first of each comes from its prefill) in fewer steps than one at a time
    assert steps < len(PROMPTS) * 63
    assert after["active"] == 0 and after["slots"] == SLOTS


def test_more_requests_than_slots_wait_their_turn(server: Server) -> None:
    prompts = [f"Story {i}:" for i in range(SLOTS + 2)]
    with ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(lambda p: _stream(server, p, 16), prompts))
    assert all(reason == "length" and text for text, reason in results)
    assert server.stats(MODEL)["max_rows"] <= SLOTS


def test_a_client_that_goes_away_frees_its_slot(server: Server) -> None:
    before = server.stats(MODEL)
    body = {"model": MODEL, "prompt": "Once", "max_tokens": 500, "stream": True, "ignore_eos": True,
            "temperature": 0}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {API_KEYS[0]}"}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        got = [line for line, _ in zip(lines, range(6), strict=False) if line.startswith("data:")]
        assert got
    # the connection is closed: the sequence is cancelled within a moment, long before 500 tokens
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = server.stats(MODEL)
        if now["cancelled"] > before["cancelled"] and now["active"] == 0:
            break
        time.sleep(0.05)
    assert now["cancelled"] == before["cancelled"] + 1 and now["active"] == 0
    assert now["tokens"] - before["tokens"] < 500
    # and the server goes on serving
    assert _stream(server, "Hello", 4)[1] == "length"
