"""Issue 20 replayed: every request an attacker sent a running hub, each now refused with the right 4xx.

The hub here is a process of its own (its own data dir, tight rate limits), driven over real
HTTP with httpx, curl and raw sockets. After the attacks the audit log and the profile history
still answer, and a loop of maximum-size requests grows the database by a bounded amount.
"""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hubtest import Account, Hub, error_code, file_url, init_hub, manifest, serving

from llamahub.hub.fields import MAX_MAU
from llamahub.hub.guard import MAX_BODY

SHARD = "llama-debug-2-chat/consolidated.00.pth"
LIMITS = {"register.ip": "40/60", "link.token": "6/60", "link.ip": "1000/60", "sign-in.ip": "5/60"}
EVIL = "http://evil.example"
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    data = tmp_path_factory.mktemp("hostile-hub")
    limits = [arg for name, rate in LIMITS.items() for arg in ("--rate-limit", f"{name}={rate}")]
    with serving(data, init_hub(data), *limits) as (hub, _):
        yield hub


def register(hub: Hub, *, country: str = "DE", mau: int = 1000) -> Account:
    tag = uuid.uuid4().hex[:10]
    r = httpx.post(f"{hub.url}/api/users", json={"email": f"x-{tag}@example.com", "name": "X",
                                                 "organisation": f"Org {tag}", "country": country})
    assert r.status_code == 201, r.text
    body = r.json()
    account = Account(body["user"]["id"], body["user"]["email"], f"Org {tag}", body["token"],
                      hub.client(body["token"]))
    profile = account.http.put("/api/profile", json={"mau": mau, "intended_uses": ["chatbot"]})
    assert profile.status_code == 200
    assert account.http.post("/api/licenses/llama-debug/accept").status_code == 201
    return account


def served(hub: Hub, url: str, path: str = SHARD) -> dict[str, Any]:
    return next(f for f in manifest(hub, url)["files"] if f["path"] == path)


def db_bytes(hub: Hub) -> int:
    """The database's size as SQLite sees it (WAL frames included)."""
    with sqlite3.connect(f"file:{hub.data / 'hub.db'}?mode=ro", uri=True) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        return pages * conn.execute("PRAGMA page_size").fetchone()[0]


def assert_still_answering(hub: Hub, account: Account) -> None:
    audit = hub.admin().get("/api/admin/audit")
    assert audit.status_code == 200 and audit.json()["entries"]
    history = account.http.get("/api/profile/history")
    assert history.status_code == 200 and history.json()["history"]


# --- download caps ------------------------------------------------------------------------------------------


def test_ranges_not_starting_at_zero_count_against_the_cap(target: Hub) -> None:
    url = register(target).link(variant="llama-debug-2-chat", max_downloads=2)["url"]
    size = served(target, url)["size"]
    assert httpx.get(file_url(url, SHARD)).status_code == 200
    answers = [httpx.get(file_url(url, SHARD), headers={"Range": "bytes=1-"}) for _ in range(6)]
    assert [a.status_code for a in answers] == [206] + [403] * 5  # one more copy (less a byte), no more
    assert all(error_code(a) == "download_cap_reached" for a in answers[1:])
    assert served(target, url)["bytes_served"] == 2 * size - 1


def test_probes_do_not_exhaust_the_cap(target: Hub) -> None:
    url = register(target).link(variant="llama-debug-2-chat", max_downloads=2)["url"]
    for _ in range(10):
        probe = httpx.get(file_url(url, SHARD), headers={"Range": "bytes=0-0"})
        assert probe.status_code == 206 and len(probe.content) == 1
    assert served(target, url)["bytes_served"] == 10
    assert httpx.get(file_url(url, SHARD)).status_code == 200  # a whole copy still fits
    assert served(target, url)["downloads"] == pytest.approx(1.0, abs=0.01)


# --- body size ----------------------------------------------------------------------------------------------


def big_profile(mb: int) -> bytes:
    cert = "c" * (1_600_000 if mb > 1 else 100)
    return json.dumps({"mau": 1, "intended_uses": ["chatbot"], "certifications": [cert] * 32}).encode()


