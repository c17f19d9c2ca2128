"""Llama 1: research use only, under an application an operator approved (the request workflow)."""

from __future__ import annotations

from hubtest import Hub, MakeUser, error_code


def test_llama1_needs_research_use_and_an_approved_application(hub: Hub, make_user: MakeUser) -> None:
    chatbot = make_user(uses=("chatbot",), accept=("llama1",))
    refused = chatbot.http.post("/api/links", json={"family": "llama-1"})
    assert refused.status_code == 403 and error_code(refused) == "research_only"
    assert "--use research" in refused.json()["error"]["hint"]

    researcher = make_user(uses=("research",), accept=("llama1",))
    unapproved = researcher.http.post("/api/links", json={"family": "llama-1"})
    assert unapproved.status_code == 403 and error_code(unapproved) == "application_required"
    applied = researcher.http.post("/api/enterprise/requests", json={
        "families": ["llama-1"], "mau": 1, "note": "university NLP lab, evaluation of tokenisation"})
    assert applied.status_code == 201, applied.text
    request_id = applied.json()["request"]["id"]
    approved = hub.admin().post(f"/api/admin/enterprise/requests/{request_id}/approve", json={"note": "ok"})
    assert approved.status_code == 200, approved.text
    passed = researcher.http.post("/api/links", json={"family": "llama-1"})
    assert error_code(passed) == "variant_not_imported"  # every gate passed; the demo hub has no weights
    status = {s["id"]: s["accepted"] for s in researcher.http.get("/api/licenses/status").json()["licenses"]}
    assert status["llama1"] and not status["llama3.3"]  # each version separately, 3.3 its own
