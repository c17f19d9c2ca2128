"""Organisations are records: a look-alike name inherits nothing; joining is by approval or invitation;
operators are named in the audit log."""

from __future__ import annotations

import uuid

import httpx
from hubtest import Hub, MakeUser, error_code

OVER = 1_500_000_000


def _register(hub: Hub, organisation: str, **extra: str) -> tuple[str, httpx.Client]:
    tag = uuid.uuid4().hex[:10]
    body = {"email": f"o-{tag}@example.com", "name": f"U {tag}", "organisation": organisation,
            "country": "us"}
    response = httpx.post(f"{hub.url}/api/users", json=body | extra)
    assert response.status_code == 201, response.text
    body = response.json()
    client = hub.client(body["token"])
    for license_id in ("llama-debug",):
        assert client.post(f"/api/licenses/{license_id}/accept").status_code == 201
    profile = client.put("/api/profile", json={"mau": OVER, "intended_uses": ["chatbot"]})
    assert profile.status_code == 200, profile.text
    return body["user"]["id"], client


def _operator(hub: Hub, name: str) -> httpx.Client:
    made = hub.admin().post("/api/admin/operators", json={"name": name, "email": "ops@example.com"})
    assert made.status_code == 201, made.text
    return hub.client(made.json()["token"])


def test_a_look_alike_organisation_gets_no_grant(hub: Hub) -> None:
    name = f"MegaCorp {uuid.uuid4().hex[:6]}"
    alice = _operator(hub, f"Alice {uuid.uuid4().hex[:6]}")
    org = alice.post("/api/admin/organisations", json={"name": name}).json()["organisation"]
    assert org["status"] == "verified"
    granted = alice.post("/api/admin/grants",
                         json={"organisation_id": org["id"], "families": ["llama-debug"]})
    assert granted.status_code == 201, granted.text
    assert granted.json()["grant"]["org_id"] == org["id"]

    user_id, lookalike = _register(hub, f"  {name.lower()} ")
    membership = lookalike.get("/api/organisation").json()["membership"]
    assert (membership["org_id"], membership["status"]) == (org["id"], "pending")
    refused = lookalike.post("/api/links", json={"family": "llama-debug"})
    assert refused.status_code == 403 and error_code(refused) == "mau_over_threshold"
    _, other = _register(hub, f"{name} Inc")  # a different name: its own record, no grant either
    assert error_code(other.post("/api/links", json={"family": "llama-debug"})) == "mau_over_threshold"
    request = lookalike.post("/api/enterprise/requests", json={"families": ["llama-debug"], "mau": OVER})
    assert request.status_code == 403 and error_code(request) == "membership_pending"

    approved = alice.post(f"/api/admin/organisations/{org['id']}/members/{user_id}/approve")
    assert approved.status_code == 200 and approved.json()["membership"]["status"] == "active"
    assert lookalike.post("/api/links", json={"family": "llama-debug"}).status_code == 201
    audit = hub.admin().get("/api/admin/audit", params={"action": "org.member_approve"}).json()["entries"]
    assert any(e["target"] == org["id"] and e["actor"].startswith("operator:Alice") for e in audit)


def test_first_user_founds_an_unverified_org_and_invites(hub: Hub, make_user: MakeUser) -> None:
    name = f"Founders {uuid.uuid4().hex[:6]}"
    founder_id, founder = _register(hub, name)
    mine = founder.get("/api/organisation").json()
    assert mine["membership"]["role"] == "admin" and mine["organisation"]["status"] == "unverified"
    org_id = mine["organisation"]["id"]
    invited = founder.post(f"/api/organisations/{org_id}/invitations", json={"email": "new@example.com"})
    assert invited.status_code == 201
    token = invited.json()["invitation"]
    wrong = httpx.post(f"{hub.url}/api/users", json={"email": "other@example.com", "name": "X",
                                                     "organisation": "anything", "country": "us",
                                                     "invitation": token})
    assert wrong.status_code == 403 and error_code(wrong) == "invalid_invitation"
    joined = httpx.post(f"{hub.url}/api/users", json={"email": "new@example.com", "name": "N",
                                                      "organisation": "anything", "country": "us",
                                                      "invitation": token})
    assert joined.status_code == 201, joined.text
    assert joined.json()["user"]["organisation"] == name
    member = hub.client(joined.json()["token"]).get("/api/organisation").json()["membership"]
    assert (member["org_id"], member["status"]) == (org_id, "active")
    outsider = make_user()
    assert outsider.http.post(f"/api/organisations/{org_id}/invitations",
                              json={"email": "x@example.com"}).status_code == 403
    # an operator's grant to the founder's organisation verifies it, and its members use the grant
    alice = _operator(hub, f"Alice {uuid.uuid4().hex[:6]}")
    made = alice.post("/api/admin/grants", json={"organisation": name, "families": ["llama-debug"]})
    assert made.status_code == 201
    assert founder.get("/api/organisation").json()["organisation"]["status"] == "verified"
    assert founder.post("/api/links", json={"family": "llama-debug"}).status_code == 201
    assert founder_id


def test_operators_are_named_in_the_audit_log(hub: Hub, make_user: MakeUser) -> None:
    bob_name = f"Bob {uuid.uuid4().hex[:6]}"
    bob = _operator(hub, bob_name)
    account = make_user(mau=OVER)
    request = account.http.post("/api/enterprise/requests",
                                json={"families": ["llama-debug"], "mau": OVER, "note": "support bot"})
    assert request.status_code == 201, request.text
    request_id = request.json()["request"]["id"]
    denied = bob.post(f"/api/admin/enterprise/requests/{request_id}/deny", json={"reason": "no"})
    assert denied.status_code == 200
    entries = hub.admin().get("/api/admin/audit", params={"action": "request."}).json()["entries"]
    mine = {e["action"]: e for e in entries if e["target"] == request_id}
    assert mine["request.deny"]["actor"] == f"operator:{bob_name}"
    assert mine["request.submit"]["detail"]["note"] == "support bot"
    duplicate = hub.admin().post("/api/admin/operators", json={"name": bob_name})
    assert duplicate.status_code == 409
