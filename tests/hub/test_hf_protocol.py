"""The unmodified ``huggingface_hub`` client against a running hub: repo info, file lists, gated
downloads (401/403 → GatedRepoError), the HF cache layout, offline re-use, and a resumed download.

In-process calls pass ``endpoint=`` (the client reads ``HF_ENDPOINT`` once, at import); the
``HF_ENDPOINT``/``HF_HUB_OFFLINE`` environment is exercised in subprocesses, as a user runs it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import torch
from hubtest import Account, Hub, MakeUser

hf = pytest.importorskip("huggingface_hub")
from huggingface_hub import errors as hf_errors  # noqa: E402

REPO = "llamahub/llama-debug-2-chat"  # the registry names no HF repo for llama-debug: llamahub/<name>
BIG = "llamahub/llama-debug-big-25m"


def _api(hub: Hub) -> object:
    return hf.HfApi(endpoint=hub.url)


def _download(hub: Hub, cache: Path, token: str | bool, repo: str = REPO, name: str = "config.json") -> str:
    return hf.hf_hub_download(repo, name, endpoint=hub.url, cache_dir=cache, token=token)


def test_refs_and_commits_name_main_at_the_repo_commit(hub: Hub) -> None:
    api = _api(hub)
    sha = api.model_info(REPO, token=False).sha
    refs = api.list_repo_refs(REPO, include_pull_requests=True, token=False)
    assert [(b.name, b.ref, b.target_commit) for b in refs.branches] == [("main", "refs/heads/main", sha)]
    assert refs.tags == [] and refs.pull_requests == []
    commits = api.list_repo_commits(REPO, token=False)
    assert [c.commit_id for c in commits] == [sha] and commits[0].created_at.tzinfo is not None
    assert [c.commit_id for c in api.list_repo_commits(REPO, revision=sha, token=False)] == [sha]
    with pytest.raises(hf_errors.RevisionNotFoundError):
        api.list_repo_commits(REPO, revision="refs/pr/1", token=False)
    with pytest.raises(hf_errors.RepositoryNotFoundError):
        api.list_repo_refs("llamahub/no-such-model", token=False)


def test_repo_info_and_file_list_are_public(hub: Hub) -> None:
    api = _api(hub)
    info = api.model_info(REPO, token=False)
    assert info.id == REPO and len(info.sha) == 40 and info.gated == "manual"
    names = {s.rfilename for s in info.siblings}
    # HF layout converted from the Meta import, and Meta's own files under original/
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
            "original/consolidated.00.pth", "original/consolidated.01.pth", "original/params.json",
            "original/checklist.chk", "LICENSE"} <= names
    assert sorted(api.list_repo_files(REPO, token=False)) == sorted(names)
    assert api.model_info(REPO, revision=info.sha, token=False).sha == info.sha
    assert api.repo_exists(REPO, token=False)
    assert not api.repo_exists("llamahub/no-such-model", token=False)


def test_errors_map_to_the_clients_exceptions(hub: Hub, make_user: MakeUser, tmp_path: Path) -> None:
    api, user = _api(hub), make_user()
    with pytest.raises(hf_errors.RepositoryNotFoundError):
        api.model_info("nobody/nothing", token=False)
    with pytest.raises(hf_errors.RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch", token=False)
    with pytest.raises(hf_errors.RevisionNotFoundError):
        hf.hf_hub_download(REPO, "config.json", revision="0" * 40, endpoint=hub.url, cache_dir=tmp_path,
                           token=user.token)
    with pytest.raises(hf_errors.EntryNotFoundError):
        _download(hub, tmp_path, user.token, name="no-such-file.bin")
    with pytest.raises(hf_errors.RepositoryNotFoundError):
        _download(hub, tmp_path, user.token, repo="nobody/nothing")


def test_gated_without_a_token_is_401(hub: Hub, tmp_path: Path) -> None:
    with pytest.raises(hf_errors.GatedRepoError) as e:
        _download(hub, tmp_path, False)
    assert e.value.response.status_code == 401
    assert "Please log in" in str(e.value)
    assert not list(tmp_path.rglob("config.json"))


@pytest.mark.parametrize(("profile", "reason"), [
    ({"accept": ()}, "has not accepted"),
    ({"mau": 900_000_000}, "700"),  # over the license's MAU threshold, no enterprise grant
], ids=["license-not-accepted", "over-mau"])
def test_gated_failing_our_gates_is_403_with_our_reason(hub: Hub, make_user: MakeUser, tmp_path: Path,
                                                        profile: dict, reason: str) -> None:
    user = make_user(**profile)
    with pytest.raises(hf_errors.GatedRepoError) as e:
        _download(hub, tmp_path, user.token)
    assert e.value.response.status_code == 403
    assert reason in str(e.value)
    head = httpx.head(f"{hub.url}/{REPO}/resolve/main/config.json",
                      headers={"Authorization": f"Bearer {user.token}"})
    assert head.status_code == 403 and head.headers["X-Error-Code"] == "GatedRepo"
    assert "To get access" in head.headers["X-Error-Message"]


def test_whoami_names_the_tokens_user(hub: Hub, make_user: MakeUser) -> None:
    user = make_user()
    assert _api(hub).whoami(token=user.token)["name"] == user.id
    with pytest.raises(hf_errors.HfHubHTTPError) as e:
        _api(hub).whoami(token="hf_not_a_token_of_this_hub")
    assert e.value.response.status_code == 401


def test_a_bad_token_is_refused(hub: Hub, tmp_path: Path) -> None:
    with pytest.raises(hf_errors.HfHubHTTPError) as e:
        _download(hub, tmp_path, "hf_not_a_token_of_this_hub")
    assert e.value.response.status_code == 401


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def test_snapshot_lands_in_the_hf_cache_and_reloads_offline(hub: Hub, make_user: MakeUser,
                                                           tmp_path: Path) -> None:
    user, cache = make_user(), tmp_path / "hf-cache"
    info = _api(hub).model_info(REPO, token=user.token)
    folder = Path(hf.snapshot_download(REPO, endpoint=hub.url, cache_dir=cache, token=user.token))
    repo_dir = cache / "models--llamahub--llama-debug-2-chat"
    assert folder == repo_dir / "snapshots" / info.sha
    assert (repo_dir / "refs" / "main").read_text() == info.sha
    for sibling in info.siblings:
        path = folder / sibling.rfilename
        assert path.is_symlink() and path.resolve().parent == repo_dir / "blobs"
        # the ETag (the blob's name) is the file's sha256, and the bytes are exactly the hub's
        assert path.resolve().name == sibling.lfs.sha256 == _sha256(path)
    # the hub counted the downloads (the client fetches a blob shared by two paths once)
    assert _api(hub).model_info(REPO, token=False).downloads >= len({s.lfs.sha256 for s in info.siblings})

    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": user.token,
                        "HF_HUB_CACHE": str(cache)}
    code = (f"import huggingface_hub as h; print(h.snapshot_download({REPO!r}));"
            f"print(h.hf_hub_download({REPO!r}, 'original/params.json'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines == [str(folder), str(folder / "original" / "params.json")]


def test_hf_download_cli_with_hf_endpoint(hub: Hub, make_user: MakeUser, tmp_path: Path) -> None:
    hf_cli = Path(sys.executable).with_name("hf")
    if not hf_cli.is_file():
        pytest.skip("the hf command is not installed beside this Python")
    user = make_user()
    env = os.environ | {"HF_ENDPOINT": hub.url, "HF_TOKEN": user.token, "HF_HUB_CACHE": str(tmp_path)}
    out = subprocess.run([str(hf_cli), "download", REPO, "config.json", "original/params.json"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    folder = Path(out.stdout.strip().splitlines()[-1].strip().removeprefix("path:").strip())
    assert (folder / "original" / "params.json").is_file() and (folder / "config.json").is_file()
    assert not (folder / "model.safetensors").exists()  # only the files named


class DroppingRelay:
    """A TCP relay to the hub that cuts the connection carrying the first GET of ``marker`` after
    ``limit`` more response bytes (keep-alive connections carry several requests)."""

    def __init__(self, port: int, marker: bytes, limit: int) -> None:
        self.port, self.marker, self.limit = port, marker, limit
        self.requests: list[bytes] = []
        self.dropped = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            state = {"moved": 0, "cut_at": None}
            threading.Thread(target=self._up, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, state), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, state: dict) -> None:
        try:
            while data := client.recv(65536):
                self.requests.append(data)
                first = data.split(b"\r\n", 1)[0]
                if first.startswith(b"GET ") and self.marker in first and not self.dropped:
                    self.dropped += 1
                    state["cut_at"] = state["moved"] + self.limit
                upstream.sendall(data)
        except OSError:
            pass

    @staticmethod
    def _down(upstream: socket.socket, client: socket.socket, state: dict) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
                state["moved"] += len(data)
                if state["cut_at"] is not None and state["moved"] >= state["cut_at"]:
                    break
        except OSError:
            pass
        for s in (client, upstream):
            s.close()

    def close(self) -> None:
        self.listener.close()


def test_an_interrupted_download_resumes(hub: Hub, make_user: MakeUser, tmp_path: Path) -> None:
    user = make_user()
    info = _api(hub).model_info(BIG, token=False)
    [weights] = [s for s in info.siblings if s.rfilename == "model.safetensors"]
    assert weights.size > 20 << 20  # more than twice the client's 10 MiB resume step
    relay = DroppingRelay(hub.port, b"/model.safetensors", limit=15 << 20)
    try:
        path = Path(hf.hf_hub_download(BIG, "model.safetensors", endpoint=relay.url, cache_dir=tmp_path,
                                       token=user.token))
    finally:
        relay.close()
    assert relay.dropped == 1
    resumed = [r for r in relay.requests if r.startswith(b"GET ") and b"model.safetensors" in r
               and b"\r\nrange: bytes=" in r.lower()]
    assert resumed, "the client did not resume with a Range request"
    start = int(resumed[0].lower().split(b"range: bytes=")[1].split(b"-")[0])
    assert 0 < start <= 15 << 20
    assert path.stat().st_size == weights.size and _sha256(path) == weights.lfs.sha256


def test_resolve_answers_ranges_and_the_headers_the_client_needs(hub: Hub, make_user: MakeUser) -> None:
    user: Account = make_user()
    auth = {"Authorization": f"Bearer {user.token}"}
    info = _api(hub).model_info(REPO, token=False)
    [weights] = [s for s in info.siblings if s.rfilename == "model.safetensors"]
    url = f"{hub.url}/{REPO}/resolve/main/model.safetensors"
    head = httpx.head(url, headers=auth)
    assert head.status_code == 200
    assert head.headers["X-Repo-Commit"] == info.sha
    assert head.headers["ETag"] == f'"{weights.lfs.sha256}"' == head.headers["X-Linked-Etag"]
    assert int(head.headers["Content-Length"]) == weights.size == int(head.headers["X-Linked-Size"])
    part = httpx.get(url, headers=auth | {"Range": "bytes=100-199"})
    assert part.status_code == 206 and len(part.content) == 100
    assert part.headers["Content-Range"] == f"bytes 100-199/{weights.size}"
    by_commit = httpx.get(f"{hub.url}/{REPO}/resolve/{info.sha}/model.safetensors", headers=auth)
    assert by_commit.content[100:200] == part.content
    tree = httpx.get(f"{hub.url}/api/models/{REPO}/tree/main", params={"recursive": "true"}).json()
    assert {e["path"] for e in tree if e["type"] == "file"} == {s.rfilename for s in info.siblings}
    top = httpx.get(f"{hub.url}/api/models/{REPO}/tree/main").json()
    assert [e["type"] for e in top if e["path"] == "original"] == ["directory"]
    assert not any("/" in e["path"] for e in top)


def test_an_hf_import_serves_meta_layout_under_original(tmp_path_factory: pytest.TempPathFactory,
                                                       tmp_path: Path) -> None:
    from hubtest import init_hub, run_cli, serving

    from llamahub.model.writer import generate_checkpoint
    from llamahub.registry import shipped

    v = shipped().resolve("llama-debug-3.1-instruct")
    data = tmp_path_factory.mktemp("hf-import-hub")
    admin = init_hub(data, seed=False)
    folder = generate_checkpoint(v, tmp_path / "src", fmt="hf")
    imported = run_cli("hub", "import", str(folder), "--variant", v.name, "--data", str(data))
    assert imported.returncode == 0, imported.stderr
    with serving(data, admin) as (h, _):
        files = set(hf.HfApi(endpoint=h.url).list_repo_files(f"llamahub/{v.name}", token=False))
        assert {"config.json", "model.safetensors", "original/consolidated.00.pth", "original/params.json",
                "original/tokenizer.model", "original/checklist.chk"} <= files
        user = httpx.post(f"{h.url}/api/users", json={"email": "m@example.com", "name": "M",
                                                      "organisation": "M", "country": "us"}).json()["token"]
        auth = {"Authorization": f"Bearer {user}"}
        assert httpx.put(f"{h.url}/api/profile", headers=auth,
                         json={"mau": 10, "intended_uses": ["chatbot"]}).status_code == 200
        assert httpx.post(f"{h.url}/api/licenses/llama-debug/accept", headers=auth).status_code == 201
        snap = Path(hf.snapshot_download(f"llamahub/{v.name}", endpoint=h.url, cache_dir=tmp_path / "c",
                                         token=user, allow_patterns=["original/*"]))
    from llamahub.model.checkpoint import open_checkpoint

    meta = open_checkpoint(snap / "original", args=v.arch).state_dict()
    source = open_checkpoint(folder, args=v.arch).state_dict()
    assert meta.keys() == source.keys() and all(torch.equal(meta[k], source[k]) for k in source)
