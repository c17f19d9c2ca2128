"""``llamahub.load(name)`` end to end against a real hub process: gates, links, download, cache,
offline receipts."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from clienttest import MakeClient

import llamahub
from llamahub.errors import CacheError, LicenseNotAcceptedError, MauLimitError, OfflineError, ReceiptError
from llamahub.model.llm import LlamaModel

VARIANT = "llama-debug-2-chat"


def _greedy(model: LlamaModel) -> str:
    return model.generate("Once upon a time", max_new_tokens=12, temperature=0)


def test_first_load_downloads_second_load_is_offline(make_client: MakeClient, monkeypatch: pytest.MonkeyPatch,
                                                     no_network: Callable[[], None]) -> None:
    client = make_client()
    client.use(monkeypatch)
    model = llamahub.load(VARIANT, dtype="fp32")
    first = _greedy(model)
    model.close()
    [link] = client.links()
    assert link["variants"] == [VARIANT]
    assert link["downloads"]  # the hub counted the files it served
    snaps = list((client.cache / "variants" / VARIANT).glob("*.json"))
    assert len(snaps) == 1

    monkeypatch.setenv("LLAMAHUB_OFFLINE", "1")
    no_network()
    model = llamahub.load(VARIANT, dtype="fp32")
    assert _greedy(model) == first
    model.close()


def test_offline_needs_a_valid_receipt(make_client: MakeClient, monkeypatch: pytest.MonkeyPatch,
                                       no_network: Callable[[], None]) -> None:
    client = make_client()
    client.use(monkeypatch)
    llamahub.load(VARIANT).close()
    receipt = client.home / "data" / "hubs"
    [path] = list(receipt.glob("*/receipts/llama-debug.json"))
    original = path.read_text()

    monkeypatch.setenv("LLAMAHUB_OFFLINE", "1")
    no_network()
    tampered = json.loads(original)
    tampered["payload"]["accepted_at"] = "2020-01-01T00:00:00+00:00"
    path.write_text(json.dumps(tampered))
    with pytest.raises(ReceiptError, match="does not verify"):
        llamahub.load(VARIANT)
    path.unlink()
    with pytest.raises(ReceiptError, match="no acceptance receipt"):
        llamahub.load(VARIANT)
    path.write_text(original)
    llamahub.load(VARIANT).close()


def test_offline_without_a_cached_copy_is_a_clear_error(make_client: MakeClient,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client()
    client.use(monkeypatch)
    llamahub.load(VARIANT).close()  # stores the receipt
    monkeypatch.setenv("LLAMAHUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="llama-debug-2 is not in the cache") as e:
        llamahub.load("llama-debug-2")
    assert "llamahub download llama-debug-2" in (e.value.hint or "")


def test_mau_over_threshold_refused_before_any_download(make_client: MakeClient,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(mau=800_000_000)
    client.use(monkeypatch)
    with pytest.raises(MauLimitError) as e:
        llamahub.load(VARIANT)
    assert "llamahub enterprise request" in (e.value.hint or "")
    assert client.links() == []
    assert client.blobs() == []


def test_a_cached_copy_is_refused_once_the_profile_exceeds_the_threshold(
        make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client()
    client.use(monkeypatch)
    llamahub.load(VARIANT).close()
    grown = client.cli("profile", "set", "--mau", "800000000")
    assert grown.returncode == 0, grown.stderr
    with pytest.raises(MauLimitError):  # online: the hub (which knows grants) refuses
        llamahub.load(VARIANT)
    monkeypatch.setenv("LLAMAHUB_OFFLINE", "1")
    with pytest.raises(MauLimitError):  # offline: refused locally
        llamahub.load(VARIANT)


def test_unaccepted_license_refused_before_any_download(make_client: MakeClient,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(accept=())
    client.use(monkeypatch)
    with pytest.raises(LicenseNotAcceptedError) as e:
        llamahub.load(VARIANT)
    assert "llamahub license accept llama-debug" in (e.value.hint or "")
    assert client.links() == []
    assert client.blobs() == []
    accepted = client.cli("license", "accept", "llama-debug", "--yes")
    assert accepted.returncode == 0, accepted.stderr
    llamahub.load(VARIANT).close()


def test_corrupted_blob_is_found_by_verify_and_on_load(make_client: MakeClient,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client()
    client.use(monkeypatch)
    llamahub.load(VARIANT).close()
    [link] = client.links()
    shard = next((client.cache / "variants" / VARIANT).glob(f"*/{VARIANT}/consolidated.00.pth"))
    blob = shard.resolve()

    def corrupt() -> None:
        os.chmod(blob, 0o644)
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))

    corrupt()
    verify = client.cli("cache", "verify")
    assert verify.returncode == 1
    assert "consolidated.00.pth: sha256" in verify.stdout
    assert not blob.exists()  # removed, so the next load fetches it again

    llamahub.load(VARIANT).close()  # online: fetched again
    assert blob.exists() and len(client.links()) == 2
    assert client.cli("cache", "verify").returncode == 0

    corrupt()
    monkeypatch.setenv("LLAMAHUB_OFFLINE", "1")
    with pytest.raises(CacheError, match="damaged"):
        llamahub.load(VARIANT)
    monkeypatch.delenv("LLAMAHUB_OFFLINE")
    llamahub.load(VARIANT).close()  # online again: the damaged shard is replaced on load
    assert len(client.links()) == 3
    assert link["link_id"] != client.links()[-1]["link_id"]


def test_cache_ls_and_rm(make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client()
    client.use(monkeypatch)
    llamahub.load(VARIANT).close()
    llamahub.load("llama-debug-2").close()
    listed = json.loads(client.cli("cache", "ls", "--json").stdout)
    assert {s["variant"] for s in listed} == {VARIANT, "llama-debug-2"}
    before = {p.name for p in client.blobs()}
    removed = client.cli("cache", "rm", VARIANT)
    assert removed.returncode == 0, removed.stderr
    after = {p.name for p in client.blobs()}
    assert after < before
    # The files both variants share (LICENSE, tokenizer) stay for llama-debug-2.
    kept = next((client.cache / "variants" / "llama-debug-2").glob("*/tokenizer.model")).resolve()
    assert kept.name in after
    assert client.cli("cache", "verify").returncode == 0
    shutil.rmtree(client.cache)


@pytest.mark.parametrize("name", [VARIANT, "llama-debug-3.1-instruct"])  # tokenizer on top / per model
def test_download_returns_a_meta_layout_that_md5sum_accepts(make_client: MakeClient, name: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    client = make_client()
    client.use(monkeypatch)
    root = llamahub.download(name)
    variant = llamahub.variant(name)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == sorted(variant.meta_files())
    check = subprocess.run(["md5sum", "-c", "checklist.chk"], cwd=root / variant.meta_folder,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert llamahub.download(name) == root  # cached: same snapshot, no new link
    assert len(client.links()) == 1
    model = llamahub.load(name)
    assert isinstance(model.chat([{"role": "user", "content": "Hi"}], max_new_tokens=3, temperature=0), str)
    model.close()


def test_unreachable_hub_is_a_clear_error(make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from hubtest import free_port

    from llamahub.errors import HubUnreachableError

    client = make_client(accept=())  # no receipt yet, so the client must ask the hub
    client.use(monkeypatch, LLAMAHUB_HUB_URL=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(HubUnreachableError, match="cannot reach the hub") as e:
        llamahub.load(VARIANT)
    assert "LLAMAHUB_OFFLINE" in (e.value.hint or "")
    assert client.blobs() == []


def test_bad_token_and_bad_source_are_clear_errors(make_client: MakeClient, tmp_path: Path) -> None:
    client = make_client()
    for args in (("license", "status"), ("download", VARIANT)):
        denied = client.cli(*args, LLAMAHUB_TOKEN="lh_not-a-token")
        assert denied.returncode == 1 and "llamahub login" in denied.stderr
    missing = client.cli("download", VARIANT, "--from", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "is not a folder" in missing.stderr
    unknown = client.cli("download", VARIANT, "--source", "ftp")
    assert unknown.returncode == 1 and "no download source named 'ftp'" in unknown.stderr


def test_a_variant_too_big_for_this_machine_is_refused_before_any_network_call(
        make_client: MakeClient, monkeypatch: pytest.MonkeyPatch, no_network) -> None:
    from llamahub.errors import NoBackendError

    client = make_client(accept=("llama2",))
    client.use(monkeypatch)
    no_network()
    with pytest.raises(NoBackendError) as e:
        llamahub.load("llama-2-70b")
    text = str(e.value)
    import llamahub_cpu

    from llamahub.interfaces import LoadOptions

    need = llamahub_cpu.CpuBackend().plan(llamahub.variant("llama-2-70b"), LoadOptions()).host_bytes
    assert "BACKEND" in text and "AVAILABLE" in text and f"{need / 2**30:.1f} GiB" in text  # the table
    assert "smallest is int4 on cpu" in (e.value.hint or "")  # what else was tried: nothing fits
    monkeypatch.undo()
    assert client.links() == []
    assert client.blobs() == []


def test_context_beyond_the_variant_needs_rope_scaling(make_client: MakeClient,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from llamahub.errors import ContextLengthError

    client = make_client()
    client.use(monkeypatch)
    with pytest.raises(ContextLengthError, match="RoPE scaling") as e:
        llamahub.load(VARIANT, context_length=10**6)
    assert "rope_scaling" in (e.value.hint or "")
    assert client.links() == []
    with llamahub.load(VARIANT, context_length=64) as m:
        assert m.context_length == 64
        with pytest.raises(llamahub.ContextLengthError, match="64-token context"):
            m.generate("hello " * 80, max_new_tokens=4)
    limit = llamahub.variant(VARIANT).context_length
    with llamahub.load(VARIANT, context_length=2 * limit, rope_scaling={"factor": 2.0}) as m:
        assert m.context_length == 2 * limit
        assert m.decoder.args.rope_scaling.factor == 2.0
        assert isinstance(m.generate("hello", max_new_tokens=3, temperature=0), str)
