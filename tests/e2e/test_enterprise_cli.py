"""The enterprise path as users type it: refused over the threshold, the hint's command, review, load."""

from __future__ import annotations

import json
import re

import pytest
from clienttest import MakeClient

import llamahub
from llamahub.errors import MauLimitError

VARIANT = "llama-debug-2-chat"


def test_the_refusal_hint_leads_to_a_grant_and_a_load(make_client: MakeClient,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(mau=800_000_000)
    client.use(monkeypatch)
    with pytest.raises(MauLimitError) as refused:
        llamahub.load(VARIANT)
    hinted = re.search(r"`llamahub (enterprise request [^`]+)`", refused.value.hint or "")
    assert hinted is not None, refused.value.hint
    command = hinted.group(1).split()

    submitted = client.cli(*command, "--note", "a support bot for a very large audience")
    assert submitted.returncode == 0, submitted.stderr
    found = re.search(r"submitted (er_\w+)", submitted.stdout)
    assert found is not None, submitted.stdout
    request_id = found.group(1)
    twice = client.cli(*command)
    assert twice.returncode == 1
    assert f"request {request_id}" in twice.stderr and "still pending" in twice.stderr
    with pytest.raises(MauLimitError):  # pending grants nothing
        llamahub.load(VARIANT)

    data = str(client.hub.data)
    listed = client.cli("hub", "requests", "list", "--status", "pending", "--data", data)
    assert listed.returncode == 0, listed.stderr
    assert request_id in listed.stdout and client.account.organisation in listed.stdout
    assert "a support bot" in listed.stdout
    approved = client.cli("hub", "requests", "approve", request_id, "--note", "welcome", "--data", data)
    assert approved.returncode == 0, approved.stderr
    assert re.search(r"grant g_\w+ for " + re.escape(client.account.organisation), approved.stdout)

    status = client.cli("enterprise", "status")
    assert status.returncode == 0, status.stderr
    assert re.search(request_id + r"\s+approved", status.stdout) and "welcome" in status.stdout
    llamahub.load(VARIANT).close()  # the hub now finds the grant
    again = client.cli("hub", "requests", "deny", request_id, "--reason", "too late", "--data", data)
    assert again.returncode == 1 and "already approved" in again.stderr

    org = client.account.organisation
    grants = client.cli("hub", "grants", "list", "--organisation", org, "--data", data)
    assert grants.returncode == 0, grants.stderr
    [grant_id] = re.findall(r"^(g_\w+)", grants.stdout, re.M)
    assert "expires never" in grants.stdout
    revoked = client.cli("hub", "grants", "revoke", grant_id, "--data", data)
    assert revoked.returncode == 0 and f"revoked {grant_id}" in revoked.stdout
    with pytest.raises(MauLimitError):  # held to the threshold again
        llamahub.load(VARIANT)
    audit = client.cli("hub", "audit", "--json", "--limit", "10000", "--data", data)
    rows = json.loads(audit.stdout)
    mine = [(r["action"], r["target"]) for r in rows if r["target"] in (request_id, grant_id)]
    assert mine == [("request.submit", request_id), ("grant.create", grant_id),
                    ("request.approve", request_id), ("grant.revoke", grant_id)]
    latest = client.cli("hub", "audit", "--action", "request.", "--limit", "2", "--data", data)
    assert [line.split()[3] for line in latest.stdout.splitlines()] == ["request.submit", "request.approve"]
    assert request_id in latest.stdout and "note=welcome" in latest.stdout


def test_withdraw_and_deny_from_the_command_line(make_client: MakeClient) -> None:
    client = make_client(mau=800_000_000)
    first = client.cli("enterprise", "request", "--family", "llama-2")  # MAU from the profile
    assert first.returncode == 0, first.stderr
    assert "up to 800,000,000 monthly active users" in first.stdout
    first_id = re.findall(r"er_\w+", first.stdout)[0]
    withdrawn = client.cli("enterprise", "withdraw", first_id)
    assert withdrawn.returncode == 0, withdrawn.stderr
    second = client.cli("enterprise", "request", "--family", "llama-2", "--mau", "900000000")
    second_id = re.findall(r"er_\w+", second.stdout)[0]
    denied = client.cli("hub", "requests", "deny", second_id, "--reason", "tell us more",
                        "--data", str(client.hub.data))
    assert denied.returncode == 0, denied.stderr
    status = client.cli("enterprise", "status")
    assert re.search(first_id + r"\s+withdrawn", status.stdout)
    assert re.search(second_id + r"\s+denied", status.stdout) and "tell us more" in status.stdout
    unknown = client.cli("enterprise", "request", "--family", "llama-9")
    assert unknown.returncode == 1 and "unknown families" in unknown.stderr and "llama-2" in unknown.stderr
