"""Accounts, profiles, license texts and signed acceptance receipts, over real HTTP."""

from __future__ import annotations

import hashlib
import sqlite3
import uuid

import httpx
import pytest
from hubtest import Hub, MakeUser, error_code, published_keys

from llamahub import crypto
from llamahub.model.writer import PLACEHOLDER_LICENSE


def test_register_returns_the_token_once_and_stores_its_hash(hub: Hub) -> None:
    email = f"once-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "name": "Once", "organisation": "Once Inc", "country": "fr"}
    first = httpx.post(f"{hub.url}/api/users", json=body)
    assert first.status_code == 201
    token = first.json()["token"]
    assert first.json()["user"]["country"] == "FR"
    again = httpx.post(f"{hub.url}/api/users", json=body | {"email": email.upper()})
    assert again.status_code == 409 and error_code(again) == "email_taken"
    assert "token" not in again.json() and token not in again.text
    with sqlite3.connect(hub.data / "hub.db") as db:
        stored = [row[0] for row in db.execute("SELECT token_sha256 FROM tokens")]
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    assert token not in stored
    me = hub.client(token).get("/api/users/me").json()
    assert me["user"]["email"] == email and me["profile"]["mau"] is None  # undeclared is not 0


@pytest.mark.parametrize("bad", [{"email": "not-an-email"}, {"country": "France"}, {"name": "  "},
                                 {"is_admin": True}])
def test_register_validates(hub: Hub, bad: dict) -> None:
    body = {"email": f"v-{uuid.uuid4().hex[:8]}@example.com", "name": "V", "organisation": "V",
            "country": "DE"}
    response = httpx.post(f"{hub.url}/api/users", json=body | bad)
    assert response.status_code == 422 and error_code(response) == "invalid_request"


def test_every_profile_change_is_recorded(hub: Hub, make_user: MakeUser) -> None:
    account = make_user(mau=10)
    account.http.put("/api/profile", json={"mau": 20_000, "intended_uses": ["research"],
                                           "eu_domiciled": True})
    account.http.put("/api/profile", json={"mau": 30_000, "intended_uses": ["research", "education"]})
    history = account.http.get("/api/profile/history").json()["history"]
    assert [h["mau"] for h in history] == [10, 20_000, 30_000]
    assert history[1]["eu_domiciled"] is True and history[2]["intended_uses"] == ["research", "education"]
    current = account.http.get("/api/profile").json()
    assert current["mau"] == 30_000 and current["organisation"] == account.organisation
    audit = hub.admin().get("/api/admin/audit", params={"action": "profile.update", "limit": 1000}).json()
    mine = [e for e in audit["entries"] if e["target"] == account.id]
    assert [(e["detail"]["before"] or {}).get("mau") for e in mine] == [None, 10, 20_000]
    assert [e["detail"]["after"]["mau"] for e in mine] == [10, 20_000, 30_000]


def test_acceptance_receipt_verifies_offline(hub: Hub, make_user: MakeUser) -> None:
    account = make_user(accept=())
    shown = account.http.get("/api/licenses/llama-debug/text")
    assert shown.content == PLACEHOLDER_LICENSE.encode()  # the imported LICENSE, not a summary
    digest = hashlib.sha256(shown.content).hexdigest()
    assert shown.headers["x-text-sha256"] == digest and shown.headers["x-text-source"] == "imported"
    accepted = account.http.post("/api/licenses/llama-debug/accept", json={"text_sha256": digest})
    assert accepted.status_code == 201
    receipt = accepted.json()["receipt"]
    payload = crypto.verify_document(receipt, published_keys(hub))
    assert payload["license_id"] == "llama-debug" and payload["text_sha256"] == digest
    assert payload["user_id"] == account.id and payload["organisation"] == account.organisation
    forged = {**receipt, "payload": {**receipt["payload"], "license_id": "llama3.1"}}
    with pytest.raises(crypto.SignatureError):
        crypto.verify_document(forged, published_keys(hub))
    again = account.http.post("/api/licenses/llama-debug/accept")
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["acceptance"] == accepted.json()["acceptance"]
    status = {s["id"]: s for s in account.http.get("/api/licenses/status").json()["licenses"]}
    offline = crypto.verify_document(status["llama-debug"]["receipt"], published_keys(hub))
    assert offline["text_sha256"] == digest
    audit = hub.admin().get("/api/admin/audit", params={"action": "license.accept", "limit": 1000}).json()
    assert [e["detail"]["acceptance_id"] for e in audit["entries"]
            if e["actor"] == f"user:{account.id}"] == [accepted.json()["acceptance"]["id"]]


def test_accepting_a_changed_text_is_refused(make_user: MakeUser) -> None:
    account = make_user(accept=())
    stale = account.http.post("/api/licenses/llama-debug/accept", json={"text_sha256": "0" * 64})
    assert stale.status_code == 409 and error_code(stale) == "license_text_changed"
    status = {s["id"]: s["accepted"] for s in account.http.get("/api/licenses/status").json()["licenses"]}
    assert status["llama-debug"] is False


def test_license_without_an_imported_text_shows_the_registry_summary(make_user: MakeUser) -> None:
    account = make_user(accept=())
    info = account.http.get("/api/licenses/llama3.1").json()
    text = account.http.get("/api/licenses/llama3.1/text")
    assert info["text_source"] == "registry" and "not the license text itself" in text.text
    assert info["text_sha256"] == hashlib.sha256(text.content).hexdigest()
    accepted = account.http.post("/api/licenses/llama3.1/accept").json()
    assert accepted["acceptance"]["text_sha256"] == info["text_sha256"]
    unknown = account.http.post("/api/licenses/llama9/accept")
    assert unknown.status_code == 404 and error_code(unknown) == "unknown_license"


def test_licenses_listing_and_published_keys(hub: Hub) -> None:
    licenses = {lic["id"]: lic for lic in httpx.get(f"{hub.url}/api/licenses").json()["licenses"]}
    assert set(licenses) == {"llama-debug", "llama1", "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3"}
    assert licenses["llama2"]["mau_threshold"] == 700_000_000
    doc = httpx.get(f"{hub.url}/.well-known/llamahub-keys.json").json()
    for key in doc["keys"]:
        raw = crypto.b64url_decode(key["x"])
        assert key["kid"] == hashlib.sha256(raw).hexdigest()[:16] and key["crv"] == "Ed25519"
    assert doc["active"] in {k["kid"] for k in doc["keys"] if not k["revoked"]}


def test_openapi_is_served_and_file_routes_answer_head(hub: Hub) -> None:
    spec = httpx.get(f"{hub.url}/openapi.json").json()
    assert {"get", "head"} <= set(spec["paths"]["/dl/{family}/{path}"])
    for path in ("/api/users", "/api/profile", "/api/links", "/api/links/manifest",
                 "/api/licenses/{license_id}/accept", "/api/admin/grants"):
        assert path in spec["paths"]
    missing = httpx.get(f"{hub.url}/api/nothing-here")
    assert missing.status_code == 404 and error_code(missing) == "not_found"
