"""Read Llama checkpoints: Meta folders (params.json + consolidated.NN.pth) and HF folders
(config.json + safetensors). Tensors are memory-mapped; nothing is copied that need not be.
"""

from __future__ import annotations

import ctypes
import functools
import json
import mmap
import pickle
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from llamahub.errors import (
    CheckpointError,
    CorruptCheckpointError,
    MissingShardError,
    NotACheckpointError,
    UnsafeCheckpointError,
)
from llamahub.model import convert
from llamahub.model.args import ModelArgs

MARKER = "llamahub.json"  # written beside checkpoints we generate or cache: names the variant


@dataclass
class Checkpoint:
    """A checkpoint on disk: its format, architecture, tokenizer and (lazily) its tensors."""

    path: Path
    format: str  # "meta" or "hf"
    args: ModelArgs
    tokenizer_path: Path | None
    variant_name: str | None = None

    @property
    def rope_layout(self) -> str:
        """The q/k row order of the files: Meta's "interleaved" or Hugging Face's "half"."""
        return "interleaved" if self.format == "meta" else "half"

    def state_dict(self, rope_layout: str = "interleaved") -> dict[str, torch.Tensor]:
        """The full state dict in Meta naming (shards merged), checked.

        q/k rows come in ``rope_layout``; asking for the files' own layout (``self.rope_layout``)
        avoids copying (and reading at load) the q/k weights of an HF checkpoint.
        """
        if self.format == "meta":
            if rope_layout != "interleaved":
                raise CheckpointError("Meta checkpoints are read in the interleaved RoPE layout",
                                      hint="call state_dict() without rope_layout")
            state = read_meta_state(self.path)
        else:
            state = read_hf_state(self.path, self.args, permute=rope_layout == "interleaved")
        convert.check_shapes(state, self.args, f"checkpoint {self.path}")
        return state

    def weight_bytes(self) -> int:
        pattern = "consolidated.*.pth" if self.format == "meta" else "*.safetensors"
        return sum(p.stat().st_size for p in self.path.glob(pattern))


def detect_format(path: Path) -> str:
    if not path.is_dir():
        raise NotACheckpointError(f"{path} is not a folder",
                                  hint="pass a folder with params.json + consolidated.*.pth "
                                       "(Meta) or config.json + *.safetensors (Hugging Face)")
    if (path / "params.json").is_file():
        return "meta"
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return "hf"
    raise NotACheckpointError(
        f"{path} is not a Llama checkpoint: no params.json (Meta format) and no "
        "config.json with *.safetensors (Hugging Face format)",
        hint="point at the model folder itself, e.g. .../llama-2-7b, or load by name: "
             "llamahub.load('llama-2-7b')",
    )


