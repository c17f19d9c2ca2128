"""The other layout of an import (llamahub/hub/layouts.py): Meta → HF and HF → Meta, converted once at
import, read back and compared, recorded with digests like any blob."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llamahub.hub import layouts
from llamahub.hub.blobs import BlobStore
from llamahub.hub.hf_repos import converted
from llamahub.hub.importer import import_folder
from llamahub.hub.store import Store
from llamahub.model import convert
from llamahub.model.checklist import parse_checklist
from llamahub.model.checkpoint import open_checkpoint
from llamahub.model.writer import generate_checkpoint
from llamahub.registry import Variant, shipped

CHAT = "llama-debug-2-chat"  # Llama 2 style: 2 shards, tokenizer at the top
L3 = "llama-debug-3.1"  # Llama 3 style: GQA, tokenizer in the model folder


class Ctx:
    """What hf_repos.converted reads of a hub context: the store."""

    def __init__(self, store: Store) -> None:
        self.store = store


def variant(name: str) -> Variant:
    return shipped().resolve(name)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[Store, BlobStore]]:
    store = Store.for_dir(tmp_path / "hub")
    store.create_all()
    yield store, BlobStore(tmp_path / "hub")
    store.close()


def rows(store: Store, name: str) -> dict[str, dict]:
    return {r["path"]: r for r in converted(Ctx(store), name)}  # type: ignore[arg-type]


def blob_sha(blobs: BlobStore, sha256: str) -> str:
    with blobs.path(sha256).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@pytest.mark.parametrize("name", [CHAT, L3])
def test_a_meta_import_is_also_kept_in_hf_layout(hub: tuple[Store, BlobStore], tmp_path: Path,
                                                 name: str) -> None:
    store, blobs = hub
    v = variant(name)
    generate_checkpoint(v, tmp_path / "src", dtype=torch.float32)
    report = import_folder(store, blobs, tmp_path / "src", v)
    got = rows(store, name)
    assert {p.removeprefix(f"{name}/") for p in got} >= {"model.safetensors", "config.json",
                                                         "generation_config.json", "tokenizer.model",
                                                         "tokenizer.json", "tokenizer_config.json"}
    assert {r.path for r in report.converted} == set(got)
    for row in got.values():  # digests recorded like any blob's
        assert blob_sha(blobs, row["sha256"]) == row["sha256"]
        assert blobs.path(row["sha256"]).stat().st_size == row["size"]
    meta = open_checkpoint(tmp_path / "src" / v.meta_folder, args=v.arch).state_dict()
    hf = load_file(blobs.path(got[f"{name}/model.safetensors"]["sha256"]))
    back = convert.hf_to_meta(hf, v.arch)
    assert set(back) == set(meta) and all(torch.equal(back[k], meta[k]) for k in meta)
    config = json.loads(blobs.read_bytes(got[f"{name}/config.json"]["sha256"]))
    assert config["num_key_value_heads"] == v.arch.kv_heads and config["torch_dtype"] == "float32"
    tokenizer = next(f for f in report.files if f.path.endswith("tokenizer.model"))
    assert got[f"{name}/tokenizer.model"]["sha256"] == tokenizer.sha256  # one blob for both layouts


def test_an_hf_import_is_also_kept_in_meta_layout(hub: tuple[Store, BlobStore], tmp_path: Path) -> None:
    store, blobs = hub
    v = variant(CHAT)
    folder = generate_checkpoint(v, tmp_path / "src", fmt="hf", dtype=torch.float32)
    report = import_folder(store, blobs, folder, v)
    assert report.format == "hf"
    got = rows(store, CHAT)
    expected = {p for p in v.meta_files() if p not in ("LICENSE", "USE_POLICY.md")}
    assert set(got) == expected  # Meta's paths: shards, params, checklists, the tokenizer at the top
    checklist = parse_checklist(blobs.read_bytes(got[f"{v.meta_folder}/checklist.chk"]["sha256"]).decode(),
                                f"{v.meta_folder}/")
    assert checklist and all(got[p]["md5"] == md5 for p, md5 in checklist.items())  # md5sum -c holds
    out = tmp_path / "served" / v.meta_folder
    out.mkdir(parents=True)
    for path, row in got.items():
        if path.startswith(f"{v.meta_folder}/"):
            (out / path.rpartition("/")[2]).write_bytes(blobs.read_bytes(row["sha256"]))
    shards = open_checkpoint(out, args=v.arch).state_dict()
    source = open_checkpoint(folder, args=v.arch).state_dict()
    assert all(torch.equal(shards[k], source[k]) for k in source)
    weights = sum(t.numel() * t.element_size() for t in source.values())
    written = sum(p.stat().st_size for p in out.glob("consolidated.*.pth"))
    assert weights <= written < 1.1 * weights  # each shard holds its slices, not the whole tensors


def test_no_convert_keeps_one_layout_and_reimport_replaces_the_other(hub: tuple[Store, BlobStore],
                                                                     tmp_path: Path) -> None:
    store, blobs = hub
    v = variant(CHAT)
    generate_checkpoint(v, tmp_path / "src", dtype=torch.float32)
    import_folder(store, blobs, tmp_path / "src", v, convert=False)
    assert rows(store, CHAT) == {}
    import_folder(store, blobs, tmp_path / "src", v)
    first = rows(store, CHAT)
    import_folder(store, blobs, tmp_path / "src", v)
    assert rows(store, CHAT).keys() == first.keys()


def test_big_models_are_sharded_with_an_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v = variant(CHAT)
    generate_checkpoint(v, tmp_path / "src", dtype=torch.float32)
    monkeypatch.setattr(layouts, "SHARD_BYTES", 100_000)
    files = layouts.to_hf(tmp_path / "src" / v.meta_folder, v, None, {}, tmp_path / "out")
    shards = sorted(p for p in files if p.endswith(".safetensors"))
    assert len(shards) > 1 and f"{CHAT}/model.safetensors.index.json" in files
    index = json.loads(Path(files[f"{CHAT}/model.safetensors.index.json"]).read_text())
    keys = {k for s in shards for k in load_file(files[s])}
    assert set(index["weight_map"]) == keys
    assert set(index["weight_map"].values()) == {s.removeprefix(f"{CHAT}/") for s in shards}


def test_conversion_holds_about_one_shard_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 70B model must convert in one shard's memory, not the merged model's: count the bytes of
    merged source tensors still alive each time the reader hands over the next one."""
    import weakref

    from llamahub.model.reader import CheckpointReader

    v = variant(CHAT)  # two Meta shards: every split tensor is a merged copy
    generate_checkpoint(v, tmp_path / "src", dtype=torch.float32)
    monkeypatch.setattr(layouts, "SHARD_BYTES", 100_000)
    tensors = CheckpointReader.tensors
    alive: list[tuple[weakref.ref, int]] = []
    peaks: list[int] = []

    def watched(self: CheckpointReader, **kw: object) -> Iterator[tuple[str, torch.Tensor]]:
        for key, t in tensors(self, **kw):  # type: ignore[arg-type]
            peaks.append(sum(n for ref, n in alive if ref() is not None))
            alive.append((weakref.ref(t), t.numel() * t.element_size()))
            yield key, t

    monkeypatch.setattr(CheckpointReader, "tensors", watched)
    files = layouts.to_hf(tmp_path / "src" / v.meta_folder, v, None, {}, tmp_path / "out")
    total = sum(n for _, n in alive)
    largest = max(n for _, n in alive)
    assert len([p for p in files if p.endswith(".safetensors")]) > 3
    assert total > 6 * 100_000 and max(peaks) <= 100_000 + largest  # one group, not the model


