"""MAU as the licenses count it: per version, over the calendar month before its release date."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

from hubtest import CLI, Hub, MakeUser, error_code


def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAHUB_")}
    full = clean | {"LLAMAHUB_HOME": str(home), "LLAMAHUB_PROGRESS": "0"} | env
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=full,
                          stdin=subprocess.DEVNULL)


def test_500m_then_800m_now(hub: Hub, make_user: MakeUser) -> None:
    """500M at Llama 2's release, 800M today: Llama 2 passes, Llama 3.1 needs a grant."""
    account = make_user(mau=None, accept=("llama2", "llama3.1"))
    patched = account.http.patch("/api/profile", json={"mau": 800_000_000, "intended_uses": ["chatbot"],
                                                       "mau_at": {"llama2": 500_000_000}})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["mau_declarations"][0] | {"declared_at": None} == {
        "license_id": "llama2", "as_of": "2023-07-18", "mau": 500_000_000, "declared_at": None}
    llama2 = account.http.post("/api/links", json={"family": "llama-2"})
    assert error_code(llama2) == "variant_not_imported"  # every gate passed; the demo hub lacks the weights
    llama31 = account.http.post("/api/links", json={"family": "llama-3.1"})
    assert llama31.status_code == 403 and error_code(llama31) == "mau_over_threshold"
    error = llama31.json()["error"]
    assert "800,000,000" in error["message"] and "--mau-at llama3.1=N" in error["hint"]


def test_no_declaration_is_refused_with_what_to_declare(hub: Hub, make_user: MakeUser) -> None:
    account = make_user(mau=None)
    assert account.http.patch("/api/profile", json={"intended_uses": ["chatbot"]}).status_code == 200
    assert account.http.get("/api/profile").json()["mau"] is None  # not 0
    refused = account.http.post("/api/links", json={"family": "llama-debug"})
    assert refused.status_code == 403 and error_code(refused) == "mau_not_declared"
    error = refused.json()["error"]
    assert "2026-01-01" in error["message"] and "--mau-at llama-debug=N" in error["hint"]
    assert account.http.patch("/api/profile", json={"mau_at": {"llama-debug": 10}}).status_code == 200
    assert account.http.post("/api/links", json={"family": "llama-debug"}).status_code == 201
    unknown = account.http.patch("/api/profile", json={"mau_at": {"llama9": 10}})
    assert unknown.status_code == 404 and error_code(unknown) == "unknown_license"


def test_profile_set_changes_only_the_fields_given(hub: Hub, tmp_path: Path) -> None:
    home = tmp_path / "home"
    email = f"mau-{uuid.uuid4().hex[:8]}@example.com"
    login = _cli(home, "login", "--hub", hub.url, "--email", email, "--name", "Ada",
                 "--organisation", f"Org {email}", "--country", "de")
    assert login.returncode == 0, login.stderr
    token = json.loads((home / "config" / "config.json").read_text())["token"]
    first = _cli(home, "profile", "set", "--mau", "800000000", "--use", "chatbot",
                 "--certification", "ISO 27001", "--mau-at", "llama-2-7b=500_000_000")
    assert first.returncode == 0, first.stderr
    second = _cli(home, "profile", "set", "--use", "research")
    assert second.returncode == 0, second.stderr
    me = hub.client(token).get("/api/profile").json()
    assert me["certifications"] == ["ISO 27001"] and me["intended_uses"] == ["research"]
    assert me["mau"] == 800_000_000 and me["mau_at"] == {"llama2": 500_000_000}
    shown = _cli(home, "profile", "show")
    assert "llama2: 500,000,000 (the calendar month before 2023-07-18)" in shown.stdout
    bad = _cli(home, "profile", "set", "--mau-at", "llama2")
    assert bad.returncode == 1 and "LICENSE=N" in bad.stderr
    history = hub.client(token).get("/api/profile/history").json()["history"]
    assert [h["intended_uses"] for h in history] == [["chatbot"], ["research"]]
