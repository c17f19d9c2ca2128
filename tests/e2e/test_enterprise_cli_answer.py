"""`llamahub enterprise request --use` and `llamahub enterprise answer` as users type them, against
a real hub on 127.0.0.1; the hub's state is checked afterwards through its API and audit log."""

from __future__ import annotations

import re

from clienttest import MakeClient


def _request_id(stdout: str) -> str:
    found = re.search(r"submitted (er_\w+)", stdout)
    assert found is not None, stdout
    return found.group(1)


def test_a_research_exception_asked_for_answered_and_granted(make_client: MakeClient) -> None:
    client = make_client(uses=("research", "weapons"))
    submitted = client.cli("enterprise", "request", "--family", "llama-debug", "--mau", "1000",
                           "--use", "weapons", "--note", "arms-control treaty verification research")
    assert submitted.returncode == 0, submitted.stderr
    request_id = _request_id(submitted.stdout)
    admin = client.hub.admin()
    rows = admin.get("/api/admin/enterprise/requests").json()["requests"]
    (row,) = [r for r in rows if r["id"] == request_id]
    assert (row["status"], row["uses"], row["families"], row["mau"]) == (
        "pending", ["weapons"], ["llama-debug"], 1000)

    early = client.cli("enterprise", "answer", request_id, "nobody asked")
    assert early.returncode == 1 and "has no open question" in early.stderr

    data = str(client.hub.data)
    asked = client.cli("hub", "requests", "ask", request_id, "--question", "Which institution oversees it?",
                       "--data", data, LLAMAHUB_OPERATOR="dana")
    assert asked.returncode == 0, asked.stderr
    assert f"asked; {request_id} waits for the requester's answer" in asked.stdout
    listed = client.cli("hub", "requests", "list", "--status", "needs_info", "--data", data)
    assert request_id in listed.stdout and "answer: (none yet)" in listed.stdout
    status = client.cli("enterprise", "status")
    assert re.search(request_id + r"\s+needs_info", status.stdout)
    assert "the reviewer asks: Which institution oversees it?" in status.stdout
    assert f"llamahub enterprise answer {request_id}" in status.stdout

    answered = client.cli("enterprise", "answer", request_id, "A university lab and its ethics board")
    assert answered.returncode == 0, answered.stderr
    assert f"answered; {request_id} is back with the reviewer" in answered.stdout
    (mine,) = client.account.http.get("/api/enterprise/requests").json()["requests"]
    assert (mine["status"], mine["info_request"], mine["info_answer"]) == (
        "pending", "Which institution oversees it?", "A university lab and its ethics board")
    again = client.cli("enterprise", "answer", request_id, "a second answer")
    assert again.returncode == 1 and "has no open question" in again.stderr

    listed = client.cli("hub", "requests", "list", "--data", data)
    assert "answer: A university lab and its ethics board" in listed.stdout
    approved = client.cli("hub", "requests", "approve", request_id, "--note", "research exception",
                          "--data", data, LLAMAHUB_OPERATOR="dana")
    assert approved.returncode == 0, approved.stderr
    (mine,) = client.account.http.get("/api/enterprise/requests").json()["requests"]
    assert (mine["status"], mine["info_answer"]) == ("approved", "A university lab and its ethics board")
    grant = admin.get("/api/admin/grants").json()["grants"]
    assert [g["uses"] for g in grant if g["id"] == mine["grant_id"]] == [["weapons"]]
    entries = admin.get("/api/admin/audit", params={"action": "request."}).json()["entries"]
    trail = [(e["action"], e["actor"], e["detail"].get("answer") or e["detail"].get("uses"))
             for e in entries if e["target"] == request_id]
    me = f"user:{client.account.id}"
    assert trail == [("request.submit", me, ["weapons"]), ("request.needs_info", "operator:dana", None),
                     ("request.answer", me, "A university lab and its ethics board"),
                     ("request.approve", "operator:dana", None)]


def test_answers_and_uses_the_hub_refuses(make_client: MakeClient) -> None:
    client, other = make_client(uses=("research",)), make_client()
    unknown_use = client.cli("enterprise", "request", "--family", "llama-debug", "--mau", "1000",
                             "--use", "no-such-category")
    assert unknown_use.returncode == 1 and "no-such-category" in unknown_use.stderr
    assert client.account.http.get("/api/enterprise/requests").json()["requests"] == []

    submitted = client.cli("enterprise", "request", "--family", "llama-debug", "--mau", "1000")
    request_id = _request_id(submitted.stdout)
    data = str(client.hub.data)
    blank = client.cli("hub", "requests", "ask", request_id, "--question", "  ", "--data", data)
    assert blank.returncode == 2 and "the question is empty" in blank.stderr
    nowhere = client.cli("hub", "requests", "ask", "er_doesnotexist", "--question", "Who?", "--data", data)
    assert nowhere.returncode == 1 and "no enterprise request er_doesnotexist" in nowhere.stderr
    client.hub.admin().post(f"/api/admin/enterprise/requests/{request_id}/needs-info",
                            json={"question": "Who are the users?"}).raise_for_status()
    not_mine = other.cli("enterprise", "answer", request_id, "I am not the requester")
    assert not_mine.returncode == 1 and f"no enterprise request {request_id}" in not_mine.stderr
    unknown = client.cli("enterprise", "answer", "er_doesnotexist", "hello")
    assert unknown.returncode == 1 and "no enterprise request er_doesnotexist" in unknown.stderr
    (mine,) = client.account.http.get("/api/enterprise/requests").json()["requests"]
    assert (mine["status"], mine["info_answer"]) == ("needs_info", None)  # nothing landed
