"""The ``huggingface`` source (plugins/llamahub_sources/huggingface.py) with our hub as its
endpoint: our gates first, the endpoint's GatedRepo answer as our license error, the files in the
Hugging Face cache and verified into ours, ``HF_HUB_OFFLINE`` served from that cache alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from clienttest import MakeClient
from hubtest import MakeUser

import llamahub

pytest.importorskip("huggingface_hub")

VARIANT = "llama-debug-2-chat"
CACHE_DIR = "models--llamahub--llama-debug-2-chat"


def _hf_env(url: str, token: str, cache: Path, **extra: str) -> dict[str, str]:
    return {"HF_ENDPOINT": url, "HF_TOKEN": token, "HF_HUB_CACHE": str(cache), "LLAMAHUB_PROGRESS": "0",
            **extra}


def test_our_gates_refuse_before_any_request(make_client: MakeClient, tmp_path: Path) -> None:
    client = make_client(accept=())
    hf_cache = tmp_path / "hf"
    run = client.cli("download", VARIANT, "--source", "huggingface",
                     **_hf_env(client.hub.url, client.account.token, hf_cache))
    assert run.returncode != 0
    assert "license" in run.stderr.lower() and "llama-debug" in run.stderr
    assert not hf_cache.exists()  # huggingface_hub was never asked


def test_gated_repo_becomes_our_license_error_with_the_access_url(
        make_client: MakeClient,
        make_user: MakeUser, tmp_path: Path) -> None:
    client = make_client()
    stranger = make_user(accept=())  # the HF token of a user who has not accepted the license on the hub
    run = client.cli("download", VARIANT, "--source", "huggingface",
                     **_hf_env(client.hub.url, stranger.token, tmp_path / "hf"))
    assert run.returncode != 0
    assert "is gated" in run.stderr and "has not accepted" in run.stderr
    assert f"ask for access at {client.hub.url}/llamahub/{VARIANT}" in run.stderr


def test_download_through_the_hf_cache_then_offline(make_client: MakeClient, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client()
    hf_cache = tmp_path / "hf"
    env = _hf_env(client.hub.url, client.account.token, hf_cache)
    run = client.cli("download", VARIANT, "--source", "huggingface", **env)
    assert run.returncode == 0, run.stderr
    snapshots = list((hf_cache / CACHE_DIR / "snapshots").iterdir())
    assert len(snapshots) == 1 and (snapshots[0] / "model.safetensors").is_symlink()
    assert not (snapshots[0] / "original").exists()  # only the HF layout is fetched

    # HF_HUB_OFFLINE: from the HF cache alone (the endpoint named is dead), verified into ours again
    offline = _hf_env("http://127.0.0.1:9", client.account.token, hf_cache, HF_HUB_OFFLINE="1")
    again = client.cli("download", VARIANT, "--source", "huggingface", "--force", **offline)
    assert again.returncode == 0, again.stderr
    empty = _hf_env("http://127.0.0.1:9", client.account.token, tmp_path / "empty", HF_HUB_OFFLINE="1")
    missing = client.cli("download", VARIANT, "--source", "huggingface", "--force", **empty)
    assert missing.returncode != 0 and "HF_HUB_OFFLINE" in missing.stderr

    # the HF-layout snapshot loads to the same model as the Meta layout from the hub source
    text = "The llama said"
    client.use(monkeypatch)
    with llamahub.load(VARIANT, dtype="fp32") as model:
        ids = model.tokenizer.encode(text, bos=True)
        with torch.no_grad():
            from_hf = model.decoder(torch.tensor([ids]), 0)
    other = make_client()
    other.use(monkeypatch)
    with llamahub.load(VARIANT, dtype="fp32") as model, torch.no_grad():
        from_meta = model.decoder(torch.tensor([ids]), 0)
    assert (from_hf - from_meta).abs().max().item() <= 1e-4
