"""The newest ``huggingface_hub`` 0.x (requests-based, still pinned by older stacks) against a running
hub, run from its own venv: ``LLAMAHUB_HF0_PYTHON`` names that venv's python (``.ci/run`` makes
it: ``python3 -m venv .venv-hf0 && .venv-hf0/bin/pip install 'huggingface_hub<1'``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hubtest import Hub, MakeUser

PYTHON = os.environ.get("LLAMAHUB_HF0_PYTHON")
pytestmark = pytest.mark.skipif(not PYTHON or not Path(PYTHON).is_file(),
                                reason="LLAMAHUB_HF0_PYTHON does not name a python with huggingface_hub 0.x")
REPO = "llamahub/llama-debug-2-chat"
SCRIPT = """
import json, os, sys
import huggingface_hub as h
from huggingface_hub.utils import GatedRepoError
repo, good, bad = sys.argv[1:4]
out = {"version": h.__version__}
info = h.model_info(repo, token=False)
out["sha"], out["gated"] = info.sha, info.gated
out["files"] = sorted(h.list_repo_files(repo, token=False))
for name, token in (("anonymous", False), ("refused", bad)):
    try:
        h.hf_hub_download(repo, "config.json", token=token)
        out[name] = "downloaded"
    except GatedRepoError as e:
        out[name] = e.response.status_code
out["snapshot"] = h.snapshot_download(repo, token=good)
print(json.dumps(out))
"""
OFFLINE = "import huggingface_hub as h, sys; print(h.snapshot_download(sys.argv[1]))"


def test_huggingface_hub_0x(hub: Hub, make_user: MakeUser, tmp_path: Path) -> None:
    good, bad = make_user(), make_user(accept=())
    env = os.environ | {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path),
                        "HF_HUB_DISABLE_TELEMETRY": "1"}
    run = subprocess.run([str(PYTHON), "-c", SCRIPT, REPO, good.token, bad.token], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["version"].startswith("0.")
    assert len(out["sha"]) == 40 and out["gated"] == "manual"
    assert {"config.json", "model.safetensors", "original/params.json"} <= set(out["files"])
    assert (out["anonymous"], out["refused"]) == (401, 403)
    snapshot = Path(out["snapshot"])
    assert snapshot == tmp_path / "models--llamahub--llama-debug-2-chat" / "snapshots" / out["sha"]
    fetched = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    assert fetched == set(out["files"])

    offline = env | {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    again = subprocess.run([str(PYTHON), "-c", OFFLINE, REPO], env=offline, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip() == str(snapshot)
