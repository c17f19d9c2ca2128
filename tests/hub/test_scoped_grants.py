"""Scoped grants: families or variants, MAU cap, permitted AUP categories (the case-by-case
exception) and dates, honoured by the gates; the "needs information" round trip, audited."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import httpx
from hubtest import Hub, MakeUser, error_code


def _operator(hub: Hub) -> tuple[str, httpx.Client]:
    name = f"Reviewer {uuid.uuid4().hex[:6]}"
    made = hub.admin().post("/api/admin/operators", json={"name": name})
    assert made.status_code == 201, made.text
    return name, hub.client(made.json()["token"])


def test_a_research_exception_allows_its_categories_until_expiry(hub: Hub, make_user: MakeUser) -> None:
    account = make_user(uses=("research", "malware"))
    refused = account.http.post("/api/links", json={"variant": "llama-debug-2-chat"})
    assert refused.status_code == 403 and error_code(refused) == "prohibited_use"
    assert "enterprise request --use malware" in refused.json()["error"]["hint"]
    org_id = account.http.get("/api/organisation").json()["organisation"]["id"]
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)
    _, reviewer = _operator(hub)
    granted = reviewer.post("/api/admin/grants", json={
        "organisation_id": org_id, "families": ["llama-debug"], "variants": ["llama-debug-2-chat"],
        "uses": ["malware"], "expires": expires.isoformat(), "note": "security research lab"})
    assert granted.status_code == 201, granted.text
    grant_id = granted.json()["grant"]["id"]
    allowed = account.http.post("/api/links", json={"variant": "llama-debug-2-chat"})
    assert allowed.status_code == 201, allowed.text
    assert allowed.json()["grants"] == [grant_id]
    other_variant = account.http.post("/api/links", json={"variant": "llama-debug-3.1-instruct"})
    assert error_code(other_variant) == "prohibited_use"  # outside the grant's variants
    more = account.http.patch("/api/profile", json={"intended_uses": ["research", "malware", "spam"]})
    assert more.status_code == 200
    extra = account.http.post("/api/links", json={"variant": "llama-debug-2-chat"})
    assert error_code(extra) == "prohibited_use" and "'spam'" in extra.json()["error"]["message"]
    back = account.http.patch("/api/profile", json={"intended_uses": ["research", "malware"]})
    assert back.status_code == 200
    time.sleep(max(0.0, (expires - dt.datetime.now(dt.UTC)).total_seconds()) + 0.5)
    expired = account.http.post("/api/links", json={"variant": "llama-debug-2-chat"})
    assert expired.status_code == 403 and error_code(expired) == "prohibited_use"


def test_a_mau_cap_and_not_before(hub: Hub, make_user: MakeUser) -> None:
    account = make_user(mau=900_000_000)
    org_id = account.http.get("/api/organisation").json()["organisation"]["id"]
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    scope = {"organisation_id": org_id, "families": ["llama-debug"]}
    made = hub.admin().post("/api/admin/grants", json=scope | {"not_before": later})
    assert made.status_code == 201
    link = {"family": "llama-debug"}
    assert error_code(account.http.post("/api/links", json=link)) == "grant_not_yet_valid"
    capped = hub.admin().post("/api/admin/grants", json=scope | {"max_mau": 800_000_000})
    assert capped.status_code == 201
    assert error_code(account.http.post("/api/links", json=link)) == "grant_mau_exceeded"
    bad = hub.admin().post("/api/admin/grants", json=scope | {"uses": ["chatbot"]})
    assert bad.status_code == 400 and error_code(bad) == "invalid_scope"


def test_needs_information_round_trip_is_audited(hub: Hub, make_user: MakeUser) -> None:
    account = make_user(uses=("research", "weapons"))
    submitted = account.http.post("/api/enterprise/requests", json={
        "families": ["llama-debug"], "mau": 1_000, "uses": ["weapons"],
        "note": "arms-control treaty verification research"})
    assert submitted.status_code == 201, submitted.text
    request_id = submitted.json()["request"]["id"]
    name, reviewer = _operator(hub)
    early = account.http.post(f"/api/enterprise/requests/{request_id}/answer", json={"answer": "x"})
    assert early.status_code == 409 and error_code(early) == "no_question"
    asked = reviewer.post(f"/api/admin/enterprise/requests/{request_id}/needs-info",
                          json={"question": "Which institution, and who oversees it?"})
    assert asked.status_code == 200 and asked.json()["request"]["status"] == "needs_info"
    mine = account.http.get("/api/enterprise/requests").json()["requests"][0]
    assert mine["info_request"] == "Which institution, and who oversees it?"
    answered = account.http.post(f"/api/enterprise/requests/{request_id}/answer",
                                 json={"answer": "A university lab, overseen by its ethics board."})
    assert answered.status_code == 200 and answered.json()["request"]["status"] == "pending"
    approved = reviewer.post(f"/api/admin/enterprise/requests/{request_id}/approve",
                             json={"note": "research exception"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["request"]["grant"]["uses"] == ["weapons"]
    assert account.http.post("/api/links", json={"family": "llama-debug"}).status_code == 201
    entries = hub.admin().get("/api/admin/audit", params={"action": "request."}).json()["entries"]
    trail = [(e["action"], e["actor"]) for e in entries if e["target"] == request_id]
    assert trail == [("request.submit", f"user:{account.id}"), ("request.needs_info", f"operator:{name}"),
                     ("request.answer", f"user:{account.id}"), ("request.approve", f"operator:{name}")]
    details = {e["action"]: e["detail"] for e in entries if e["target"] == request_id}
    assert details["request.submit"]["note"].startswith("arms-control")
    assert details["request.answer"]["answer"].startswith("A university lab")
