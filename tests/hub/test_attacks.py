"""Attacks on links, tokens and admin routes, each refused over real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
from hubtest import Hub, MakeUser, error_code, file_url, link_query

from llamahub import crypto

LEAKS = (b"SQLite format", b"PRIVATE KEY", b"root:x:")


def hub_key(hub: Hub) -> crypto.Ed25519PrivateKey:
    active = httpx.get(f"{hub.url}/.well-known/llamahub-keys.json").json()["active"]
    return crypto.load_private_key(hub.data / "keys" / f"{active}.pem")


def decoded_policy(url: str) -> dict[str, Any]:
    return json.loads(crypto.cf_b64decode(link_query(url)["Policy"]))


def with_query(url: str, path: str, **query: str) -> str:
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}".replace("*", path)
    return f"{base}?{urlencode(query)}"


def raw_get(hub: Hub, target: str) -> tuple[int, bytes]:
    """GET exactly ``target`` (no client-side normalisation of ``..`` or percent-escapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def link(make_user: MakeUser) -> dict[str, Any]:
    return make_user().link(family="llama-debug")


def test_forged_signature(link: dict[str, Any]) -> None:
    q = link_query(link["url"])
    for forged in (crypto.cf_b64encode(os.urandom(64)), crypto.cf_b64encode(os.urandom(12)), "not~base64!"):
        response = httpx.get(with_query(link["url"], "LICENSE", **{**q, "Signature": forged}))
        assert response.status_code == 403
        assert error_code(response) in ("bad_signature", "malformed_link")


def test_signature_from_another_key(link: dict[str, Any]) -> None:
    q = link_query(link["url"])
    other = crypto.generate_key()
    body = crypto.cf_b64decode(q["Policy"])
    foreign = crypto.cf_b64encode(crypto.sign(other, body))
    same_id = httpx.get(with_query(link["url"], "LICENSE", **{**q, "Signature": foreign}))
    assert same_id.status_code == 403 and error_code(same_id) == "bad_signature"
    own_id = httpx.get(with_query(link["url"], "LICENSE",
                                  **{**q, "Signature": foreign, "Key-Pair-Id": crypto.key_id(other)}))
    assert own_id.status_code == 403 and error_code(own_id) == "unknown_key"


def test_policy_with_one_byte_changed(link: dict[str, Any]) -> None:
    q = link_query(link["url"])
    body = crypto.cf_b64decode(q["Policy"])
    assert b'"max_downloads":5' in body
    tampered = body.replace(b'"max_downloads":5', b'"max_downloads":9')
    assert sum(a != b for a, b in zip(body, tampered, strict=True)) == 1
    response = httpx.get(with_query(link["url"], "LICENSE", **{**q, "Policy": crypto.cf_b64encode(tampered)}))
    assert response.status_code == 403 and error_code(response) == "bad_signature"
    assert httpx.get(file_url(link["url"], "LICENSE")).status_code == 200  # the genuine link still works


def test_expired_policy_signed_by_the_hub_key(hub: Hub, link: dict[str, Any]) -> None:
    policy = decoded_policy(link["url"]) | {"expires": int(time.time()) - 60}
    encoded, signature = crypto.sign_policy(policy, hub_key(hub))
    q = link_query(link["url"]) | {"Policy": encoded, "Signature": signature}
    response = httpx.get(with_query(link["url"], "LICENSE", **q))
    assert response.status_code == 403 and error_code(response) == "link_expired"


def test_validly_signed_policy_the_hub_never_issued(hub: Hub, link: dict[str, Any]) -> None:
    policy = decoded_policy(link["url"]) | {"link_id": "l_0000000000000000", "max_downloads": 1000}
    encoded, signature = crypto.sign_policy(policy, hub_key(hub))
    q = link_query(link["url"]) | {"Policy": encoded, "Signature": signature}
    response = httpx.get(with_query(link["url"], "LICENSE", **q))
    assert response.status_code == 403 and error_code(response) == "unknown_link"


def test_path_outside_the_prefix(make_user: MakeUser) -> None:
    account = make_user(accept=("llama-debug", "llama2"))
    family_link = account.link(family="llama-debug")["url"]
    q = link_query(family_link)
    other_family = httpx.get(f"{urlsplit(family_link).scheme}://{urlsplit(family_link).netloc}/dl/llama-2/LICENSE",
                             params=q)
    assert other_family.status_code == 403 and error_code(other_family) == "outside_link_prefix"
    variant_link = account.link(variant="llama-debug-2-chat")["url"]
    other_variant = httpx.get(file_url(variant_link, "llama-debug-3.1/params.json"))
    assert other_variant.status_code == 403 and error_code(other_variant) == "outside_link"


@pytest.mark.parametrize("path", [
    "../../hub.db",
    "llama-debug-2-chat/../../../hub.db",
    "./LICENSE",
    "%2e%2e%2f%2e%2e%2fhub.db",
    "..%2f..%2fhub.db",
    "%2e%2e/%2e%2e/hub.db",
    "%2E%2E%2F%2E%2E%2Fkeys",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "..%5c..%5chub.db",
    "..\\..\\hub.db",
    "%252e%252e%252fhub.db",
])
def test_traversal_is_refused(hub: Hub, link: dict[str, Any], path: str) -> None:
    query = urlsplit(link["url"]).query
    status, body = raw_get(hub, f"/dl/llama-debug/{path}?{query}")
    assert status == 400, body
    assert json.loads(body)["error"]["code"] == "bad_path"
    assert not any(leak in body for leak in LEAKS)


def test_traversal_in_the_family_segment(hub: Hub, link: dict[str, Any]) -> None:
    query = urlsplit(link["url"]).query
    for target in (f"/dl/%2e%2e/hub.db?{query}", f"/dl/../keys/x.pem?{query}"):
        status, body = raw_get(hub, target)
        assert status in (400, 404), body
        assert not any(leak in body for leak in LEAKS)


def test_link_replayed_past_its_cap(make_user: MakeUser) -> None:
    url = make_user().link(variant="llama-debug-2-chat", max_downloads=1)["url"]
    assert httpx.get(file_url(url, "tokenizer.model")).status_code == 200
    replay = httpx.get(file_url(url, "tokenizer.model"))
    assert replay.status_code == 403 and error_code(replay) == "download_cap_reached"


def test_max_downloads_cannot_exceed_the_hub_cap(make_user: MakeUser) -> None:
    assert make_user().link(variant="llama-debug-2-chat", max_downloads=50)["max_downloads"] == 5


def test_revoked_key_id(hub: Hub, make_user: MakeUser) -> None:
    account = make_user()
    admin = hub.admin()
    old = account.link(variant="llama-debug-2-chat")
    rotated = admin.post("/api/admin/keys/rotate")
    assert rotated.status_code == 201
    new_kid = rotated.json()["active"]
    assert new_kid != old["key_id"]
    assert httpx.get(file_url(old["url"], "LICENSE")).status_code == 200  # rotation alone keeps it valid
    new = account.link(variant="llama-debug-2-chat")
    assert new["key_id"] == new_kid
    assert admin.post(f"/api/admin/keys/{old['key_id']}/revoke").status_code == 200
    refused = httpx.get(file_url(old["url"], "LICENSE"))
    assert refused.status_code == 403 and error_code(refused) == "key_revoked"
    assert httpx.get(file_url(new["url"], "LICENSE")).status_code == 200
    keys = {k["kid"]: k for k in httpx.get(f"{hub.url}/.well-known/llamahub-keys.json").json()["keys"]}
    assert keys[old["key_id"]]["revoked"] and not keys[new_kid]["revoked"]


def test_token_of_another_user(hub: Hub, make_user: MakeUser) -> None:
    alice, bob = make_user(), make_user(mau=2_000)
    link = alice.link(variant="llama-debug-2-chat")
    steal = bob.http.delete(f"/api/links/{link['link_id']}")
    assert steal.status_code == 404 and error_code(steal) == "unknown_link"
    assert httpx.get(file_url(link["url"], "LICENSE")).status_code == 200
    assert link["link_id"] not in {li["link_id"] for li in bob.http.get("/api/links").json()["links"]}
    assert bob.http.get("/api/profile").json()["mau"] == 2_000  # bob's token only ever means bob
    forged = hub.client("lh_" + "A" * 43).get("/api/profile")
    assert forged.status_code == 401 and error_code(forged) == "invalid_token"
    assert forged.headers["www-authenticate"] == "Bearer"
    assert hub.client().get("/api/profile").status_code == 401


def test_admin_routes_need_the_admin_token(hub: Hub, make_user: MakeUser) -> None:
    user = make_user()
    anonymous = hub.client()
    for method, path in (("GET", "/api/admin/audit"), ("POST", "/api/admin/keys/rotate"),
                         ("GET", "/api/admin/grants")):
        assert anonymous.request(method, path).status_code == 401
        as_user = user.http.request(method, path)
        assert as_user.status_code == 403 and error_code(as_user) == "admin_required"
    before = httpx.get(f"{hub.url}/.well-known/llamahub-keys.json").json()
    grant = user.http.post("/api/admin/grants", json={"organisation": user.organisation,
                                                      "families": ["llama-debug"]})
    assert grant.status_code == 403
    after = httpx.get(f"{hub.url}/.well-known/llamahub-keys.json").json()
    assert before == after
    grants = hub.admin().get("/api/admin/grants", params={"organisation": user.organisation}).json()
    assert grants["grants"] == []
    admin_as_user = hub.admin().get("/api/profile")
    assert admin_as_user.status_code == 403 and error_code(admin_as_user) == "user_required"
