"""The client's commands as a user types them: login, profile, license, and the embedded-hub demo."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

from hubtest import CLI, Hub


def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAHUB_")}
    full = clean | {"LLAMAHUB_HOME": str(home), "LLAMAHUB_PROGRESS": "0"} | env
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=full,
                          stdin=subprocess.DEVNULL)


def test_login_profile_license_flow(hub: Hub, tmp_path: Path) -> None:
    home = tmp_path / "home"
    email = f"cli-{uuid.uuid4().hex[:8]}@example.com"
    login = _cli(home, "login", "--hub", hub.url, "--email", email, "--name", "Ada",
                 "--organisation", f"Org {email}", "--country", "de")
    assert login.returncode == 0, login.stderr
    assert f"logged in to {hub.url} as {email}" in login.stdout
    config = json.loads((home / "config" / "config.json").read_text())
    assert config["hub_url"] == hub.url and config["token"].startswith("lh_")
    assert oct((home / "config" / "config.json").stat().st_mode & 0o777) == "0o600"

    bad = _cli(home, "profile", "set", "--use", "astrology")
    assert bad.returncode == 1 and "unknown intended use" in bad.stderr

    ok = _cli(home, "profile", "set", "--mau", "5000", "--use", "chatbot", "--use", "research")
    assert ok.returncode == 0, ok.stderr
    assert f"sent to the hub ({hub.url})" in ok.stdout
    me = hub.client(config["token"]).get("/api/profile").json()
    assert me["mau"] == 5000 and me["intended_uses"] == ["chatbot", "research"]

    shown = _cli(home, "license", "show", "llama2")
    assert shown.returncode == 0
    assert "Llama 2 Community License Agreement" in shown.stdout and "700,000,000" in shown.stdout

    status = json.loads(_cli(home, "license", "status", "--json").stdout)
    assert not any(r["accepted_at"] for r in status["licenses"])
    refused = _cli(home, "license", "accept", "llama2")  # no tty, no --yes: click's confirm aborts
    assert refused.returncode != 0
    accepted = _cli(home, "license", "accept", "llama-2-7b", "--yes")  # a variant names its license
    assert accepted.returncode == 0, accepted.stderr
    assert "accepted Llama 2 Community License Agreement" in accepted.stdout
    status = json.loads(_cli(home, "license", "status", "--json").stdout)
    by_id = {r["id"]: r["accepted_at"] for r in status["licenses"]}
    assert by_id["llama2"] and not by_id["llama3"]  # each version separately

    offline = json.loads(_cli(home, "license", "status", "--json", LLAMAHUB_OFFLINE="1").stdout)
    assert "local receipts only" in offline["source"]
    assert {r["id"]: r["accepted_at"] for r in offline["licenses"]}["llama2"] == by_id["llama2"]

    # A real variant the hub never imported: the gates pass, the hub says what to do.
    missing = _cli(home, "download", "llama-2-7b")
    assert missing.returncode == 1
    assert "has not imported llama-2-7b" in missing.stderr and "llamahub hub import" in missing.stderr


def test_demo_on_the_embedded_hub(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = _cli(home, "demo", "--yes", "--no-progress")
    assert first.returncode == 0, first.stderr
    for step in ("2. license", "5. accept", "6. link", "7. download", "8. load", "9. chat"):
        assert step in first.stdout
    assert "/dl/llama-debug/*?Policy=" in first.stdout
    assert "sha256 verified" in first.stdout
    again = _cli(home, "demo", "--yes", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "already cached and intact" in again.stdout
    # The receipt from the embedded hub lets the cached model load offline, by name.
    offline = _cli(home, "run", "llama-debug-2-chat", "Hi", "-n", "3", LLAMAHUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    chat = subprocess.run([*CLI, "chat", "llama-debug-2-chat", "-n", "4", "--seed", "0"], input="Hello\n\n",
                          capture_output=True, text=True, timeout=120,
                          env=os.environ | {"LLAMAHUB_HOME": str(home), "LLAMAHUB_OFFLINE": "1"})
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count("model> ") == 1


def test_demo_without_yes_does_not_accept(tmp_path: Path) -> None:
    refused = _cli(tmp_path / "home", "demo", "--no-progress")
    assert refused.returncode != 0
    assert "5. accept" not in refused.stdout


def test_progress_bar_follows_the_flag_and_the_environment(tmp_path: Path) -> None:
    shown = _cli(tmp_path / "a", "demo", "--yes", LLAMAHUB_PROGRESS="1")
    assert shown.returncode == 0, shown.stderr
    assert "download: 100%" in shown.stderr
    quiet = _cli(tmp_path / "b", "demo", "--yes", LLAMAHUB_PROGRESS="0")
    assert quiet.returncode == 0, quiet.stderr
    assert "download:" not in quiet.stderr and "7. download" in quiet.stdout
    flag = _cli(tmp_path / "c", "demo", "--yes", "--no-progress", LLAMAHUB_PROGRESS="1")
    assert flag.returncode == 0, flag.stderr
    assert "download:" not in flag.stderr
