"""Importing model folders: checks before anything is recorded, Meta's layout, HF folders, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from llamahub.cli import main
from llamahub.hub.blobs import BlobStore
from llamahub.hub.errors import ImportRefusedError
from llamahub.hub.importer import import_folder
from llamahub.hub.store import Store
from llamahub.model.writer import generate_checkpoint, random_state_dict, write_meta
from llamahub.registry import Variant, _builtin

CHAT = "llama-debug-2-chat"


def variant(name: str) -> Variant:
    return _builtin().resolve(name)


@pytest.fixture
def hub(tmp_path: Path) -> tuple[Store, BlobStore]:
    store = Store.for_dir(tmp_path / "hub")
    store.create_all()
    yield store, BlobStore(tmp_path / "hub")
    store.close()


@pytest.fixture
def download(tmp_path: Path) -> Path:
    """A Meta download root holding llama-debug-2-chat."""
    root = tmp_path / "download"
    generate_checkpoint(variant(CHAT), root, dtype=torch.float32)
    return root


def blob_files(blobs: BlobStore) -> list[Path]:
    return sorted(p for p in blobs.objects.rglob("*") if p.is_file()) if blobs.objects.exists() else []


def refused(hub: tuple[Store, BlobStore], folder: Path, name: str = CHAT) -> ImportRefusedError:
    store, blobs = hub
    with pytest.raises(ImportRefusedError) as e:
        import_folder(store, blobs, folder, variant(name))
    assert store.imported() == [] and blob_files(blobs) == []  # nothing recorded, no blob left behind
    return e.value


def test_import_a_meta_download_root(hub: tuple[Store, BlobStore], download: Path) -> None:
    store, blobs = hub
    report = import_folder(store, blobs, download, variant(CHAT))
    assert {f.path for f in report.files} == set(variant(CHAT).meta_files())
    assert report.format == "meta" and report.new_blobs == len(blob_files(blobs))
    rows = {f["path"]: f for f in store.files([CHAT])}
    shard = download / CHAT / "consolidated.01.pth"
    assert rows[f"{CHAT}/consolidated.01.pth"]["size"] == shard.stat().st_size
    assert blobs.path(rows["LICENSE"]["sha256"]).read_bytes() == (download / "LICENSE").read_bytes()
    # the model folder itself works too, and re-importing replaces the record
    again = import_folder(store, blobs, download / CHAT, variant(CHAT))
    assert again.new_blobs == 0 and len(store.imported()) == 1
    assert store.audit_log(action="variant.import")[-1]["detail"]["replaced"] is True


def test_checksum_mismatch_is_refused(hub: tuple[Store, BlobStore], download: Path) -> None:
    params = download / CHAT / "params.json"
    params.write_text(params.read_text() + "\n")  # still valid JSON, but not what checklist.chk says
    error = refused(hub, download)
    assert error.code == "checksum_mismatch" and "params.json" in error.message


def test_wrong_shapes_are_refused(hub: tuple[Store, BlobStore], download: Path) -> None:
    small = replace(variant(CHAT).arch, dim=32)
    write_meta(download / CHAT, small, random_state_dict(small), shards=2, llama2_style=True)
    error = refused(hub, download)
    assert error.code == "corrupt_checkpoint" and "does not hold llama-debug-2-chat" in error.message


def test_missing_files_are_refused(hub: tuple[Store, BlobStore], download: Path) -> None:
    (download / "tokenizer_checklist.chk").unlink()
    (download / CHAT / "consolidated.01.pth").unlink()
    error = refused(hub, download)
    assert error.code == "missing_file"
    assert "consolidated.01.pth" in error.message and "tokenizer_checklist.chk" in error.message


def test_checklist_naming_a_file_outside_the_layout(hub: tuple[Store, BlobStore], download: Path) -> None:
    checklist = download / CHAT / "checklist.chk"
    checklist.write_text(checklist.read_text() + "d41d8cd98f00b204e9800998ecf8427e  fp8_scales_0.pt\n")
    error = refused(hub, download)
    assert error.code == "bad_checklist" and "fp8_scales_0.pt" in error.message


def test_shared_top_level_files_must_agree(hub: tuple[Store, BlobStore], tmp_path: Path,
                                           download: Path) -> None:
    store, blobs = hub
    import_folder(store, blobs, download, variant(CHAT))
    other = tmp_path / "other-download"
    generate_checkpoint(variant("llama-debug-2"), other, dtype=torch.float32)
    (other / "LICENSE").write_text("a different license text\n")
    with pytest.raises(ImportRefusedError) as e:
        import_folder(store, blobs, other, variant("llama-debug-2"))
    assert e.value.code == "conflicting_file" and "LICENSE" in e.value.message
    assert [v["name"] for v in store.imported()] == [CHAT]


def test_import_an_hf_folder(hub: tuple[Store, BlobStore], tmp_path: Path) -> None:
    store, blobs = hub
    folder = generate_checkpoint(variant("llama-debug-3.1-instruct"), tmp_path / "hf", fmt="hf",
                                 dtype=torch.float32)
    report = import_folder(store, blobs, folder, variant("llama-debug-3.1-instruct"))
    paths = {f.path for f in report.files}
    assert report.format == "hf"
    assert {"llama-debug-3.1-instruct/config.json", "llama-debug-3.1-instruct/model.safetensors"} <= paths
    assert "llama-debug-3.1-instruct/llamahub.json" not in paths
    config = json.loads(blobs.read_bytes(store.file_at(["llama-debug-3.1-instruct"],
                                                       "llama-debug-3.1-instruct/config.json")["sha256"]))
    assert config["hidden_size"] == 64


def test_hub_import_command(tmp_path: Path, download: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "hub"
    assert main(["hub", "import", str(download), "--variant", CHAT, "--data", str(data)]) == 1
    assert "is not a hub" in capsys.readouterr().err and not data.exists()  # init comes first
    assert main(["hub", "init", "--data", str(data)]) == 0
    capsys.readouterr()
    assert main(["hub", "import", str(download), "--variant", CHAT, "--data", str(data)]) == 0
    assert f"imported {CHAT} (meta): 8 files" in capsys.readouterr().out
    assert main(["hub", "import", str(download), "--variant", "llama-debug-3.1", "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "next:" in err and "Traceback" not in err


def test_a_full_blob_folder_fails_the_import_and_keeps_the_hub_as_it_was(tmp_path: Path) -> None:
    """The blob folder's volume fills mid-import (a file-size limit on the importing process stands in
    for a full disk): the import fails with a clear message, no half blob or record is left."""
    import resource
    import subprocess

    from hubtest import CLI, init_hub

    data = tmp_path / "hub"
    init_hub(data, seed=False)
    v = _builtin().resolve("llama-debug-big-25m")
    generate_checkpoint(v, tmp_path / "src")

    def limit() -> None:  # 10 MB per file: the 25 MB shard cannot be written
        resource.setrlimit(resource.RLIMIT_FSIZE, (10 << 20, 10 << 20))

    done = subprocess.run([*CLI, "hub", "import", str(tmp_path / "src"), "--variant", v.name, "--data",
                           str(data)], capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert done.returncode != 0, done.stdout
    assert "cannot store a blob" in done.stderr and "free space" in done.stderr
    assert "Traceback" not in done.stderr
    blobs = data / "blobs"
    assert [p for p in blobs.rglob("*") if p.is_file()] == []  # no blob, no half-written temporary file
    store = Store.for_dir(data)
    try:
        assert store.imported(v.family) == []
    finally:
        store.close()
