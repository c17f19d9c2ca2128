"""Local derivative variants: what a fine-tune produced, with its lineage and its base's license.

A fine-tune's output is a variant like any other: ``llamahub.load(NAME)`` resolves it, the
gates of its base's license apply to it (it keeps the base's family, license and release
date), and its weights sit in the cache as a snapshot in Meta's layout. Its record, in the
data folder (``derivatives/NAME.json``), holds the lineage: base variant, method, digest of
the training data, license, config and measurements.

The naming and output-use rules are pure functions of the license data in
:mod:`llamahub.policy.rules`, shared with the hub and ``llamahub license check``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from llamahub.fsutil import atomic_write
from llamahub.model.args import ModelArgs, RopeScaling
from llamahub.paths import data_dir
from llamahub.policy.terms import license_terms
from llamahub.registry import Variant

RECORD = "lineage.json"
NOTICE = "NOTICE"


def folder() -> Path:
    return data_dir() / "derivatives"


# --- the NOTICE (the naming and output-use rules are in llamahub.policy.rules) -----------------


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