def test_a_51_mb_body_is_refused_before_it_is_read(target: Hub, tmp_path: Path) -> None:
    account = register(target)
    before = db_bytes(target)
    body = big_profile(51)
    assert len(body) > 51_000_000
    r = account.http.put("/api/profile", content=body, headers=JSON)
    assert r.status_code == 413 and error_code(r) == "body_too_large"
    assert f"{MAX_BODY:,} bytes" in r.json()["error"]["message"] and r.json()["error"]["hint"]
    for path in ("/api/links", "/api/enterprise/requests", "/api/users"):  # other routes alike
        r = account.http.post(path, content=body, headers=JSON)
        assert r.status_code == 413 and error_code(r) == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts the streamed bytes
        for i in range(0, len(body), 1 << 20):
            yield body[i:i + 1 << 20]

    streamed = account.http.put("/api/profile", content=chunks(), headers=JSON)
    assert streamed.status_code == 413 and error_code(streamed) == "body_too_large"
    if shutil.which("curl"):
        (tmp_path / "body.json").write_bytes(body)
        out = subprocess.run(["curl", "-sS", "-X", "PUT", "-H", f"Authorization: Bearer {account.token}",
                              "-H", "content-type: application/json",
                              "--data-binary", f"@{tmp_path / 'body.json'}",
                              "-w", "\n%{http_code}", f"{target.url}/api/profile"],
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.rstrip().endswith("413"), out.stdout[-300:] + out.stderr
    assert db_bytes(target) - before < 64 * 1024  # nothing of it was stored
    assert account.http.get("/api/profile").json()["certifications"] == []


def test_the_database_grows_by_a_bounded_amount_per_request(target: Hub) -> None:
    account = register(target)
    longest = {"mau": MAX_MAU, "intended_uses": ["chatbot"] * 64, "certifications": ["é" * 200] * 32,
               "eu_domiciled": True}
    loops = 40
    before = db_bytes(target)
    for i in range(loops):
        body = dict(longest, certifications=[f"{i:03d}" + "é" * 197] * 32)
        r = account.http.put("/api/profile", json=body)
        assert r.status_code == 200, r.text
    grown = db_bytes(target) - before
    per_request = grown / loops
    print(f"database growth: {grown:,} bytes for {loops} maximum-size profile updates "
          f"({per_request:,.0f} per request, body limit {MAX_BODY:,})")
    assert per_request < 4 * MAX_BODY  # a history row and an audit row (before and after): bounded
    assert_still_answering(target, account)


# --- text, integers, dates ----------------------------------------------------------------------------------


def test_lone_surrogates_are_refused_and_the_logs_keep_answering(target: Hub) -> None:
    account = register(target)
    for raw in ('{"mau": 1, "intended_uses": [], "certifications": ["\\ud800"]}',
                '{"mau": 1, "intended_uses": [], "certifications": ["ok\\udfff"]}',
                '{"mau": 1, "intended_uses": [], "certifications": ["nul\\u0000"]}'):
        r = account.http.put("/api/profile", content=raw.encode(), headers=JSON)
        assert r.status_code == 422 and error_code(r) == "invalid_request", r.text
        assert "surrogate" in r.text or "NUL" in r.text
    ok = account.http.put("/api/profile", json={"mau": 1, "intended_uses": [], "certifications": ["ISO 😀"]})
    assert ok.status_code == 200  # a real astral character is fine
    note = account.http.post("/api/enterprise/requests", content=b'{"families": ["llama-2"], "mau": 9, '
                             b'"note": "\\udbff"}', headers=JSON)
    assert note.status_code == 422
    assert_still_answering(target, account)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/admin/grants", {"organisation": "Big", "families": ["llama-2"], "max_mau": 10**30}),
    ("POST", "/api/admin/grants", {"organisation": "Big", "families": ["llama-2"],
                                   "expires": "9999-12-31T00:00:00Z"}),
    ("POST", "/api/admin/grants", {"organisation": "Big", "families": ["x" * 5000]}),
    ("GET", "/api/admin/audit?after=1000000000000000000000000000000", None),
    ("GET", "/api/admin/audit?after=-1", None),
    ("GET", f"/api/admin/audit?action={'a' * 5000}", None),
    ("GET", f"/api/admin/grants?organisation={'o' * 5000}", None),
])
def test_unbounded_admin_values_are_refused(target: Hub, method: str, path: str, body: Any) -> None:
    r = target.admin().request(method, path, json=body)
    assert r.status_code == 422 and error_code(r) == "invalid_request", r.text


