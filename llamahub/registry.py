"""The variant registry: reads ``registry/variants/*.toml``, validates it, resolves names.

Variants are data. Each family file has a ``[family]`` table (defaults shared by its variants,
including ``[family.arch]``) and ``[[variant]]`` entries that may override some of them. Their
schema (pydantic models, one error format naming file, entry and field) is in
``llamahub/registry_schema.py``.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from llamahub import registry_schema
from llamahub.errors import DataFileError, RegistryError, UnknownVariantError
from llamahub.model.args import ModelArgs
from llamahub.registry_schema import parse_variants
from llamahub.schema import read_toml

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2,
               "int8": 1, "int4": 0.5}


@dataclass(frozen=True)
class Variant:
    """One downloadable model: architecture, files, tokenizer, chat format and license."""

    name: str
    family: str
    family_title: str
    size: str
    kind: str
    arch: ModelArgs
    shards: int
    meta_folder: str
    tokenizer: str
    tokenizer_location: str
    license: str
    context_length: int
    release_date: str
    chat_format: str | None = None
    hf_repo: str | None = None
    hf_repo_native: str | None = None
    aliases: tuple[str, ...] = ()
    meta_llama2_vocab: bool = False
    debug: bool = False
    source: str = field(default="", compare=False)

    @property
    def is_chat(self) -> bool:
        return self.kind == "chat"

    def shard_names(self) -> list[str]:
        return [f"consolidated.{i:02d}.pth" for i in range(self.shards)]

    def meta_files(self) -> list[str]:
        """Every file of this variant in Meta's download layout, relative to the download root."""
        top = ["LICENSE", "USE_POLICY.md"]
        folder = [f"{self.meta_folder}/{n}" for n in [*self.shard_names(), "params.json"]]
        if self.tokenizer_location == "top":
            top += ["tokenizer.model", "tokenizer_checklist.chk"]
        else:
            folder.append(f"{self.meta_folder}/tokenizer.model")
        return top + folder + [f"{self.meta_folder}/checklist.chk"]

    def param_count(self) -> int:
        return self.arch.param_count()

    def memory_estimate(self, dtype: str = "bf16", *, context: int | None = None) -> int:
        """Bytes to hold the weights in ``dtype`` plus a KV cache of ``context`` tokens (bf16/fp32)."""
        if dtype not in DTYPE_BYTES:
            raise RegistryError(f"unknown dtype {dtype!r}",
                                hint=f"use one of {', '.join(sorted(DTYPE_BYTES))}")
        weights = int(self.param_count() * DTYPE_BYTES[dtype])
        ctx = self.context_length if context is None else context
        kv_bytes = 4 if dtype in ("fp32", "float32") else 2
        kv = 2 * self.arch.n_layers * self.arch.kv_heads * self.arch.head_dim * ctx * kv_bytes
        return weights + kv

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "family": self.family, "size": self.size, "kind": self.kind,
            "params": self.param_count(), "context_length": self.context_length,
            "shards": self.shards, "license": self.license, "tokenizer": self.tokenizer,
            "chat_format": self.chat_format, "hf_repo": self.hf_repo, "aliases": list(self.aliases),
            "debug": self.debug,
        }


def _registry_root() -> Path:
    return Path(str(resources.files("llamahub_registry")))


# --- reading and validating files (the schema is in registry_schema.py) ----------------------


def load_file(path: Path) -> list[Variant]:
    """The variants of one ``registry/variants/*.toml`` file, validated."""
    data = read_toml(path.read_text(encoding="utf-8"), path.name)
    return [Variant(**fields) for fields in parse_variants(data, path.name)]


class Registry:
    """An index of variants by name and alias (case-insensitive)."""

    def __init__(self, variants: Iterable[Variant]) -> None:
        self._variants: dict[str, Variant] = {}
        self._index: dict[str, str] = {}
        for v in variants:
            self.add(v)

    def add(self, v: Variant) -> None:
        keys = [("name", v.name), *(("aliases", a) for a in v.aliases),
                *((f, r) for f, r in (("hf_repo", v.hf_repo), ("hf_repo_native", v.hf_repo_native)) if r)]
        for field_name, key in keys:
            owner = self._index.get(key.lower())
            if owner is not None and owner != v.name:
                raise DataFileError(v.source or "plugin", f"variant {v.name}",
                                    [(field_name, f"{key!r} is already used by {owner}")],
                                    hint="names, aliases and repo ids must be unique")
            self._index[key.lower()] = v.name
        self._variants[v.name] = v

    def __iter__(self) -> Iterator[Variant]:
        return iter(self._variants.values())

    def __len__(self) -> int:
        return len(self._variants)

    def resolve(self, name: str) -> Variant:
        key = self._index.get(name.strip().lower())
        if key is None:
            close = difflib.get_close_matches(name.lower(), list(self._index), n=3, cutoff=0.6)
            names = list(dict.fromkeys(self._variants[self._index[c]].name for c in close))
            raise UnknownVariantError(name, names)
        return self._variants[key]

    def by_meta_folder(self, folder: str) -> Variant | None:
        return next((v for v in self if v.meta_folder == folder), None)


@functools.cache
def shipped() -> Registry:
    """The variants shipped in ``registry/variants/*.toml`` (read and validated once)."""
    root = _registry_root() / "variants"
    return Registry(v for p in sorted(root.glob("*.toml")) for v in load_file(p))


_builtin = shipped  # the name older tests use


def validate(v: Variant, where: str) -> Variant:
    """Check a variant built elsewhere (a plugin's) by the same rules as the shipped files."""
    if not isinstance(v, Variant):
        raise RegistryError(f"{where}: registered {type(v).__name__}, not a llamahub Variant",
                            hint="build it with llamahub.plugin.Variant(...)")
    registry_schema.check_variant(v, where)
    return v


def default_registry() -> Registry:
    """The shipped variants. Plugins' variants join them in ``llamahub.plugins.catalogue()``."""
    return shipped()


def resolve(name: str) -> Variant:
    return shipped().resolve(name)


def variants() -> list[Variant]:
    return list(shipped())
