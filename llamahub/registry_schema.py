"""The schema of ``registry/variants/*.toml`` (pydantic models) and its cross-field checks.

A family file has one ``[family]`` table (defaults shared by its variants, including
``[family.arch]``) and ``[[variant]]`` entries that may override some of them.
:func:`parse_variants` validates a parsed file and returns, per entry, the fields of a
``llamahub.registry.Variant``; :func:`variant_problems` holds the checks that span fields, so
variants registered by plugins can be checked alike. Every problem is a
:class:`~llamahub.errors.DataFileError` naming the file, the entry and the field.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PositiveFloat, PositiveInt

from llamahub.errors import CheckpointError
from llamahub.model.args import ModelArgs, RopeScaling
from llamahub.schema import DataModel, Line, Lines, Problem, check, validate

KINDS = ("base", "chat")
TOKENIZERS = ("sentencepiece", "tiktoken")
CHAT_FORMATS = ("llama2", "llama3", "codellama70b")
HINT = "fix the entry; registry/variants/llama-2.toml shows every key"

Kind = Literal["base", "chat"]
Tokenizer = Literal["sentencepiece", "tiktoken"]
ChatFormat = Literal["llama2", "llama3", "codellama70b"]
TokenizerLocation = Literal["top", "model"]


def _iso_date(value: Any) -> Any:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("must be a date such as 2024-07-23")
    return value


IsoDate = Annotated[str, BeforeValidator(_iso_date)]
Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")]


class RopeScalingTable(DataModel):
    factor: PositiveFloat = 8.0
    low_freq_factor: PositiveFloat = 1.0
    high_freq_factor: PositiveFloat = 4.0
    original_max_position: PositiveInt = 8192


class ArchTable(DataModel):
    """The architecture numbers: the fields of ``llamahub.model.args.ModelArgs``."""

    dim: PositiveInt
    n_layers: PositiveInt
    n_heads: PositiveInt
    vocab_size: PositiveInt
    n_kv_heads: PositiveInt | None = None
    multiple_of: PositiveInt = 256
    ffn_dim_multiplier: PositiveFloat | None = None
    ffn_dim: PositiveInt | None = None
    norm_eps: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    rope_theta: PositiveFloat = 10000.0
    rope_scaling: RopeScalingTable | None = None
    tie_embeddings: bool = False

    def model_args(self, context_length: int) -> ModelArgs:
        fields = self.model_dump(exclude={"rope_scaling"})
        rs = RopeScaling(**self.rope_scaling.model_dump()) if self.rope_scaling else None
        return ModelArgs(**fields, rope_scaling=rs, max_seq_len=context_length)


ARCH_HINT = f"allowed keys here: {', '.join(sorted(ArchTable.model_fields))}"
ArchDefaults = dict[str, Any]  # some of ArchTable's keys: checked once merged with the entry's


class FamilyTable(DataModel):
    name: Name
    title: Line | None = None
    license: Line
    tokenizer: Tokenizer
    tokenizer_location: TokenizerLocation
    context_length: PositiveInt
    release_date: IsoDate
    meta_llama2_vocab: bool = False
    arch: ArchDefaults = Field(default_factory=dict)
    debug: bool = False


class VariantEntry(DataModel):
    name: Name
    size: Line
    kind: Kind
    shards: PositiveInt
    meta_folder: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")]
    hf_repo: Line | None = None
    hf_repo_native: Line | None = None
    aliases: Lines = Field(default_factory=list)
    arch: ArchDefaults = Field(default_factory=dict)
    chat_format: ChatFormat | None = None
    context_length: PositiveInt | None = None  # when it differs from the family's
    tokenizer: Tokenizer | None = None
    tokenizer_location: TokenizerLocation | None = None
    meta_llama2_vocab: bool | None = None
    description: Line | None = None


def parse_variants(data: dict[str, Any], file: str) -> list[dict[str, Any]]:
    """Validate a parsed variants file; the keyword arguments of each entry's ``Variant``."""
    tables = [Problem(k, "unknown table") for k in sorted(set(data) - {"family", "variant"})]
    if "family" not in data:
        tables.append(Problem("family", "missing table"))
    check(tables, file=file, entry="(file)", hint="a variants file has one [family] and [[variant]] tables")
    family = validate(FamilyTable, data["family"], file=file, entry="[family]", hint=HINT)
    unknown = sorted(set(family.arch) - set(ArchTable.model_fields))
    check([Problem(f"arch.{k}", "unknown key", ARCH_HINT) for k in unknown], file=file, entry="[family]",
          hint=HINT)
    entries = data.get("variant", [])
    if not isinstance(entries, list):
        check([Problem("variant", "must be [[variant]] tables")], file=file, entry="(file)", hint=HINT)
    return [_variant(family, raw, file, i) for i, raw in enumerate(entries)]