def test_code_llama_70b_instruct_hf_files_stop_at_step_and_chat_in_its_format(tmp_path: Path) -> None:
    from dataclasses import replace

    from sentencepiece import sentencepiece_model_pb2 as pb

    from llamahub.model.chat import encode_dialog
    from llamahub.model.chat_templates import CHAT_TEMPLATES
    from llamahub.model.tokenizer import load_tokenizer, train_sentencepiece

    transformers = pytest.importorskip("transformers")
    v = replace(variant(CHAT), chat_format="codellama70b")
    folder = generate_checkpoint(v, tmp_path / "src", dtype=torch.float32)
    tokenizer = folder.parent / "tokenizer.model"
    train_sentencepiece(tokenizer, v.arch.vocab_size - 1)  # and <step> last, as Code Llama 70B's
    model = pb.ModelProto()
    model.ParseFromString(tokenizer.read_bytes())
    piece = model.pieces.add()
    piece.piece, piece.type = "<step>", pb.ModelProto.SentencePiece.CONTROL
    tokenizer.write_bytes(model.SerializeToString())
    served = layouts.to_hf(folder, v, tokenizer, {}, tmp_path / "hf")
    out = tmp_path / "repo"
    out.mkdir()
    for path, source in served.items():
        (out / path.removeprefix(f"{CHAT}/")).write_bytes(source if isinstance(source, bytes)
                                                          else source.read_bytes())
    step = v.arch.vocab_size - 1
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, step]
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == \
        CHAT_TEMPLATES["codellama70b"]
    hf = transformers.AutoTokenizer.from_pretrained(out)
    dialog = [{"role": "system", "content": "Use Python."}, {"role": "user", "content": "Sort a list."}]
    ids = hf.apply_chat_template(dialog, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert list(ids) == encode_dialog(load_tokenizer(tokenizer), dialog, "codellama70b")
    assert list(ids).count(step) == 2
