"""Local derivative variants: what a fine-tune produced, with its lineage and its base's license.

A fine-tune's output is a variant like any other: ``llamahub.load(NAME)`` resolves it, the
gates of its base's license apply to it (it keeps the base's family, license and release
date), and its weights sit in the cache as a snapshot in Meta's layout. Its record, in the
data folder (``derivatives/NAME.json``), holds the lineage: base variant, method, digest of
the training data, license, config and measurements.

The naming and output-use rules read the registry's license data (``derivative_name_prefix``,
``outputs_may_train_other_models``, ``attribution``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from llamahub.errors import DerivativeNameError, FinetuneError, OutputUseError
from llamahub.fsutil import atomic_write
from llamahub.model.args import ModelArgs, RopeScaling
from llamahub.paths import data_dir
from llamahub.policy.terms import LicenseTerms, license_terms
from llamahub.registry import Variant

NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]{0,99}$")
RECORD = "lineage.json"
NOTICE = "NOTICE"


def folder() -> Path:
    return data_dir() / "derivatives"


# --- rules over the license data ------------------------------------------------------------


def name_prefix(terms: LicenseTerms) -> str | None:
    """The license's derivative prefix as a variant name begins ("Llama 3" -> "llama-3")."""
    if not terms.derivative_name_prefix:
        return None
    return re.sub(r"\s+", "-", terms.derivative_name_prefix.strip().lower())


def check_name(name: str, base: Variant) -> None:
    """Refuse a derivative name that is malformed or breaks the base license's naming rule."""
    if not NAME.match(name):
        raise FinetuneError(f"{name!r} cannot name a variant",
                            hint="use lower-case letters, digits, '.' and '-', e.g. llama-3-my-helper")
    terms = license_terms(base.license)
    prefix = name_prefix(terms)
    if prefix and not name.startswith(prefix):
        raise DerivativeNameError(
            f"{terms.title} asks that a model built from {base.name} carries a name beginning with "
            f"{terms.derivative_name_prefix!r}; {name!r} does not",
            hint=f"name it {suggest_name(name, prefix)}")


def suggest_name(name: str, prefix: str) -> str:
    """``name`` with the prefix in front, without repeating the words of it that it starts with."""
    words, head = name.split("-"), prefix.split("-")
    while words and head and words[0] == head[0]:
        words.pop(0)
        head.pop(0)
    return "-".join([prefix, *words]) if words else f"{prefix}-fine-tune"


def check_source(source: Variant, base: Variant) -> str | None:
    """May outputs of ``source`` train ``base``? Raises OutputUseError when the source's license
    forbids it; returns the attribution the derivative must carry (None when none)."""
    terms = license_terms(source.license)
    if source.license == base.license:
        return terms.attribution  # a model's outputs may improve the same model family
    if not terms.outputs_may_train_other_models:
        raise OutputUseError(
            f"training data comes from {source.name}, whose {terms.title} lets its outputs improve "
            f"only models under the same license, and {base.name} is under {base.license}",
            hint=f"drop the records whose source_model is {source.name}, or fine-tune a "
                 f"{source.license} model instead")
    return terms.attribution


def notice_text(name: str, base: Variant, method: str, attributions: Iterable[str]) -> str:
    """The NOTICE written next to a derivative's weights: what it is, and what it owes."""
    terms = license_terms(base.license)
    lines = [f"{name}: a {method} fine-tune of {base.name}, made with llamahub.", "",
             f"It is a derivative of {base.name} and is distributed under the {terms.title}",
             f"(issued by {terms.issuer}{'; ' + terms.url if terms.url else ''}).",
             "Give every recipient a copy of that license; its acceptable use policy applies to any use."]
    shown = list(dict.fromkeys(a for a in [terms.attribution, *attributions] if a))
    if shown:
        lines += ["", "Attribution to show in the product, its website or its documentation:",
                  *(f"  {a}" for a in shown)]
    lines += ["", "What the license asks of redistribution (llamahub's summary, not the license):",
              *(f"- {r}" for r in terms.redistribution)]
    return "\n".join(lines) + "\n"


# --- records --------------------------------------------------------------------------------


def derived_variant(name: str, base: Variant, args: ModelArgs) -> Variant:
    """The derivative's variant: the base's family, license and dates; its own name and folder."""
    return Variant(
        name=name, family=base.family, family_title=base.family_title, size=base.size,
        kind=base.kind, arch=args, shards=1, meta_folder=name, tokenizer=base.tokenizer,
        tokenizer_location="model", license=base.license, context_length=args.max_seq_len,
        release_date=base.release_date, chat_format=base.chat_format,
        meta_llama2_vocab=False, debug=base.debug, source=f"derivative of {base.name}",
    )


def _arch(data: Mapping[str, Any]) -> ModelArgs:
    fields = dict(data)
    scaling = fields.pop("rope_scaling", None)
    return ModelArgs(**fields, rope_scaling=RopeScaling(**scaling) if scaling else None)


def write_record(name: str, variant: Variant, lineage: Mapping[str, Any]) -> Path:
    fields = {f.name: getattr(variant, f.name) for f in dataclasses.fields(variant)}
    fields["arch"] = {k: v for k, v in dataclasses.asdict(variant.arch).items() if k != "extra"}
    fields["aliases"] = list(variant.aliases)
    path = folder() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"variant": fields, "lineage": dict(lineage)}, indent=2))
    return path


def read_record(name: str) -> dict[str, Any] | None:
    path = folder() / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stamp() -> str:
    """Changes whenever a derivative record is written or removed (keys the catalogue)."""
    base = folder()
    if not base.is_dir():
        return "derivatives:"
    return "derivatives:" + ",".join(f"{p.name}@{p.stat().st_mtime_ns}" for p in sorted(base.glob("*.json")))


def variants() -> list[Variant]:
    """Every derivative recorded on this machine (unreadable records are skipped)."""
    out = []
    for path in sorted(folder().glob("*.json")) if folder().is_dir() else ():
        try:
            fields = dict(json.loads(path.read_text())["variant"])
            fields["arch"] = _arch(fields["arch"])
            fields["aliases"] = tuple(fields.get("aliases", ()))
            out.append(Variant(**fields))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def lineage(name: str) -> dict[str, Any] | None:
    """The lineage of a derivative (base, method, data digest, license, ...), None if not one."""
    record = read_record(name)
    return dict(record["lineage"]) if record and "lineage" in record else None


def save_output(path: Path, record: Mapping[str, Any], source_model: str) -> None:
    """Append a generated record to a JSONL file with its provenance (``source_model``), so that a
    fine-tune on it later knows whose outputs it holds (``llamahub run/chat --save``)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({**record, "source_model": source_model}) + "\n")
