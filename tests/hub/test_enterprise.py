"""Enterprise license requests over HTTP: submit, review (approve makes the grant, deny), withdraw."""

from __future__ import annotations

import sqlite3

from hubtest import Account, Hub, MakeUser, error_code, published_keys

from llamahub import crypto

OVER = 800_000_000  # above the 700M threshold of every registry license


def submit(account: Account, families: list[str], mau: int = OVER, expect: int = 201, **extra: str) -> dict:
    response = account.http.post("/api/enterprise/requests", json={"families": families, "mau": mau, **extra})
    assert response.status_code == expect, response.text
    return response.json()


def audit_actions(hub: Hub, target: str) -> list[str]:
    with sqlite3.connect(hub.data / "hub.db") as db:
        rows = db.execute("SELECT action FROM audit WHERE target = ? ORDER BY id", (target,))
        return [row[0] for row in rows]


def test_an_approved_request_lets_the_organisation_past_the_threshold(hub: Hub, make_user: MakeUser) -> None:
    user = make_user(mau=OVER)
    refused = user.http.post("/api/links", json={"variant": "llama-debug-2-chat"})
    assert refused.status_code == 403 and error_code(refused) == "mau_over_threshold"

    request = submit(user, ["llama-debug"], note="a chatbot for a very large audience")["request"]
    assert request["status"] == "pending" and request["organisation"] == user.organisation
    assert user.http.get("/api/enterprise/requests").json()["requests"] == [request]
    pending = hub.admin().get("/api/admin/enterprise/requests", params={"status": "pending"})
    assert request["id"] in [r["id"] for r in pending.json()["requests"]]
    still = user.http.post("/api/links", json={"variant": "llama-debug-2-chat"})
    assert still.status_code == 403  # pending is not granted

    approved = hub.admin().post(f"/api/admin/enterprise/requests/{request['id']}/approve",
                                json={"note": "welcome"})
    assert approved.status_code == 200, approved.text
    body = approved.json()
    grant = body["request"]["grant"]
    assert body["request"]["status"] == "approved" and body["request"]["grant_id"] == grant["id"]
    assert grant["organisation"] == user.organisation and grant["families"] == ["llama-debug"]
    assert grant["max_mau"] == OVER  # what was asked, by default
    signed = crypto.verify_document(body["document"], published_keys(hub))
    assert signed["id"] == grant["id"] and signed["type"] == "llamahub.enterprise_grant"

    user.link(variant="llama-debug-2-chat")  # 201 now
    [mine] = user.http.get("/api/enterprise/requests").json()["requests"]
    assert mine["status"] == "approved" and mine["decision_note"] == "welcome"
    assert audit_actions(hub, request["id"]) == ["request.submit", "request.approve"]
    assert audit_actions(hub, grant["id"]) == ["grant.create"]


def test_a_denied_request_says_why_and_grants_nothing(hub: Hub, make_user: MakeUser) -> None:
    user = make_user(mau=OVER)
    request = submit(user, ["llama-debug"])["request"]
    denied = hub.admin().post(f"/api/admin/enterprise/requests/{request['id']}/deny",
                              json={"reason": "tell us more about the use"})
    assert denied.status_code == 200, denied.text
    [mine] = user.http.get("/api/enterprise/requests").json()["requests"]
    assert mine["status"] == "denied" and mine["decision_note"] == "tell us more about the use"
    assert mine["grant_id"] is None
    grants = hub.admin().get("/api/admin/grants", params={"organisation": user.organisation})
    assert grants.json()["grants"] == []
    again = hub.admin().post(f"/api/admin/enterprise/requests/{request['id']}/approve", json={})
    assert again.status_code == 409 and error_code(again) == "request_decided"


def test_one_pending_request_per_family_and_withdrawal(hub: Hub, make_user: MakeUser) -> None:
    user = make_user(mau=OVER)
    first = submit(user, ["llama-debug", "llama-2"])["request"]
    duplicate = submit(user, ["llama-2"], expect=409)
    assert duplicate["error"]["code"] == "request_pending" and first["id"] in duplicate["error"]["hint"]
    submit(user, ["llama-3"])  # another family is a separate request

    other = make_user()
    foreign = other.http.post(f"/api/enterprise/requests/{first['id']}/withdraw")
    assert foreign.status_code == 404 and error_code(foreign) == "unknown_request"
    assert other.http.get("/api/enterprise/requests").json()["requests"] == []

    withdrawn = user.http.post(f"/api/enterprise/requests/{first['id']}/withdraw")
    assert withdrawn.status_code == 200 and withdrawn.json()["request"]["status"] == "withdrawn"
    submit(user, ["llama-2"])  # nothing pending for llama2 any more
    late = hub.admin().post(f"/api/admin/enterprise/requests/{first['id']}/approve", json={})
    assert late.status_code == 409 and error_code(late) == "request_decided"


def test_bad_requests_are_refused_with_a_hint(hub: Hub, make_user: MakeUser) -> None:
    user = make_user(mau=OVER)
    unknown = submit(user, ["llama-9"], expect=400)
    assert unknown["error"]["code"] == "unknown_family" and "llama-2" in unknown["error"]["hint"]
    assert submit(user, [], expect=422)["error"]["code"] == "invalid_request"
    assert submit(user, ["llama-2"], mau=0, expect=422)["error"]["code"] == "invalid_request"
    request = submit(user, ["llama-2"])["request"]
    backwards = hub.admin().post(f"/api/admin/enterprise/requests/{request['id']}/approve",
                                 json={"not_before": "2030-01-02T00:00:00Z",
                                       "expires": "2030-01-01T00:00:00Z"})
    assert backwards.status_code == 400 and error_code(backwards) == "invalid_request"
    [mine] = user.http.get("/api/enterprise/requests").json()["requests"]
    assert mine["status"] == "pending"  # a refused decision changes nothing
    as_user = user.http.get("/api/admin/enterprise/requests")
    assert as_user.status_code == 403 and error_code(as_user) == "admin_required"
    no_token = hub.client().post("/api/enterprise/requests", json={"families": ["llama-2"], "mau": OVER})
    assert no_token.status_code == 401
