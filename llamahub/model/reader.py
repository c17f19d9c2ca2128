"""Reading a checkpoint's tensors: shapes from headers, one tensor-parallel shard, or all of it.

``CheckpointReader`` is what backends open. ``shapes()`` reads only headers (the hub importer
checks a 70B this way without touching its weights). ``shard(rank, world)`` returns the
tensors one tensor-parallel rank holds, in Meta's naming and split rules: a Meta shard file is
used as it is when ``world`` equals the number of files, and is resharded otherwise. Merging
copies each tensor once and drops the mapped pages of its sources right after, so loading N
Meta shards peaks near the size of the weights, not twice that. ``state_dict()`` is
``shard(0, 1)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from llamahub.errors import CheckpointError, CorruptCheckpointError, MissingShardError
from llamahub.model import convert
from llamahub.model.args import ModelArgs
from llamahub.model.checkpoint import (
    Checkpoint,
    load_pth,
    load_safetensors,
    madvise_dontneed,
    read_json,
    safetensors_shapes,
    shard_paths,
)

_HEAD_SPLIT = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "attention.wo.weight")


class CheckpointReader:
    """Tensors of one checkpoint folder (Meta or Hugging Face), memory-mapped."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.args: ModelArgs = checkpoint.args
        self._files: list[dict[str, torch.Tensor]] | None = None

    @property
    def format(self) -> str:
        return self.checkpoint.format

    @property
    def n_files(self) -> int:
        """Meta's model-parallel shard count (1 for a Hugging Face folder)."""
        return len(shard_paths(self.checkpoint.path)) if self.format == "meta" else 1

    def embedding_split_dim(self) -> int:
        """The dimension along which ranks split the embedding (Meta: 1 for Llama 2, 0 for 3)."""
        if self.format != "meta":
            return 0
        files = self._meta_files()
        return convert.embedding_split_dim(files[0]["tok_embeddings.weight"].shape, self.args.dim,
                                           len(files))

    # --- headers ---------------------------------------------------------------------------

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every tensor of the merged state dict (Meta naming), from headers only."""
        if self.format == "hf":
            raw = {}
            for path in self._hf_paths():
                raw.update(safetensors_shapes(path))
            return {convert.hf_key_to_meta(k): s for k, s in raw.items()
                    if not k.endswith("rotary_emb.inv_freq")}
        files = self._meta_files()
        emb = self.embedding_split_dim()
        out: dict[str, tuple[int, ...]] = {}
        for key, t in files[0].items():
            if key in convert.IGNORED_META_KEYS:
                continue
            along = convert.shard_dim(key, emb)
            shape = list(t.shape)
            if along is not None:
                shape[along] = sum(f[key].shape[along] if key in f else 0 for f in files)
            out[key] = tuple(shape)
        return out

    def check(self) -> None:
        """Refuse a checkpoint whose tensor names or shapes disagree with its architecture."""
        convert.check_shape_map(self.shapes(), self.args, f"checkpoint {self.checkpoint.path}")

    # --- tensors ---------------------------------------------------------------------------

    def state_dict(self, rope_layout: str = "interleaved", *,
                   dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The whole model (shards merged) in Meta naming; q/k rows in ``rope_layout``."""
        return self.shard(0, 1, rope_layout=rope_layout, dtype=dtype)

    def shard(self, rank: int, world: int, *, rope_layout: str = "interleaved",
              dtype: torch.dtype | None = None, embedding_dim: int = 0) -> dict[str, torch.Tensor]:
        """The tensors tensor-parallel rank ``rank`` of ``world`` holds, checked.

        Column-parallel weights (wq, wk, wv, w1, w3, output) are split on dim 0, row-parallel
        ones (wo, w2) on dim 1, the embedding as ``embedding_split_dim()`` says, norms are
        whole. ``dtype`` converts while copying (no second copy). ``embedding_dim`` is the
        embedding's split of an HF folder (1 cuts it as Llama 2's Meta shards do); a Meta folder's
        own split is kept.
        """
        if not 0 <= rank < world:
            raise CheckpointError(f"rank {rank} is not in a world of {world}",
                                  hint="ranks run from 0 to world - 1")
        self.check()
        if self.format == "meta":
            if rope_layout != "interleaved":
                raise CheckpointError("Meta checkpoints are read in the interleaved RoPE layout",
                                      hint="ask for rope_layout='interleaved'")
            return self._meta_shard(rank, world, dtype)
        return dict(self._hf_items(rank, world, rope_layout, dtype, embedding_dim))

    def tensors(self, *, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """The whole model (shards merged), one tensor at a time in Meta naming and the
        interleaved RoPE layout: at most one merged tensor is held at once, for converters."""
        self.check()
        if self.format == "meta":
            yield from self._meta_items(0, 1, dtype)
        else:
            yield from self._hf_items(0, 1, "interleaved", dtype)

    def _meta_shard(self, rank: int, world: int, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
        return dict(self._meta_items(rank, world, dtype))

    def _meta_items(self, rank: int, world: int,
                    dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
        files = self._meta_files()
        emb = self.embedding_split_dim()
        for key in files[0]:
            if key in convert.IGNORED_META_KEYS:
                continue
            parts = [f.get(key) for f in files]
            if any(p is None for p in parts):
                raise CorruptCheckpointError(f"tensor {key!r} is missing from some shards",
                                             hint="re-download the checkpoint")
            along = convert.shard_dim(key, emb)
            if along is None:
                yield key, _convert(parts[0], dtype)  # type: ignore[arg-type]
            elif world == len(files):
                yield key, _convert(parts[rank], dtype)  # type: ignore[arg-type]
            else:
                yield key, self._slice(key, parts, along, rank, world, dtype)  # type: ignore[arg-type]

    def _hf_items(self, rank: int, world: int, rope_layout: str, dtype: torch.dtype | None,
                  embedding_dim: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
        for path in self._hf_paths():
            raw = load_safetensors(path)
            meta = convert.hf_to_meta(raw, self.args, permute=rope_layout == "interleaved")
            for key, t in meta.items():
                along = convert.shard_dim(key, embedding_dim)
                if along is None or world == 1:
                    piece = _convert(t, dtype)
                else:
                    piece = self._slice(key, [t], along, rank, world, dtype)
                if piece.untyped_storage().data_ptr() != t.untyped_storage().data_ptr():
                    madvise_dontneed(t)  # a permuted or converted copy: drop the source's pages
                yield key, piece
            for key, t in raw.items():
                if key.endswith(("q_proj.weight", "k_proj.weight")) and rope_layout == "interleaved":
                    madvise_dontneed(t)

    def _slice(self, key: str, parts: list[torch.Tensor], along: int, rank: int, world: int,
               dtype: torch.dtype | None) -> torch.Tensor:
        """Rank ``rank``'s slice of the tensor that ``parts`` form when joined along ``along``."""
        total = sum(p.shape[along] for p in parts)
        size = total // world
        if total % world or (key.endswith(_HEAD_SPLIT) and size % self.args.head_dim):
            raise CheckpointError(
                f"{key} ({total} along dim {along}) cannot be split between {world} ranks",
                hint="use a number of ranks that divides the model's (kv) heads")
        lo, hi = rank * size, (rank + 1) * size
        pieces, offset = [], 0
        for p in parts:
            n = p.shape[along]
            a, b = max(lo, offset), min(hi, offset + n)
            if a < b:
                pieces.append(p.narrow(along, a - offset, b - a))
            offset += n
        if len(pieces) == 1 and along == 0:
            result = _convert(pieces[0], dtype)
        else:
            shape = list(parts[0].shape)
            shape[along] = size
            result = torch.empty(shape, dtype=dtype or parts[0].dtype)
            torch.cat(pieces, dim=along, out=result) if len(pieces) > 1 else result.copy_(pieces[0])
        if result.untyped_storage().data_ptr() != parts[0].untyped_storage().data_ptr():
            for p in parts:
                madvise_dontneed(p)
        return result

    # --- files -----------------------------------------------------------------------------

    def _meta_files(self) -> list[dict[str, torch.Tensor]]:
        if self._files is None:
            self._files = [load_pth(p) for p in shard_paths(self.checkpoint.path)]
        return self._files

    def _hf_paths(self) -> list[Path]:
        path = self.checkpoint.path
        index = path / "model.safetensors.index.json"
        if not index.is_file():
            return sorted(path.glob("*.safetensors"))
        files = sorted(set(read_json(index).get("weight_map", {}).values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise MissingShardError(f"{path}: {', '.join(missing)} listed in the index but absent",
                                    hint="the download is incomplete: download the variant again")
        return [path / f for f in files]


def _convert(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is None or t.dtype == dtype:
        return t
    out = t.to(dtype)
    madvise_dontneed(t)
    return out
