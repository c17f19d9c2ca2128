"""An OpenAPI-driven fuzz run (schemathesis) over every route of a running hub, as an admin, as a
user and anonymously: no answer is a 5xx, and every answer fits the schema the hub declares
(status code, content type and body).

The hub is a process of its own (the fuzzer rotates keys, files grants and requests), with the
production rate limits. Examples are bounded per route and mode (``FUZZ_EXAMPLES``, default 12),
and each role's run stops generating after ``FUZZ_SECONDS`` (default 40 s), so the file fits CI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import httpx
import pytest
from hubtest import Hub, init_hub, serving

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import load_all_checks  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
SECONDS = float(os.environ.get("FUZZ_SECONDS", "40"))
UVICORN_REFUSAL = "Invalid HTTP request received."


@pytest.fixture(scope="module")
def fuzz_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    data = tmp_path_factory.mktemp("fuzz-hub")
    with serving(data, init_hub(data)) as (hub, proc):
        yield hub
        log = (data / "server.log").read_text()
        assert proc.poll() is None, f"the hub died under the fuzzer:\n{log}"
        assert "Traceback" not in log, log[-5000:]  # nothing unexpected, even logged


def user_token(hub: Hub) -> str:
    r = httpx.post(f"{hub.url}/api/users", json={"email": "fuzz@example.com", "name": "Fuzz",
                                                 "organisation": "Fuzz Org", "country": "NL"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.put(f"{hub.url}/api/profile", headers=headers,
                     json={"mau": 10, "intended_uses": ["chatbot"]}).status_code == 200
    assert httpx.post(f"{hub.url}/api/licenses/llama-debug/accept", headers=headers).status_code == 201
    return token


def checks() -> list:
    load_all_checks()
    from schemathesis import checks as c

    return [c.not_a_server_error, c.status_code_conformance, c.content_type_conformance,
            c.response_schema_conformance]


def test_fuzz_every_route_as_admin_user_and_anonymous(fuzz_hub: Hub) -> None:
    tokens = {"admin": fuzz_hub.admin_token, "user": user_token(fuzz_hub), "anonymous": None}
    schema = schemathesis.openapi.from_url(f"{fuzz_hub.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30  # every JSON route, the file route's GET and HEAD
    started, calls, per_role = time.monotonic(), {"sent": 0, "refused_by_uvicorn": 0}, {}
    for role, token in tokens.items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        deadline, before = time.monotonic() + SECONDS, calls["sent"]
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if time.monotonic() > deadline:
                    break
                _fuzz(operation, mode, fuzz_hub.url, headers, deadline, calls)
        per_role[role] = calls["sent"] - before
        assert per_role[role] >= len(operations)  # every route was called in every role
    elapsed = time.monotonic() - started
    print(f"fuzz: {per_role} requests over {len(operations)} operations in {elapsed:.1f} s "
          f"({calls['refused_by_uvicorn']} refused by uvicorn's own HTTP parser)")
    # the hub still answers its append-only logs after the run
    admin = httpx.get(f"{fuzz_hub.url}/api/admin/audit", params={"limit": 1000},
                      headers={"Authorization": f"Bearer {tokens['admin']}"})
    assert admin.status_code == 200 and admin.json()["entries"]


def _fuzz(operation: object, mode: GenerationMode, url: str, headers: dict[str, str], deadline: float,
          calls: dict[str, int]) -> None:
    strategy = operation.as_strategy(generation_mode=mode)  # type: ignore[attr-defined]

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
    @given(case=strategy)
    def run(case: object) -> None:
        if time.monotonic() > deadline:
            return
        merged = {**(case.headers or {}), **headers}  # type: ignore[attr-defined]
        case.headers = merged  # type: ignore[attr-defined]
        calls["sent"] += 1
        response = case.call(base_url=url, timeout=20)  # type: ignore[attr-defined]
        if response.status_code == 400 and response.text in (UVICORN_REFUSAL, "") and \
                response.headers.get("content-type", [""])[0].startswith("text/plain"):
            calls["refused_by_uvicorn"] += 1  # a request line HTTP itself rejects never reaches the hub
            return
        case.validate_response(response, checks=checks())  # type: ignore[attr-defined]

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        assert mode == GenerationMode.NEGATIVE  # a route without inputs has no invalid ones
