"""The license gates as a table, over HTTP: MAU and enterprise grants per family, intended uses,
and license versions accepted separately. Families the demo hub has not imported pass the gates
and then stop at ``variant_not_imported``, which shows the gates ran first.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hubtest import Hub, MakeUser, error_code

LICENSE_OF = {"llama-debug": "llama-debug", "llama-2": "llama2", "llama-3": "llama3", "llama-3.1": "llama3.1",
              "llama-3.2": "llama3.2"}
OVER = 800_000_000
THRESHOLD = 700_000_000
ISSUED = 201


def grant(hub: Hub, organisation: str, families: list[str], **extra: Any) -> dict[str, Any]:
    response = hub.admin().post("/api/admin/grants", json={"organisation": organisation, "families": families,
                                                           **extra})
    assert response.status_code == 201, response.text
    return response.json()["grant"]


# (family, declared MAU, grant: None or (families, max_mau), expected status or error code)
TABLE = [
    ("llama-debug", 1_000, None, ISSUED),
    ("llama-debug", THRESHOLD, None, ISSUED),
    ("llama-debug", THRESHOLD + 1, None, "mau_over_threshold"),
    ("llama-debug", OVER, (["llama-debug"], None), ISSUED),
    ("llama-debug", OVER, (["llama-debug"], 900_000_000), ISSUED),
    ("llama-debug", OVER, (["llama-debug"], 750_000_000), "grant_mau_exceeded"),
    ("llama-debug", OVER, (["llama-2"], None), "mau_over_threshold"),
    ("llama-2", 1_000, None, "variant_not_imported"),
    ("llama-2", OVER, None, "mau_over_threshold"),
    ("llama-2", OVER, (["llama-2"], None), "variant_not_imported"),
    ("llama-3", OVER, (["llama-3.1"], None), "mau_over_threshold"),
    ("llama-3.1", OVER, (["llama-3.1", "llama-3.2"], None), "variant_not_imported"),
    ("llama-3.2", 1_000, None, "variant_not_imported"),
]


@pytest.mark.parametrize(("family", "mau", "grant_spec", "expected"), TABLE)
def test_mau_and_grants(hub: Hub, make_user: MakeUser, family: str, mau: int,
                        grant_spec: tuple[list[str], int | None] | None, expected: int | str) -> None:
    account = make_user(mau=mau, accept=(LICENSE_OF[family],))
    if grant_spec is not None:
        families, max_mau = grant_spec
        grant(hub, account.organisation.upper(), families, max_mau=max_mau)  # org matched case-insensitively
    response = account.http.post("/api/links", json={"family": family})
    if expected == ISSUED:
        assert response.status_code == 201, response.text
        assert response.json()["variants"]
        return
    assert error_code(response) == expected, response.text
    assert response.status_code == (404 if expected == "variant_not_imported" else 403)
    error = response.json()["error"]
    if expected == "mau_over_threshold":
        assert f"llamahub enterprise request --family {family} --mau {mau}" in error["hint"]
    if expected == "variant_not_imported":
        assert "llamahub hub import" in error["hint"]


def test_revoked_and_expired_grants_stop_covering(hub: Hub, make_user: MakeUser) -> None:
    account = make_user(mau=OVER)
    g = grant(hub, account.organisation, ["llama-debug"])
    assert account.http.post("/api/links", json={"family": "llama-debug"}).status_code == 201
    assert hub.admin().post(f"/api/admin/grants/{g['id']}/revoke").status_code == 200
    revoked = account.http.post("/api/links", json={"family": "llama-debug"})
    assert revoked.status_code == 403 and error_code(revoked) == "grant_revoked"
    other = make_user(mau=OVER)
    now = dt.datetime.now(dt.UTC)
    grant(hub, other.organisation, ["llama-debug"], not_before=(now - dt.timedelta(days=2)).isoformat(),
          expires=(now - dt.timedelta(days=1)).isoformat())
    expired = other.http.post("/api/links", json={"family": "llama-debug"})
    assert expired.status_code == 403 and error_code(expired) == "grant_expired"


def test_prohibited_use_is_refused_whatever_the_certifications(make_user: MakeUser) -> None:
    account = make_user(uses=("chatbot", "critical_infrastructure"),
                        certifications=("iso-27001", "iec-62443"))
    response = account.http.post("/api/links", json={"variant": "llama-debug-2-chat"})
    assert response.status_code == 403 and error_code(response) == "prohibited_use"
    error = response.json()["error"]
    assert "critical_infrastructure" in error["message"] and "do not lift it" in error["message"]
    assert "llamahub profile set --use chatbot" in error["hint"]
    fixed = account.http.put("/api/profile", json={"mau": 1_000, "intended_uses": ["chatbot"]})
    assert fixed.status_code == 200
    assert account.http.post("/api/links", json={"variant": "llama-debug-2-chat"}).status_code == 201


@pytest.mark.parametrize("uses", [("research",), ("code_assistant", "summarization")])
def test_allowed_uses_pass(make_user: MakeUser, uses: tuple[str, ...]) -> None:
    make_user(uses=uses).link(family="llama-debug")


def test_unknown_and_missing_uses(make_user: MakeUser) -> None:
    account = make_user(mau=None)
    unknown = account.http.put("/api/profile", json={"mau": 10, "intended_uses": ["mind_control"]})
    assert unknown.status_code == 422 and error_code(unknown) == "unknown_use"
    assert account.http.get("/api/profile").json()["intended_uses"] == []  # nothing recorded
    none_declared = account.http.post("/api/links", json={"family": "llama-debug"})
    assert none_declared.status_code == 403 and error_code(none_declared) == "no_intended_use"


def test_license_versions_are_accepted_separately(make_user: MakeUser) -> None:
    account = make_user(accept=("llama2", "llama3"))
    debug = account.http.post("/api/links", json={"family": "llama-debug"})
    assert debug.status_code == 403 and error_code(debug) == "license_not_accepted"
    assert "llamahub license accept llama-debug" in debug.json()["error"]["hint"]
    llama31 = account.http.post("/api/links", json={"family": "llama-3.1"})
    assert llama31.status_code == 403 and error_code(llama31) == "license_not_accepted"
    assert "llamahub license accept llama3.1" in llama31.json()["error"]["hint"]
    llama3 = account.http.post("/api/links", json={"family": "llama-3"})
    assert error_code(llama3) == "variant_not_imported"  # llama3 accepted: the gates pass
    status = {s["id"]: s["accepted"] for s in account.http.get("/api/licenses/status").json()["licenses"]}
    assert status == {"llama-debug": False, "llama2": True, "llama3": True, "llama3.1": False,
                      "llama3.2": False, "llama1": False, "llama3.3": False}
    assert account.http.post("/api/licenses/llama-debug/accept").status_code == 201
    assert account.http.post("/api/links", json={"family": "llama-debug"}).status_code == 201


def test_unknown_names(make_user: MakeUser) -> None:
    account = make_user()
    family = account.http.post("/api/links", json={"family": "llama-9"})
    assert family.status_code == 404 and error_code(family) == "unknown_family"
    variant = account.http.post("/api/links", json={"variant": "llama-debug-2-caht"})
    assert variant.status_code == 404 and error_code(variant) == "unknown_variant"
    assert "llama-debug-2-chat" in variant.json()["error"]["hint"]
    both = account.http.post("/api/links", json={"family": "llama-debug", "variant": "llama-debug-2"})
    assert both.status_code == 422 and error_code(both) == "invalid_request"
