"""Read Llama checkpoints: Meta folders (params.json + consolidated.NN.pth) and HF folders
(config.json + safetensors). Tensors are memory-mapped; nothing is copied that need not be.
"""

from __future__ import annotations

import ctypes
import functools
import json
import mmap
import pickle
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from llamahub.model.reader import CheckpointReader

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

    def reader(self) -> CheckpointReader:
        """The tensors: shapes from headers, one tensor-parallel shard, or the merged state dict."""
        from llamahub.model.reader import CheckpointReader

        return CheckpointReader(self)

    def state_dict(self, rope_layout: str = "interleaved") -> dict[str, torch.Tensor]:
        """The full state dict in Meta naming (shards merged), checked; see ``CheckpointReader``."""
        return self.reader().state_dict(rope_layout)

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


def detect_formats(path: Path) -> frozenset[str]:
    """What a folder holds: "meta", "hf", "gguf", "tokenizer" (empty when it is not a folder)."""
    if not path.is_dir():
        return frozenset()
    found = set()
    if (path / "params.json").is_file() and any(path.glob("consolidated.*.pth")):
        found.add("meta")
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        found.add("hf")
    if any(path.glob("*.gguf")):
        found.add("gguf")
    if find_tokenizer(path) is not None:
        found.add("tokenizer")
    return frozenset(found)


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
    marker = read_json(path / MARKER) if (path / MARKER).is_file() else {}
    if args is None:
        if fmt == "meta":
            args = _meta_args(path)
        else:
            args = ModelArgs.from_hf_config(read_json(path / "config.json"))
    return Checkpoint(path=path, format=fmt, args=args, tokenizer_path=find_tokenizer(path),
                      variant_name=marker.get("variant"))


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CorruptCheckpointError(f"cannot read {path}: {e}", hint="re-download the checkpoint") from e
    if not isinstance(data, dict):
        raise CorruptCheckpointError(f"{path} is not a JSON object", hint="re-download the checkpoint")
    return data


def _meta_args(path: Path) -> ModelArgs:
    """params.json, completed from shard 0's headers (memory-mapped, no weights read): the
    vocabulary when Llama 2 writes -1, and tied embeddings when there is no output head
    (Llama 3.2 1B/3B; params.json does not say)."""
    params = read_json(path / "params.json")
    shards = shard_paths(path)
    first = load_pth(shards[0])
    emb = first.get("tok_embeddings.weight")
    if emb is None:
        raise CorruptCheckpointError(f"{shards[0].name} has no tok_embeddings.weight",
                                     hint="re-download the checkpoint")
    vocab = None
    if int(params.get("vocab_size", -1)) <= 0:
        split = convert.embedding_split_dim(emb.shape, int(params["dim"]), len(shards))
        vocab = emb.shape[0] * (len(shards) if split == 0 else 1)
    args = ModelArgs.from_params(params, vocab_size=vocab)
    return replace(args, tie_embeddings=True) if "output.weight" not in first else args


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


def madvise_dontneed(t: torch.Tensor) -> None:
    """Drop the mapped file pages behind ``t`` once it has been copied (re-read from disk if used).

    Only for our own private file mappings (or temporaries no longer needed).
    """
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


def _safetensors_error(path: Path, e: Exception) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"{path.name} is not a readable safetensors file ({e})",
                                  hint="delete it and download the variant again")


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a .safetensors file, from its header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as e:
        raise _safetensors_error(path, e) from e


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file as views of a private memory map (safetensors >= 0.7 maps;
    nothing is read until a tensor is used)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as e:
        raise _safetensors_error(path, e) from e


def describe(ckpt: Checkpoint) -> str:
    a = ckpt.args
    return (f"{ckpt.format} checkpoint at {ckpt.path}: dim {a.dim}, {a.n_layers} layers, "
            f"{a.n_heads} heads ({a.kv_heads} kv), vocab {a.vocab_size}")


__all__ = ["MARKER", "Checkpoint", "CheckpointError", "detect_format", "open_checkpoint"]
