"""What a GGUF file says about itself: its ``general.*``/``llamahub.*`` names and its shapes.

Read with the ``gguf`` package's memory-mapped reader: no tensor data is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamahub.errors import CorruptCheckpointError

# the metadata keys that may name a registry variant, most specific first
NAME_KEYS = ("llamahub.variant", "general.base_model.0.repo_url", "general.source.repo_url",
             "general.name", "general.basename")
_SHAPE_KEYS = ("embedding_length", "block_count", "attention.head_count", "attention.head_count_kv",
               "feed_forward_length")


def is_gguf(path: Path) -> bool:
    """A file whose first four bytes are GGUF's magic."""
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def read_metadata(path: Path) -> dict[str, Any]:
    """Every scalar and string key of the file, plus ``n_tokens`` (the vocabulary's size)."""
    from gguf import GGUFReader, GGUFValueType

    try:
        reader = GGUFReader(path)
    except (OSError, ValueError, KeyError) as e:
        raise CorruptCheckpointError(f"{path.name} is not a readable GGUF file ({e})",
                                     hint="make or download the file again") from e
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if field.types and field.types[0] == GGUFValueType.ARRAY:
            if key == "tokenizer.ggml.tokens":
                meta["n_tokens"] = len(field.data)
            continue
        try:
            meta[key] = field.contents()
        except (ValueError, UnicodeDecodeError):
            continue
    return meta


def names(meta: dict[str, Any]) -> list[str]:
    """Candidate registry names in the metadata (a Hugging Face URL becomes its repo id)."""
    found = []
    for key in NAME_KEYS:
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            found.append(value.strip().removeprefix("https://huggingface.co/").strip("/"))
    return found


def shapes(meta: dict[str, Any]) -> dict[str, int]:
    """The architecture numbers of a llama-architecture file (only those present)."""
    arch = meta.get("general.architecture", "llama")
    out = {k: int(meta[f"{arch}.{k}"]) for k in _SHAPE_KEYS if f"{arch}.{k}" in meta}
    if "n_tokens" in meta:
        out["vocab_size"] = int(meta["n_tokens"])
    return out