def test_approving_with_unbounded_values_is_refused(target: Hub) -> None:
    account = register(target, mau=800_000_000)
    request = account.http.post("/api/enterprise/requests",
                                json={"families": ["llama-2"], "mau": 800_000_000})
    assert request.status_code == 201
    rid = request.json()["request"]["id"]
    admin = target.admin()
    for body in ({"max_mau": 10**30}, {"expires": "9999-12-31T00:00:00Z"},
                 {"not_before": "0001-01-01T00:00:00Z"}):
        r = admin.post(f"/api/admin/enterprise/requests/{rid}/approve", json=body)
        assert r.status_code == 422, r.text
    assert admin.post(f"/api/admin/enterprise/requests/{rid}/approve", json={}).status_code == 200


def test_country_codes_come_from_the_iso_list(target: Hub) -> None:
    for bad in ("XX", "ZZ", "UK", "EU", "A1", "D€"):
        r = httpx.post(f"{target.url}/api/users", json={"email": f"{uuid.uuid4().hex[:8]}@example.com",
                                                        "name": "C", "organisation": "C", "country": bad})
        assert r.status_code == 422 and "ISO 3166-1" in r.text, (bad, r.text)
    assert register(target, country="gb").http.get("/api/users/me").json()["user"]["country"] == "GB"


# --- unexpected errors --------------------------------------------------------------------------------------


