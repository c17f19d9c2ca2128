"""Local folders are gated like downloads: a folder of a known variant by its license (receipts
work offline); an unknown folder by the license its LICENSE file's digest names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from clienttest import MakeClient

import llamahub
from llamahub.errors import LicenseError, LicenseNotAcceptedError


def _hf_folder(tmp_path: Path, name: str) -> Path:
    """A Hugging Face folder that identifies as ``name`` (its config; the weights are not real)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(llamahub.variant(name).arch.to_hf_config()))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_a_known_variant_folder_needs_its_license(make_client: MakeClient, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    client = make_client()
    client.use(monkeypatch)
    folder = _hf_folder(tmp_path, "llama-3.2-1b")
    with pytest.raises(LicenseNotAcceptedError, match=r"llama3\.2"):
        llamahub.load(folder, variant="llama-3.2-1b")
    accepted = client.cli("license", "accept", "llama3.2", "--yes")
    assert accepted.returncode == 0, accepted.stderr
    monkeypatch.setenv("LLAMAHUB_OFFLINE", "1")  # the stored receipt is enough
    with pytest.raises(llamahub.LlamahubError) as e:  # past the gates: the empty weights file fails
        llamahub.load(folder, variant="llama-3.2-1b")
    assert not isinstance(e.value, LicenseError)


def test_an_unknown_folder_is_gated_by_its_license_file(make_client: MakeClient,
                                                         monkeypatch: pytest.MonkeyPatch, debug_root: Path,
                                                         tmp_path: Path) -> None:
    client = make_client()
    client.use(monkeypatch)
    download = tmp_path / "download"
    shutil.copytree(debug_root / "llama-debug-2-chat", download)
    folder = download / "my-model"
    (download / "llama-debug-2-chat").rename(folder)
    (folder / "llamahub.json").unlink(missing_ok=True)
    model = llamahub.load(folder)  # an ad-hoc variant with no LICENSE: nothing to gate
    model.close()
    text = httpx.get(f"{client.hub.url}/api/licenses/llama3/text").content
    (download / "LICENSE").write_bytes(text)  # the text of the Llama 3 license, as this hub shows it
    with pytest.raises(LicenseNotAcceptedError, match="llama3"):
        llamahub.load(folder)
    assert client.cli("license", "accept", "llama3", "--yes").returncode == 0
    monkeypatch.setenv("LLAMAHUB_OFFLINE", "1")  # identified offline from the accepted text's digest
    llamahub.load(folder).close()
    (download / "LICENSE").write_bytes(text + b"edited")
    llamahub.load(folder).close()  # a text no license has: unknown, not gated