def _variant(family: FamilyTable, raw: Any, file: str, index: int) -> dict[str, Any]:
    name = raw.get("name") if isinstance(raw, dict) else None
    entry = f"variant[{index}] {name}" if isinstance(name, str) else f"variant[{index}]"
    v = validate(VariantEntry, raw, file=file, entry=entry, hint=HINT)
    arch = validate(ArchTable, {**family.arch, **v.arch}, file=file, entry=entry, hint=HINT, at="arch")
    context = v.context_length or family.context_length
    fields = {
        "name": v.name, "family": family.name, "family_title": family.title or family.name,
        "size": v.size, "kind": v.kind, "shards": v.shards,
        "arch": arch.model_args(context), "meta_folder": v.meta_folder,
        "tokenizer": v.tokenizer or family.tokenizer,
        "tokenizer_location": v.tokenizer_location or family.tokenizer_location,
        "license": family.license, "context_length": context,
        "release_date": family.release_date, "chat_format": v.chat_format, "hf_repo": v.hf_repo,
        "hf_repo_native": v.hf_repo_native, "aliases": tuple(v.aliases),
        "meta_llama2_vocab": family.meta_llama2_vocab if v.meta_llama2_vocab is None
        else v.meta_llama2_vocab, "debug": family.debug, "source": file,
    }
    check(variant_problems(v.kind, v.chat_format, v.shards, arch=fields["arch"]), file=file, entry=entry,
          hint=HINT)
    return fields


def variant_problems(kind: str, chat_format: str | None, shards: int, arch: ModelArgs) -> list[Problem]:
    """What is wrong across a variant's fields (every field on its own already checked)."""
    problems = []
    if kind == "chat" and chat_format not in CHAT_FORMATS:
        problems.append(Problem("chat_format", f"a chat variant needs one of {', '.join(CHAT_FORMATS)}"))
    if kind == "base" and chat_format is not None:
        problems.append(Problem("chat_format", "a base variant has none"))
    try:
        arch.validate()
    except CheckpointError as e:
        problems.append(Problem("arch", e.message.removeprefix("invalid model architecture: ")))
    if shards < 1 or (arch.kv_heads % shards and shards % arch.kv_heads):
        problems.append(Problem("shards", f"{shards} shards cannot split {arch.kv_heads} kv heads"))
    return problems


def check_variant(variant: Any, file: str) -> None:
    """Check a ``Variant`` built in code (e.g. by a plugin) as a file's entries are checked."""
    choices = (("kind", KINDS), ("tokenizer", TOKENIZERS), ("tokenizer_location", ("top", "model")))
    problems = [Problem(name, f"must be one of {', '.join(allowed)}, got {getattr(variant, name)!r}")
                for name, allowed in choices if getattr(variant, name) not in allowed]
    problems += variant_problems(variant.kind, variant.chat_format, variant.shards, variant.arch)
    if variant.arch.max_seq_len != variant.context_length:
        problems.append(Problem("context_length", f"{variant.context_length} but arch.max_seq_len is "
                                                  f"{variant.arch.max_seq_len}"))
    check(problems, file=file, entry=f"variant {variant.name}", hint=HINT)
