"""Reading and writing checkpoints, and refusing bad ones with typed, actionable errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from llamahub.errors import (
    CorruptCheckpointError,
    MissingShardError,
    NotACheckpointError,
    UnsafeCheckpointError,
)
from llamahub.model import convert
from llamahub.model.args import ModelArgs
from llamahub.model.checkpoint import detect_format, load_safetensors, open_checkpoint
from llamahub.model.writer import md5sum, random_state_dict, write_hf, write_meta

ARGS = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16)


@pytest.fixture
def meta_folder(tmp_path: Path) -> Path:
    return write_meta(tmp_path / "m", ARGS, random_state_dict(ARGS), shards=2)


def test_meta_round_trip_is_exact(meta_folder: Path) -> None:
    state = random_state_dict(ARGS)
    ckpt = open_checkpoint(meta_folder)
    assert ckpt.format == "meta" and ckpt.args == ARGS
    loaded = ckpt.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_hf_round_trip_is_exact_and_memory_mapped(tmp_path: Path) -> None:
    state = random_state_dict(ARGS)
    write_hf(tmp_path / "h", ARGS, state)
    ckpt = open_checkpoint(tmp_path / "h")
    assert ckpt.format == "hf" and ckpt.args.kv_heads == 2 and ckpt.args.hidden_dim == ARGS.hidden_dim
    loaded = ckpt.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # tensors are views of one file mapping: their addresses differ exactly as their file offsets
    path = tmp_path / "h" / "model.safetensors"
    raw = load_safetensors(path)
    header = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])
    a, b = "model.layers.0.mlp.up_proj.weight", "model.norm.weight"
    offset = header[b]["data_offsets"][0] - header[a]["data_offsets"][0]
    assert raw[b].data_ptr() - raw[a].data_ptr() == offset


def test_llama2_meta_layout_splits_embedding_on_dim1(tmp_path: Path) -> None:
    args = ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=64, multiple_of=16)
    folder = write_meta(tmp_path / "l2", args, random_state_dict(args), shards=2, llama2_style=True)
    shard = torch.load(folder / "consolidated.00.pth", weights_only=True)
    assert tuple(shard["tok_embeddings.weight"].shape) == (64, 16)
    assert tuple(shard["layers.0.attention.wo.weight"].shape) == (32, 16)
    assert tuple(shard["layers.0.attention.wq.weight"].shape) == (16, 32)
    assert json.loads((folder / "params.json").read_text())["vocab_size"] == -1
    assert open_checkpoint(folder).args.vocab_size == 64  # recovered from the embedding


def test_checklist_matches_files(meta_folder: Path) -> None:
    lines = (meta_folder / "checklist.chk").read_text().splitlines()
    assert len(lines) == 3
    for line in lines:
        digest, name = line.split("  ")
        assert md5sum(meta_folder / name) == digest


def test_shard_rules_cover_every_tensor() -> None:
    keys = convert.expected_shapes(ARGS)
    dims = {k: convert.shard_dim(k, 0) for k in keys}
    assert dims["layers.1.attention.wo.weight"] == 1 and dims["layers.1.feed_forward.w2.weight"] == 1
    assert dims["layers.0.feed_forward.w3.weight"] == 0 and dims["output.weight"] == 0
    assert dims["norm.weight"] is None and dims["layers.0.ffn_norm.weight"] is None


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(NotACheckpointError) as e:
        open_checkpoint(tmp_path)
    assert "params.json" in str(e.value) and e.value.hint
    with pytest.raises(NotACheckpointError):
        detect_format(tmp_path / "readme.txt")


def test_missing_shard(meta_folder: Path) -> None:
    (meta_folder / "consolidated.00.pth").unlink()
    with pytest.raises(MissingShardError, match=r"consolidated\.00\.pth"):
        open_checkpoint(meta_folder, args=ARGS).state_dict()


def test_truncated_shard(meta_folder: Path) -> None:
    shard = meta_folder / "consolidated.01.pth"
    os.truncate(shard, shard.stat().st_size // 2)
    with pytest.raises(CorruptCheckpointError, match="truncated") as e:
        open_checkpoint(meta_folder, args=ARGS).state_dict()
    assert "download" in (e.value.hint or "")


def test_truncated_safetensors(tmp_path: Path) -> None:
    write_hf(tmp_path / "h", ARGS, random_state_dict(ARGS))
    f = tmp_path / "h" / "model.safetensors"
    os.truncate(f, f.stat().st_size - 100)
    with pytest.raises(CorruptCheckpointError):
        open_checkpoint(tmp_path / "h").state_dict()


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_code_is_refused(meta_folder: Path, tmp_path: Path) -> None:
    evil = random_state_dict(ARGS)
    torch.save({**convert.split_shards(evil, 2, embedding_dim=0)[0], "x": _Payload()},
               meta_folder / "consolidated.00.pth")
    with pytest.raises(UnsafeCheckpointError) as e:
        open_checkpoint(meta_folder, args=ARGS).state_dict()
    assert "could run code" in str(e.value)
    # a plain pickle that is not a torch zip is refused too
    with (meta_folder / "consolidated.00.pth").open("wb") as f:
        pickle.dump({"a": 1}, f)
    with pytest.raises((UnsafeCheckpointError, CorruptCheckpointError)):
        open_checkpoint(meta_folder, args=ARGS).state_dict()


def test_shapes_disagreeing_with_architecture(meta_folder: Path) -> None:
    other = ModelArgs(dim=32, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16)
    with pytest.raises(CorruptCheckpointError, match="does not match"):
        open_checkpoint(meta_folder, args=other).state_dict()


def test_hf_index_missing_file(tmp_path: Path) -> None:
    folder = write_hf(tmp_path / "h", ARGS, random_state_dict(ARGS))
    shutil.copy(folder / "model.safetensors", folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors").unlink()
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(MissingShardError, match="00002"):
        open_checkpoint(folder).state_dict()


def test_released_source_pages_still_read_back_from_disk(tmp_path: Path) -> None:
    """Copied sources (q/k permutation, shard merges) have their pages dropped; data stays intact."""
    from llamahub.model.checkpoint import load_pth, madvise_dontneed

    def drop_pages(tensors: dict[str, torch.Tensor]) -> None:
        for t in tensors.values():
            madvise_dontneed(t)

    big = ModelArgs(dim=256, n_layers=1, n_heads=4, vocab_size=64, multiple_of=64)
    state = random_state_dict(big)
    write_hf(tmp_path / "h", big, state)
    loaded = open_checkpoint(tmp_path / "h").state_dict()  # releases the permuted q/k sources
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    raw = load_safetensors(tmp_path / "h" / "model.safetensors")
    expected_q = convert.meta_to_hf(state, big)["model.layers.0.self_attn.q_proj.weight"]
    drop_pages(raw)  # drop every page, then read again: the file is the truth
    assert torch.equal(raw["model.layers.0.self_attn.q_proj.weight"], expected_q)
    folder = write_meta(tmp_path / "m", big, state, shards=2)
    merged = open_checkpoint(folder).state_dict()
    assert all(torch.equal(merged[k], state[k]) for k in state)
    shard = load_pth(folder / "consolidated.01.pth")
    before = {k: v.clone() for k, v in shard.items()}
    drop_pages(shard)
    assert all(torch.equal(shard[k], before[k]) for k in before)