def find_tokenizer(path: Path) -> Path | None:
    """Meta puts tokenizer.model in the model folder (Llama 3) or one level up (Llama 2)."""
    for candidate in (path / "tokenizer.model", path.parent / "tokenizer.model",
                      path / "original" / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    return None


def open_checkpoint(path: str | Path, *, args: ModelArgs | None = None) -> Checkpoint:
    """Inspect a folder. ``args`` (from the registry) wins over the folder's own config."""
    path = Path(path).expanduser().resolve()
    fmt = detect_format(path)
    marker = _read_json(path / MARKER) if (path / MARKER).is_file() else {}
    if args is None:
        if fmt == "meta":
            args = _meta_args(path)
        else:
            args = ModelArgs.from_hf_config(_read_json(path / "config.json"))
    return Checkpoint(path=path, format=fmt, args=args, tokenizer_path=find_tokenizer(path),
                      variant_name=marker.get("variant"))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CorruptCheckpointError(f"cannot read {path}: {e}", hint="re-download the checkpoint") from e
    if not isinstance(data, dict):
        raise CorruptCheckpointError(f"{path} is not a JSON object", hint="re-download the checkpoint")
    return data


def _meta_args(path: Path) -> ModelArgs:
    params = _read_json(path / "params.json")
    vocab = None
    if int(params.get("vocab_size", -1)) <= 0:
        # Llama 2 writes -1: the vocabulary size is the embedding's row count.
        shards = shard_paths(path)
        first = load_pth(shards[0])
        emb = first.get("tok_embeddings.weight")
        if emb is None:
            raise CorruptCheckpointError(f"{shards[0].name} has no tok_embeddings.weight",
                                         hint="re-download the checkpoint")
        split = convert.embedding_split_dim(emb.shape, int(params["dim"]), len(shards))
        vocab = emb.shape[0] * (len(shards) if split == 0 else 1)
    return ModelArgs.from_params(params, vocab_size=vocab)


def shard_paths(path: Path) -> list[Path]:
    shards = sorted(path.glob("consolidated.*.pth"))
    if not shards:
        raise MissingShardError(f"{path} has params.json but no consolidated.*.pth shard",
                                hint="the download is incomplete: download the variant again")
    expected = [f"consolidated.{i:02d}.pth" for i in range(len(shards))]
    names = [p.name for p in shards]
    if names != expected:
        missing = sorted(set(expected) - set(names)) or [f"a shard before {names[-1]}"]
        raise MissingShardError(f"{path}: shard(s) {', '.join(missing)} missing (found {', '.join(names)})",
                                hint="the download is incomplete: download the variant again")
    return shards


def load_pth(path: Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only and mmap: plain tensors only, nothing executed."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path.name} holds more than plain tensors and was not loaded (it could run code)",
            hint="only load checkpoints from a source you trust; get the file from the hub again",
        ) from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CorruptCheckpointError(f"{path.name} is truncated or unreadable ({e})",
                                     hint="delete it and download the variant again") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsafeCheckpointError(f"{path.name} is not a mapping of names to tensors",
                                    hint="this is not a Meta checkpoint shard")
    return state


def read_meta_state(path: Path) -> dict[str, torch.Tensor]:
    params = _read_json(path / "params.json")
    shards = [load_pth(p) for p in shard_paths(path)]
    merged = convert.merge_shards(shards, int(params["dim"]))
    if len(shards) > 1:
        for shard in shards:
            _release_copied(shard, merged)
    return merged


def _release_copied(sources: dict[str, torch.Tensor], result: dict[str, torch.Tensor]) -> None:
    """Drop from memory the mapped file pages of source tensors that ``result`` holds a copy of.

    Merging shards or permuting q/k copies those tensors; without this, the pages read for the
    copy would stay resident next to it (twice the memory) until the whole file is unmapped.
    Only for our own read-only private file mappings: the pages are re-read from disk if used.
    """
    kept = {t.untyped_storage().data_ptr() for t in result.values()}
    for t in sources.values():
        if t.untyped_storage().data_ptr() not in kept:
            _madvise_dontneed(t)


def _madvise_dontneed(t: torch.Tensor) -> None:
    if sys.platform != "linux" or t.numel() == 0:
        return
    page = mmap.PAGESIZE
    start, length = t.data_ptr(), t.numel() * t.element_size()
    first, last = -(-start // page) * page, (start + length) // page * page
    if last > first:
        _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), 4)  # MADV_DONTNEED


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


# --- safetensors, memory-mapped without a copy ----------------------------------------------

_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "I8": torch.int8,
              "U8": torch.uint8, "BOOL": torch.bool}


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file as views of a read-only memory map."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError, struct.error) as e:
        raise CorruptCheckpointError(f"{path.name} is not a readable safetensors file ({e})",
                                     hint="delete it and download the variant again") from e
    out: dict[str, torch.Tensor] = {}
    base = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if base + end > len(buf) or info["dtype"] not in _ST_DTYPES:
            raise CorruptCheckpointError(f"{path.name}: tensor {name} is truncated or of unknown dtype",
                                         hint="delete it and download the variant again")
        dtype = _ST_DTYPES[info["dtype"]]
        count = (end - start) // dtype.itemsize
        t = torch.frombuffer(buf, dtype=dtype, count=count, offset=base + start) if count else \
            torch.empty(0, dtype=dtype)
        out[name] = t.view(info["shape"])
    return out


def read_hf_state(path: Path, args: ModelArgs, *, permute: bool = True) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(_read_json(index).get("weight_map", {}).values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise MissingShardError(f"{path}: {', '.join(missing)} listed in the index but absent",
                                    hint="the download is incomplete: download the variant again")
        paths = [path / f for f in files]
    else:
        paths = sorted(path.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for p in paths:
        state.update(load_safetensors(p))
    meta = convert.hf_to_meta(state, args, permute=permute)
    _release_copied(state, meta)
    return meta


def describe(ckpt: Checkpoint) -> str:
    a = ckpt.args
    return (f"{ckpt.format} checkpoint at {ckpt.path}: dim {a.dim}, {a.n_layers} layers, "
            f"{a.n_heads} heads ({a.kv_heads} kv), vocab {a.vocab_size}")


__all__ = ["MARKER", "Checkpoint", "CheckpointError", "detect_format", "open_checkpoint"]
