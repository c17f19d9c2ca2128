"""The whole flow over real HTTP, as a user of Meta's links does it: register, declare, accept,
get a link, fetch Meta's layout with wget / curl, and check it with md5sum.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from hubtest import CLI, Hub, MakeUser, downloads, file_url, manifest

from llamahub.model.writer import PLACEHOLDER_LICENSE
from llamahub.registry import _builtin


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian: apt-get install -y {tool})")
    return path


def wget(url: str, target: Path) -> subprocess.CompletedProcess:
    target.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run([need("wget"), "--continue", "-nv", "-O", str(target), url],
                          capture_output=True, text=True, timeout=60)


def curl_resume(url: str, target: Path) -> subprocess.CompletedProcess:
    target.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run([need("curl"), "-sS", "--fail", "-C", "-", "-o", str(target), url],
                          capture_output=True, text=True, timeout=60)


def md5sum_check(folder: Path, checklist: str) -> subprocess.CompletedProcess:
    return subprocess.run([need("md5sum"), "-c", checklist], cwd=folder, capture_output=True, text=True,
                          timeout=60)


def test_register_profile_accept_link_wget_md5sum(hub: Hub, tmp_path: Path) -> None:
    http = httpx.Client(base_url=hub.url, timeout=30)
    reg = http.post("/api/users", json={"email": "flow@example.com", "name": "Flow",
                                        "organisation": "Flow Ltd", "country": "GB"})
    assert reg.status_code == 201
    http.headers["Authorization"] = f"Bearer {reg.json()['token']}"
    # nothing declared or accepted yet: the gates refuse, naming the next step
    refused = http.post("/api/links", json={"variant": "llama-debug-2-chat"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "license_not_accepted"
    assert "llamahub license accept llama-debug" in refused.json()["error"]["hint"]
    profile = {"mau": 5_000, "intended_uses": ["chatbot", "research"]}
    assert http.put("/api/profile", json=profile).status_code == 200
    shown = http.get("/api/licenses/llama-debug/text")
    accepted = http.post("/api/licenses/llama-debug/accept",
                         json={"text_sha256": hashlib.sha256(shown.content).hexdigest()})
    assert accepted.status_code == 201
    link = http.post("/api/links", json={"variant": "llama-debug-2-chat"})
    assert link.status_code == 201, link.text
    url = link.json()["url"]
    assert url.startswith(f"{hub.url}/dl/llama-debug/*?Policy=") and "&Key-Pair-Id=" in url

    variant = _builtin().resolve("llama-debug-2-chat")
    root = tmp_path / "download"
    for path in variant.meta_files():  # what Meta's download.sh fetches, in its order
        out = wget(file_url(url, path), root / path)
        assert out.returncode == 0, out.stderr
    assert md5sum_check(root, "tokenizer_checklist.chk").returncode == 0
    check = md5sum_check(root / variant.meta_folder, "checklist.chk")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "consolidated.01.pth: OK" in check.stdout and "params.json: OK" in check.stdout
    assert (root / "LICENSE").read_text() == PLACEHOLDER_LICENSE  # the imported text is served
    assert set(downloads(hub, url).values()) == {1}

    # download.sh run again: wget --continue finds every file complete; nothing more is counted
    for path in variant.meta_files():
        again = wget(file_url(url, path), root / path)
        assert again.returncode == 0, again.stderr
    assert set(downloads(hub, url).values()) == {1}
    assert md5sum_check(root / variant.meta_folder, "checklist.chk").returncode == 0


def test_curl_resumes_an_interrupted_file(hub: Hub, make_user: MakeUser, tmp_path: Path) -> None:
    url = make_user().link(variant="llama-debug-3.1-instruct")["url"]
    variant = _builtin().resolve("llama-debug-3.1-instruct")
    root = tmp_path / "dl"
    shard = f"{variant.meta_folder}/consolidated.00.pth"
    (root / variant.meta_folder).mkdir(parents=True)
    partial = subprocess.run([need("curl"), "-sS", "--fail", "-r", "0-9999", "-o", str(root / shard),
                              file_url(url, shard)], capture_output=True, timeout=60)
    assert partial.returncode == 0 and (root / shard).stat().st_size == 10_000
    for path in variant.meta_files():
        out = curl_resume(file_url(url, path), root / path)
        assert out.returncode == 0, out.stderr
    check = md5sum_check(root / variant.meta_folder, "checklist.chk")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "tokenizer.model: OK" in check.stdout  # Llama 3 layout: tokenizer inside the model folder
    assert downloads(hub, url)[shard] == 1  # the resumed request was not a second download


def test_manifest_lists_every_file_with_checksums(hub: Hub, make_user: MakeUser) -> None:
    url = make_user().link(family="llama-debug")["url"]
    data = manifest(hub, url)
    expected = {p for name in ("llama-debug-2", "llama-debug-2-chat", "llama-debug-3.1",
                               "llama-debug-3.1-instruct") for p in _builtin().resolve(name).meta_files()}
    assert {f["path"] for f in data["files"]} == expected
    assert data["max_downloads"] == 5 and data["family"] == "llama-debug"
    for entry in data["files"]:
        if entry["path"].endswith((".chk", ".json", "LICENSE")):
            body = httpx.get(file_url(url, entry["path"])).content
            assert len(body) == entry["size"]
            assert hashlib.md5(body).hexdigest() == entry["md5"]
            assert hashlib.sha256(body).hexdigest() == entry["sha256"]


def test_link_command_prints_a_working_url(hub: Hub, make_user: MakeUser) -> None:
    account = make_user()
    out = subprocess.run([*CLI, "link", "llama-debug", "--hub", hub.url, "--token", account.token],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip()
    assert url.startswith(f"{hub.url}/dl/llama-debug/*?Policy=")
    assert httpx.get(file_url(url, "USE_POLICY.md")).status_code == 200
    env = {**os.environ, "LLAMAHUB_HUB_URL": hub.url, "LLAMAHUB_TOKEN": account.token}
    by_env = subprocess.run([*CLI, "link", "llama-debug-3.1", "--variant"], capture_output=True, text=True,
                            timeout=60, env=env)
    assert by_env.returncode == 0 and "/dl/llama-debug/*?" in by_env.stdout


def test_link_command_reports_a_gate_refusal(hub: Hub, make_user: MakeUser) -> None:
    account = make_user(accept=())
    out = subprocess.run([*CLI, "link", "llama-debug", "--hub", hub.url, "--token", account.token],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "has not accepted" in out.stderr
    assert "next: run `llamahub license accept llama-debug`" in out.stderr
