"""``llamahub.license_check``: ask the license rules a question about a variant by name.

A thin layer over :mod:`llamahub.policy.rules` (the same functions the hub answers
``GET /api/license-check`` with) that resolves names in the catalogue; it needs no network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from llamahub.plugins import resolve
from llamahub.policy.rules import Ruling, ask
from llamahub.policy.terms import license_terms, load_licenses
from llamahub.registry import Variant

LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md")


def license_check(variant: str, *, outputs_to: str | None = None, train_other: bool = False,
                  name: str | None = None, language: str | None = None) -> Ruling:
    """Answer one question about ``variant``:

    - ``train_other=True``: may its outputs train a model under another license (a non-Llama
      model)? ``outputs_to="llama-2-7b"``: may they train that variant?
    - ``name="Orca Helper"``: may a model made from it be distributed under that name?
    - ``language="Portuguese"``: may it be fine-tuned or used for that language?

    Exactly one question per call; the :class:`Ruling` holds the rule, the obligations, a note
    and the license clause.
    """
    asked = [q for q, given in (("outputs", train_other or outputs_to is not None),
                                ("name", name is not None), ("language", language is not None)) if given]
    if len(asked) != 1:
        raise TypeError("ask exactly one of train_other=True, outputs_to=, name= or language=")
    base = resolve(variant)
    target = resolve(outputs_to) if outputs_to else None
    return ask(asked[0], base, target=target, name=name, language=language)


def license_file(folder: Path) -> Path | None:
    """The LICENSE a model folder came with: in it, or one level up (Meta's Llama 2 layout)."""
    for where in (folder, folder.parent):
        for name in LICENSE_FILES:
            if (where / name).is_file():
                return where / name
    return None


def known_digests(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """{sha256 of a license text: license id}: the registry's official digests, plus ``extra``
    (e.g. the texts this account accepted on its hub, from the signed receipts)."""
    out = {t.text_sha256: t.id for t in load_licenses().values() if t.text_sha256}
    return out | {digest: license_id for digest, license_id in extra.items() if digest}


def identify_license(folder: Path, digests: Mapping[str, str]) -> str | None:
    """The license id whose text the folder's LICENSE file is (by sha256), None when unknown."""
    path = license_file(folder)
    if path is None:
        return None
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return digests.get(digest)


def as_licensed(v: Variant, license_id: str) -> Variant:
    """An ad-hoc local variant taken as one of ``license_id``'s family, so its gates apply."""
    return replace(v, license=license_id, family=license_terms(license_id).families[0])