def test_an_unexpected_error_answers_in_our_shape_and_closes_the_connection(target: Hub) -> None:
    """A history row damaged behind the hub's back (the table is append-only: inserting is allowed)."""
    account = register(target)
    with sqlite3.connect(target.data / "hub.db") as conn:
        conn.execute("INSERT INTO profile_history (user_id, changed_at, profile) VALUES (?, ?, ?)",
                     (account.id, "2026-01-01T00:00:00+00:00", "{not json"))
    with socket.create_connection(("127.0.0.1", target.port), timeout=10) as sock:
        sock.sendall(f"GET /api/profile/history HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {account.token}"
                     "\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(65536):  # read to EOF: a reset would raise ConnectionResetError
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500") and b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "internal_error" and "hub operator" in error["hint"]
    assert "Traceback" in (target.data / "server.log").read_text()  # the details went to the log
    assert account.http.get("/api/profile").status_code == 200  # the hub answers on


# --- forms, origins, the public URL -------------------------------------------------------------------------


def test_forms_need_an_origin_naming_the_hub_never_the_host_header(target: Hub) -> None:
    account = register(target, mau=800_000_000)
    cookies, form = {"llamahub_token": account.token}, {"family": "llama-3", "mau": "800000000"}
    post = f"{target.url}/enterprise/requests"
    for headers in ({}, {"Origin": "null"}, {"Origin": EVIL, "Host": "evil.example"},
                    {"Origin": f"http://localhost:{target.port}", "Host": f"localhost:{target.port}"}):
        refused = httpx.post(post, data=form, cookies=cookies, headers=headers)
        assert refused.status_code == 403, headers
        assert refused.headers["content-type"].startswith("text/html") and "Form refused" in refused.text
    assert account.http.get("/api/enterprise/requests").json()["requests"] == []
    ok = httpx.post(post, data=form, cookies=cookies, headers={"Origin": target.url})
    assert ok.status_code == 303


@pytest.mark.parametrize(("field", "value", "message"), [
    ("mau", "²", "whole number"), ("mau", "9" * 5000, "whole number"), ("mau", str(10**30), "whole number"),
    ("mau", str(MAX_MAU + 1), "whole number"), ("mau", "-5", "whole number"),
])
def test_the_request_form_bounds_its_numbers(target: Hub, field: str, value: str, message: str) -> None:
    account = register(target, mau=800_000_000)
    r = httpx.post(f"{target.url}/enterprise/requests", data={"family": "llama-2", field: value},
                   cookies={"llamahub_token": account.token}, headers={"Origin": target.url})
    assert r.status_code == 400 and message in r.text
    assert account.http.get("/api/enterprise/requests").json()["requests"] == []


@pytest.mark.parametrize(("form", "message"), [
    ({"max_mau": "²"}, "whole number"), ({"max_mau": str(10**30)}, "whole number"),
    ({"max_mau": "1" * 5000}, "whole number"), ({"expires": "9999-12-31"}, "between 2000 and 2199"),
    ({"expires": "31/12/2030"}, "between 2000 and 2199"),
    ({"expires": "2030-02-30"}, "between 2000 and 2199"),
])
def test_the_approval_form_bounds_its_numbers_and_dates(target: Hub, form: dict[str, str],
                                                        message: str) -> None:
    account = register(target, mau=800_000_000)
    rid = account.http.post("/api/enterprise/requests", json={"families": ["llama-3.1"],
                                                              "mau": 800_000_000}).json()["request"]["id"]
    r = httpx.post(f"{target.url}/admin/enterprise/requests/{rid}/approve", data=form,
                   cookies={"llamahub_admin": target.admin_token}, headers={"Origin": target.url})
    assert r.status_code == 400 and message in r.text, r.text[-500:]
    assert account.http.get("/api/enterprise/requests").json()["requests"][0]["status"] == "pending"


def test_links_and_receipts_name_the_bound_address_whatever_the_host_header(target: Hub) -> None:
    account = register(target)
    forged = {"Host": "evil.example"}
    link = account.http.post("/api/links", json={"variant": "llama-debug-2-chat"}, headers=forged).json()
    assert link["url"].startswith(f"{target.url}/dl/llama-debug/*?")
    assert link["manifest_url"].startswith(f"{target.url}/api/links/manifest?")
    status = account.http.get("/api/licenses/status", headers=forged).json()
    receipt = next(x["receipt"] for x in status["licenses"] if x["id"] == "llama-debug")
    assert receipt["payload"]["hub"] == target.url


# --- rate limits --------------------------------------------------------------------------------------------


def test_link_issuance_is_rate_limited_per_token(target: Hub) -> None:
    alice, bob = register(target), register(target)
    answers = [alice.http.post("/api/links", json={"variant": "llama-debug-2-chat"}) for _ in range(8)]
    assert [a.status_code for a in answers] == [201] * 6 + [429] * 2
    assert error_code(answers[-1]) == "rate_limited" and 1 <= int(answers[-1].headers["retry-after"]) <= 10
    assert bob.link(variant="llama-debug-2-chat")  # another token has its own allowance


def test_sign_in_is_rate_limited_per_ip(target: Hub) -> None:
    answers = [httpx.post(f"{target.url}/enterprise/sign-in", data={"token": f"lh_guess{i}"},
                          headers={"Origin": target.url}) for i in range(7)]
    assert [a.status_code for a in answers][-2:] == [429, 429]
    assert all(a.status_code in (401, 429) for a in answers)
    assert "too many sign-in requests" in answers[-1].text and int(answers[-1].headers["retry-after"]) >= 1


def test_registration_is_rate_limited_per_ip(target: Hub) -> None:
    """Last in the file: it spends the registration allowance of 127.0.0.1."""
    codes = []
    for _ in range(60):
        r = httpx.post(f"{target.url}/api/users", json={"email": f"{uuid.uuid4().hex[:8]}@example.com",
                                                        "name": "R", "organisation": "R", "country": "FR"})
        codes.append(r.status_code)
        if r.status_code == 429:
            assert error_code(r) == "rate_limited" and int(r.headers["retry-after"]) >= 1
            break
    assert codes[-1] == 429 and set(codes[:-1]) == {201}
