"""An OpenAPI-driven fuzz run (schemathesis) over every route of ``llamahub serve``: whatever the
body, no answer is a 5xx and the server keeps serving. Bodies that name a model are pointed at a
served one with at most 8 new tokens, so the run reaches generation and stays short
(``FUZZ_EXAMPLES`` per route and mode, default 12; at most ``FUZZ_SECONDS``, default 30)."""

from __future__ import annotations

import os
import time

import pytest
from servetest import API_KEYS, Server

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import load_all_checks  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
SECONDS = float(os.environ.get("FUZZ_SECONDS", "30"))
UVICORN_REFUSAL = "Invalid HTTP request received."


def _bounded(body: object) -> object:
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        body["model"] = "llama-debug-2-chat"
        for key in ("max_tokens", "max_completion_tokens"):
            if not isinstance(body.get(key), int) or body[key] > 8:
                body[key] = 8
    return body


def test_no_request_gets_a_5xx(server: Server) -> None:
    load_all_checks()
    from schemathesis import checks as c

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5
    headers = {"Authorization": f"Bearer {API_KEYS[0]}"}
    deadline, sent = time.monotonic() + SECONDS, {"n": 0, "ok": 0}

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: object) -> None:
                if time.monotonic() > deadline:
                    return
                case.headers = {**(case.headers or {}), **headers}  # type: ignore[attr-defined]
                case.body = _bounded(case.body)  # type: ignore[attr-defined]
                response = case.call(base_url=server.url, timeout=60)  # type: ignore[attr-defined]
                sent["n"] += 1
                sent["ok"] += response.status_code == 200
                if response.status_code == 400 and response.text in (UVICORN_REFUSAL, ""):
                    return  # refused by uvicorn's HTTP parser before the app
                case.validate_response(response, checks=[c.not_a_server_error])  # type: ignore[attr-defined]
                if response.status_code >= 400:
                    assert set(response.json()["error"]) == {"message", "type", "param", "code"}

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE
    print(f"fuzz: {sent}")
    assert sent["n"] >= len(operations) and sent["ok"] > 0
    assert "Traceback" not in server.log.read_text()
