"""The variant registry: reads ``registry/variants/*.toml``, validates it, resolves names.

Variants are data. Each family file has a ``[family]`` table (defaults shared by its variants,
including ``[family.arch]``) and ``[[variant]]`` entries that may override any family key.
"""

from __future__ import annotations

import difflib
import functools
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from llamahub.errors import CheckpointError, RegistryError, UnknownVariantError
from llamahub.model.args import ModelArgs, RopeScaling

KINDS = ("base", "chat")
TOKENIZERS = ("sentencepiece", "tiktoken")
CHAT_FORMATS = ("llama2", "llama3")
DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2,
               "int8": 1, "int4": 0.5}
_VARIANT_KEYS = {"name", "size", "kind", "shards", "meta_folder", "hf_repo", "hf_repo_native",
                 "aliases", "arch", "chat_format", "tokenizer", "tokenizer_location",
                 "meta_llama2_vocab", "description"}
_FAMILY_KEYS = {"name", "title", "license", "tokenizer", "tokenizer_location", "context_length",
                "release_date", "meta_llama2_vocab", "arch", "debug"}


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


def _arch(table: dict[str, Any], where: str) -> ModelArgs:
    table = dict(table)
    rs = table.pop("rope_scaling", None)
    try:
        args = ModelArgs(**table, rope_scaling=RopeScaling(**rs) if rs else None)
        args.validate()
    except TypeError as e:
        raise RegistryError(f"{where}: bad arch table: {e}",
                            hint="arch keys are the fields of llamahub.model.args.ModelArgs") from e
    except CheckpointError as e:
        raise RegistryError(f"{where}: {e.message}", hint="fix the arch table") from e
    return args


def _variant(family: dict[str, Any], entry: dict[str, Any], where: str) -> Variant:
    unknown = set(entry) - _VARIANT_KEYS
    if unknown:
        raise RegistryError(f"{where}: unknown keys {sorted(unknown)}",
                            hint=f"allowed keys: {', '.join(sorted(_VARIANT_KEYS))}")
    merged = {k: v for k, v in family.items() if k not in ("arch", "name", "title")}
    merged.update({k: v for k, v in entry.items() if k != "arch"})
    arch_table = {**family.get("arch", {}), **entry.get("arch", {})}
    try:
        v = Variant(
            name=entry["name"], family=family["name"], family_title=family.get("title", family["name"]),
            size=entry["size"], kind=entry["kind"], shards=int(entry["shards"]),
            arch=replace(_arch(arch_table, where), max_seq_len=int(merged["context_length"])),
            meta_folder=entry["meta_folder"], tokenizer=merged["tokenizer"],
            tokenizer_location=merged["tokenizer_location"], license=merged["license"],
            context_length=int(merged["context_length"]), release_date=str(merged["release_date"]),
            chat_format=entry.get("chat_format"), hf_repo=entry.get("hf_repo"),
            hf_repo_native=entry.get("hf_repo_native"), aliases=tuple(entry.get("aliases", ())),
            meta_llama2_vocab=bool(merged.get("meta_llama2_vocab", False)),
            debug=bool(merged.get("debug", False)), source=where,
        )
    except KeyError as e:
        raise RegistryError(f"{where}: missing key {e}", hint="see registry/variants/llama-2.toml") from e
    _check_variant(v, where)
    return v


def _check_variant(v: Variant, where: str) -> None:
    problems = []
    if v.kind not in KINDS:
        problems.append(f"kind {v.kind!r} not in {KINDS}")
    if v.tokenizer not in TOKENIZERS:
        problems.append(f"tokenizer {v.tokenizer!r} not in {TOKENIZERS}")
    if v.tokenizer_location not in ("top", "model"):
        problems.append("tokenizer_location must be 'top' or 'model'")
    if v.kind == "chat" and v.chat_format not in CHAT_FORMATS:
        problems.append(f"chat variant needs chat_format in {CHAT_FORMATS}")
    if v.kind == "base" and v.chat_format is not None:
        problems.append("base variant must not have a chat_format")
    if v.shards < 1 or (v.arch.kv_heads % v.shards and v.shards % v.arch.kv_heads):
        problems.append(f"shards {v.shards} cannot split {v.arch.kv_heads} kv heads")
    if problems:
        raise RegistryError(f"{where}: variant {v.name}: " + "; ".join(problems),
                            hint="fix the registry file")


def load_file(path: Path) -> list[Variant]:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(f"{path.name}: not valid TOML: {e}", hint="fix the file's syntax") from e
    family = data.get("family")
    if not isinstance(family, dict) or "name" not in family:
        raise RegistryError(f"{path.name}: missing [family] table with a name",
                            hint="every variants file starts with a [family] table")
    unknown = set(family) - _FAMILY_KEYS
    if unknown:
        raise RegistryError(f"{path.name}: unknown [family] keys {sorted(unknown)}",
                            hint=f"allowed keys: {', '.join(sorted(_FAMILY_KEYS))}")
    entries = data.get("variant", [])
    return [_variant(family, e, f"{path.name}[{i}]") for i, e in enumerate(entries)]


class Registry:
    """An index of variants by name and alias (case-insensitive)."""

    def __init__(self, variants: Iterable[Variant]) -> None:
        self._variants: dict[str, Variant] = {}
        self._index: dict[str, str] = {}
        for v in variants:
            self.add(v)

    def add(self, v: Variant) -> None:
        for key in (v.name, *v.aliases, *(r for r in (v.hf_repo, v.hf_repo_native) if r)):
            owner = self._index.get(key.lower())
            if owner is not None and owner != v.name:
                raise RegistryError(f"name {key!r} of {v.name} is already used by {owner}",
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
    try:
        v.arch.validate()
    except CheckpointError as e:
        raise RegistryError(f"{where}: variant {v.name}: {e.message}", hint="fix its arch") from e
    _check_variant(v, where)
    return v


def default_registry() -> Registry:
    """The shipped variants. Plugins' variants join them in ``llamahub.plugins.catalogue()``."""
    return shipped()


def resolve(name: str) -> Variant:
    return shipped().resolve(name)


def variants() -> list[Variant]:
    return list(shipped())
