"""CheckpointReader: shapes from headers, per-rank shards by Meta's split rules, merged state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llamahub.errors import CheckpointError, CorruptCheckpointError
from llamahub.model import convert
from llamahub.model.args import ModelArgs
from llamahub.model.checkpoint import open_checkpoint
from llamahub.model.writer import random_state_dict, write_hf, write_meta

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=96, multiple_of=32)


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_state_dict(ARGS, seed=5)


@pytest.mark.parametrize("llama2", [True, False])
@pytest.mark.parametrize("files", [1, 2, 4])
def test_every_world_size_gives_metas_split_of_the_full_state(tmp_path: Path, state, files: int,
                                                              llama2: bool) -> None:
    reader = open_checkpoint(write_meta(tmp_path / "m", ARGS, state, shards=files,
                                        llama2_style=llama2)).reader()
    emb = reader.embedding_split_dim()
    assert emb == (1 if llama2 and files > 1 else 0)
    for world in (1, 2, 4):
        expected = convert.split_shards(state, world, embedding_dim=emb)
        for rank in range(world):
            got = reader.shard(rank, world)
            assert got.keys() == expected[rank].keys()
            for k, t in got.items():
                assert torch.equal(t, expected[rank][k]), (files, world, rank, k)


def test_a_shard_file_is_used_in_place_when_world_equals_files(tmp_path: Path, state) -> None:
    folder = write_meta(tmp_path / "m", ARGS, state, shards=2)
    reader = open_checkpoint(folder).reader()
    file1 = torch.load(folder / "consolidated.01.pth", mmap=True, weights_only=True)
    got = reader.shard(1, 2)
    # the very tensor of the file (a view of its memory map): no copy
    assert got["layers.0.attention.wq.weight"].shape == file1["layers.0.attention.wq.weight"].shape
    assert torch.equal(got["layers.1.feed_forward.w2.weight"], file1["layers.1.feed_forward.w2.weight"])


def test_shapes_come_from_headers_and_match_the_merged_state(tmp_path: Path, state) -> None:
    for folder in (write_meta(tmp_path / "m", ARGS, state, shards=4, llama2_style=True),
                   write_hf(tmp_path / "h", ARGS, state)):
        reader = open_checkpoint(folder).reader()
        assert reader.shapes() == convert.expected_shapes(ARGS)


def test_hf_shards_match_meta_shards(tmp_path: Path, state) -> None:
    meta = open_checkpoint(write_meta(tmp_path / "m", ARGS, state, shards=1)).reader()
    hf = open_checkpoint(write_hf(tmp_path / "h", ARGS, state)).reader()
    for rank in range(2):
        a, b = meta.shard(rank, 2), hf.shard(rank, 2)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_dtype_is_converted_while_reading(tmp_path: Path, state) -> None:
    reader = open_checkpoint(write_meta(tmp_path / "m", ARGS, state, shards=2)).reader()
    got = reader.state_dict(dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in got.values())
    assert torch.equal(got["norm.weight"], state["norm.weight"].to(torch.bfloat16))


def test_a_world_that_splits_heads_is_refused(tmp_path: Path, state) -> None:
    reader = open_checkpoint(write_meta(tmp_path / "m", ARGS, state)).reader()
    with pytest.raises(CheckpointError, match="cannot be split between 3 ranks") as e:
        reader.shard(0, 3)
    assert "heads" in (e.value.hint or "")
    with pytest.raises(CheckpointError, match="rank 2"):
        reader.shard(2, 2)


def test_shapes_disagreeing_with_args_are_refused_from_headers(tmp_path: Path, state) -> None:
    other = ModelArgs(dim=64, n_layers=3, n_heads=8, n_kv_heads=4, vocab_size=96, multiple_of=32)
    reader = open_checkpoint(write_meta(tmp_path / "m", ARGS, state), args=other).reader()
    with pytest.raises(CorruptCheckpointError, match="does not match"):
        reader.check()
