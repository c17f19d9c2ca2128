"""Signed grants and the signed revocation list, end to end: a grant is honoured offline; its
revocation stops an already issued link at once, and offline loads after one online call; a
local profile edit never lifts an offline refusal."""

from __future__ import annotations

import json

import httpx
import pytest
from clienttest import MakeClient
from hubtest import error_code, file_url

import llamahub
from llamahub.errors import MauLimitError, ReceiptError

VARIANT = "llama-debug-2-chat"
OVER = 900_000_000


def test_revoked_grant_stops_links_and_then_offline_loads(make_client: MakeClient,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(mau=OVER)
    client.use(monkeypatch)
    org_id = client.account.http.get("/api/organisation").json()["organisation"]["id"]
    made = client.hub.admin().post("/api/admin/grants", json={"organisation_id": org_id,
                                                              "families": ["llama-debug"]})
    assert made.status_code == 201, made.text
    grant_id = made.json()["grant"]["id"]
    llamahub.load(VARIANT).close()  # online: downloads under the grant, keeps the signed grant
    link = client.account.link(variant=VARIANT)
    assert link["grants"] == [grant_id]
    url = file_url(link["url"], f"{VARIANT}/params.json")
    assert httpx.get(url).status_code == 200

    monkeypatch.setenv("LLAMAHUB_OFFLINE", "1")
    llamahub.load(VARIANT).close()  # offline over the threshold: the stored signed grant covers it

    revoked = client.hub.admin().post(f"/api/admin/grants/{grant_id}/revoke")
    assert revoked.status_code == 200
    stopped = httpx.get(url)  # the link issued before the revocation
    assert stopped.status_code == 403 and error_code(stopped) == "grant_revoked"
    assert client.account.link(expect=403, variant=VARIANT)["error"]["code"] == "grant_revoked"
    llamahub.load(VARIANT).close()  # offline, not yet synced: this machine has not heard of it

    synced = client.cli("license", "status", LLAMAHUB_OFFLINE="0")  # an online call: brings the revocations
    assert synced.returncode == 0, synced.stderr
    with pytest.raises(MauLimitError, match="revoked") as e:
        llamahub.load(VARIANT)
    assert e.value.code == "grant_revoked"

    edited = client.cli("profile", "set", "--mau", "1", LLAMAHUB_OFFLINE="1")  # a local edit, offline
    assert edited.returncode == 0 and "MAU 1" in edited.stdout
    with pytest.raises(MauLimitError):  # the offline gates use the hub-signed profile
        llamahub.load(VARIANT)


def test_tampered_signed_profile_is_not_used(make_client: MakeClient,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client()
    client.use(monkeypatch)
    llamahub.load(VARIANT).close()
    [path] = list((client.home / "data" / "hubs").glob("*/profile.json"))
    doc = json.loads(path.read_text())
    assert doc["payload"]["mau"] == 1_000 and doc["payload"]["organisation_id"]
    doc["payload"]["intended_uses"] = ["malware"]
    path.write_text(json.dumps(doc))
    monkeypatch.setenv("LLAMAHUB_OFFLINE", "1")
    with pytest.raises(ReceiptError, match="signed profile"):
        llamahub.load(VARIANT)
