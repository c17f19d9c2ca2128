"""License terms and acceptable use policies as data: ``registry/licenses`` and ``registry/aup``.

Each license version is one flat TOML file; each acceptable use policy (AUP) is another, with one
``[[category]]`` table per prohibited category. The files summarise Meta's terms in our own
words and never hold Meta's text. ``text_sha256`` is therefore optional: a hub fills it in from
the LICENSE file of the Meta download it imports.

Loading validates every file (unknown keys, missing keys, types) and the set as a whole (file
name matches id, each license names an AUP that exists, no family is covered by two licenses).
Any problem raises :class:`~llamahub.errors.RegistryError`. Results are cached; nothing is read
at import time.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from llamahub.errors import RegistryError

AUP_GROUPS = ("unlawful", "harm", "deception", "disclosure")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")
_USE_ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SUMMARY_LINES = (3, 6)

# key -> required? (types are checked by the parsers below)
_LICENSE_KEYS: dict[str, bool] = {
    "id": True, "title": True, "issuer": True, "family": True, "release_date": True,
    "mau_threshold": True, "mau_measured_on": True, "outputs_may_train_other_models": True,
    "outputs_training_condition": False, "attribution": False, "derivative_name_prefix": False,
    "redistribution": True, "languages": True, "aup": True, "url": False, "text_sha256": False,
    "summary": True, "eu_multimodal_restriction": False, "multimodal_variants": False,
}
_AUP_KEYS: dict[str, bool] = {
    "id": True, "version": True, "url": False, "report_email": False, "allowed_uses": True,
    "category": True,
}
_CATEGORY_KEYS: dict[str, bool] = {
    "id": True, "group": True, "description": True, "certifiable": True,
}


@dataclass(frozen=True)
class LicenseTerms:
    """The enforceable facts of one license version (see ``registry/licenses/*.toml``)."""

    id: str
    title: str
    issuer: str
    families: tuple[str, ...]
    release_date: dt.date
    mau_threshold: int
    mau_measured_on: dt.date
    outputs_may_train_other_models: bool
    redistribution: tuple[str, ...]
    languages: tuple[str, ...]
    aup: str
    summary: tuple[str, ...]
    outputs_training_condition: str | None = None
    attribution: str | None = None
    derivative_name_prefix: str | None = None
    url: str | None = None
    text_sha256: str | None = None
    eu_multimodal_restriction: bool = False
    multimodal_variants: tuple[str, ...] = ()

    def covers(self, family: str) -> bool:
        """True when variants of ``family`` are under this license."""
        return family in self.families

    def is_multimodal(self, variant_name: str) -> bool:
        """True when ``variant_name`` matches one of the license's multimodal name patterns."""
        name = variant_name.lower()
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.multimodal_variants)


@dataclass(frozen=True)
class AupCategory:
    """One prohibited category of an acceptable use policy."""

    id: str
    group: str
    description: str
    certifiable: bool = False


@dataclass(frozen=True)
class Aup:
    """One acceptable use policy: prohibited categories plus the intended uses a profile may declare."""

    id: str
    version: str
    categories: tuple[AupCategory, ...]
    allowed_uses: tuple[str, ...]
    url: str | None = None
    report_email: str | None = None

    @property
    def prohibited(self) -> frozenset[str]:
        """The ids of every prohibited category."""
        return frozenset(c.id for c in self.categories)

    @property
    def known_uses(self) -> frozenset[str]:
        """Every id a profile may name: allowed uses and prohibited categories."""
        return frozenset(self.allowed_uses) | self.prohibited

    def category(self, category_id: str) -> AupCategory | None:
        return next((c for c in self.categories if c.id == category_id), None)


# --- field helpers -----------------------------------------------------------------------------


def _check_keys(data: Mapping[str, Any], schema: Mapping[str, bool], where: str) -> None:
    unknown = sorted(set(data) - set(schema))
    if unknown:
        raise RegistryError(f"{where}: unknown keys {unknown}",
                            hint=f"allowed keys: {', '.join(sorted(schema))}")
    missing = sorted(k for k, required in schema.items() if required and k not in data)
    if missing:
        raise RegistryError(f"{where}: missing keys {missing}",
                            hint="see registry/licenses/llama2.toml and registry/aup/llama2-aup.toml")


def _bad(where: str, key: str, expected: str, value: Any) -> RegistryError:
    return RegistryError(f"{where}: {key} must be {expected}, got {value!r}", hint="fix the registry file")


def _text(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise _bad(where, key, "a non-empty one-line string", value)
    return value


def _opt_text(data: Mapping[str, Any], key: str, where: str) -> str | None:
    if key not in data or data[key] == "":
        return None
    return _text(data, key, where)


def _lines(data: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or (required and not value):
        raise _bad(where, key, "a non-empty list of strings" if required else "a list of strings", value)
    for item in value:
        if not isinstance(item, str) or not item.strip() or "\n" in item:
            raise _bad(where, key, "a list of one-line strings", value)
    if len(set(value)) != len(value):
        raise _bad(where, key, "a list without duplicates", value)
    return tuple(value)


def _flag(data: Mapping[str, Any], key: str, where: str, default: bool | None = None) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise _bad(where, key, "true or false", value)
    return value


def _date(data: Mapping[str, Any], key: str, where: str) -> dt.date:
    value = data[key]
    if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
        raise _bad(where, key, "a TOML date such as 2024-07-23", value)
    return value


def _positive_int(data: Mapping[str, Any], key: str, where: str) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _bad(where, key, "a positive integer", value)
    return value


def _url(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = _opt_text(data, key, where)
    if value is not None and not value.startswith("https://"):
        raise _bad(where, key, "an https:// URL", value)
    return value


# --- parsers -----------------------------------------------------------------------------------


def parse_license(data: Mapping[str, Any], where: str = "license") -> LicenseTerms:
    """Validate one license table and build its :class:`LicenseTerms`."""
    _check_keys(data, _LICENSE_KEYS, where)
    license_id = _text(data, "id", where)
    if not _ID_RE.match(license_id):
        raise _bad(where, "id", "lower-case letters, digits, '.' and '-'", license_id)
    terms = LicenseTerms(
        id=license_id,
        title=_text(data, "title", where),
        issuer=_text(data, "issuer", where),
        families=_lines(data, "family", where),
        release_date=_date(data, "release_date", where),
        mau_threshold=_positive_int(data, "mau_threshold", where),
        mau_measured_on=_date(data, "mau_measured_on", where),
        outputs_may_train_other_models=_flag(data, "outputs_may_train_other_models", where),
        outputs_training_condition=_opt_text(data, "outputs_training_condition", where),
        attribution=_opt_text(data, "attribution", where),
        derivative_name_prefix=_opt_text(data, "derivative_name_prefix", where),
        redistribution=_lines(data, "redistribution", where),
        languages=_lines(data, "languages", where),
        aup=_text(data, "aup", where),
        url=_url(data, "url", where),
        text_sha256=_sha256(data, where),
        summary=_lines(data, "summary", where),
        eu_multimodal_restriction=_flag(data, "eu_multimodal_restriction", where, default=False),
        multimodal_variants=_lines(data, "multimodal_variants", where, required=False),
    )
    _check_license(terms, where)
    return terms


def _sha256(data: Mapping[str, Any], where: str) -> str | None:
    value = _opt_text(data, "text_sha256", where)
    if value is not None and not _SHA256_RE.match(value):
        raise _bad(where, "text_sha256", "64 lower-case hex digits (or absent)", value)
    return value


def _check_license(terms: LicenseTerms, where: str) -> None:
    problems = []
    if terms.outputs_may_train_other_models != (terms.outputs_training_condition is not None):
        problems.append("outputs_training_condition is required exactly when "
                        "outputs_may_train_other_models is true")
    if terms.eu_multimodal_restriction != bool(terms.multimodal_variants):
        problems.append("multimodal_variants is required exactly when eu_multimodal_restriction is true")
    low, high = _SUMMARY_LINES
    if not low <= len(terms.summary) <= high:
        problems.append(f"summary must have {low} to {high} lines, not {len(terms.summary)}")
    if terms.mau_measured_on > terms.release_date:
        problems.append("mau_measured_on cannot be after release_date")
    if problems:
        raise RegistryError(f"{where}: " + "; ".join(problems), hint="fix the registry file")


def parse_aup(data: Mapping[str, Any], where: str = "aup") -> Aup:
    """Validate one acceptable use policy table and build its :class:`Aup`."""
    _check_keys(data, _AUP_KEYS, where)
    aup_id = _text(data, "id", where)
    if not _ID_RE.match(aup_id):
        raise _bad(where, "id", "lower-case letters, digits, '.' and '-'", aup_id)
    entries = data["category"]
    if not isinstance(entries, list) or not entries:
        raise _bad(where, "category", "one or more [[category]] tables", entries)
    categories = tuple(_category(e, f"{where} category[{i}]") for i, e in enumerate(entries))
    allowed = _lines(data, "allowed_uses", where)
    _check_use_ids(allowed, categories, where)
    return Aup(id=aup_id, version=_text(data, "version", where), categories=categories,
               allowed_uses=allowed, url=_url(data, "url", where),
               report_email=_opt_text(data, "report_email", where))


def _category(entry: Any, where: str) -> AupCategory:
    if not isinstance(entry, dict):
        raise _bad(where, "category", "a table", entry)
    _check_keys(entry, _CATEGORY_KEYS, where)
    group = _text(entry, "group", where)
    if group not in AUP_GROUPS:
        raise _bad(where, "group", f"one of {AUP_GROUPS}", group)
    if _flag(entry, "certifiable", where):
        raise RegistryError(f"{where}: certifiable must be false",
                            hint="no certification lifts an acceptable use prohibition")
    return AupCategory(id=_text(entry, "id", where), group=group,
                       description=_text(entry, "description", where), certifiable=False)


def _check_use_ids(allowed: tuple[str, ...], categories: tuple[AupCategory, ...], where: str) -> None:
    category_ids = [c.id for c in categories]
    for use_id in (*allowed, *category_ids):
        if not _USE_ID_RE.match(use_id):
            raise _bad(where, "use id", "snake_case", use_id)
    duplicates = sorted({c for c in category_ids if category_ids.count(c) > 1})
    if duplicates:
        raise RegistryError(f"{where}: duplicate category ids {duplicates}", hint="ids must be unique")
    both = sorted(set(allowed) & set(category_ids))
    if both:
        raise RegistryError(f"{where}: ids {both} are both allowed and prohibited",
                            hint="remove them from allowed_uses")


# --- whole-registry checks ---------------------------------------------------------------------


def check_licenses(licenses: Iterable[LicenseTerms], aups: Mapping[str, Aup]) -> dict[str, LicenseTerms]:
    """Cross-check a set of licenses against the AUPs; returns them keyed by id."""
    by_id: dict[str, LicenseTerms] = {}
    owner: dict[str, str] = {}
    for terms in licenses:
        if terms.id in by_id:
            raise RegistryError(f"license id {terms.id!r} is defined twice", hint="ids must be unique")
        if terms.aup not in aups:
            raise RegistryError(f"license {terms.id}: unknown aup {terms.aup!r}",
                                hint=f"known AUPs: {', '.join(sorted(aups))}")
        for family in terms.families:
            if family in owner:
                raise RegistryError(f"family {family!r} is covered by both {owner[family]} and {terms.id}",
                                    hint="each family belongs to exactly one license")
            owner[family] = terms.id
        by_id[terms.id] = terms
    return by_id


def _data_dir(kind: str) -> Traversable:
    return resources.files("llamahub_registry") / kind


def _read_dir(kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(file stem, parsed TOML) for every ``*.toml`` in ``registry/<kind>``, sorted by name."""
    files = sorted((f for f in _data_dir(kind).iterdir() if f.name.endswith(".toml")), key=lambda f: f.name)
    out = []
    for f in files:
        try:
            out.append((f.name.removesuffix(".toml"), tomllib.loads(f.read_text(encoding="utf-8"))))
        except tomllib.TOMLDecodeError as e:
            raise RegistryError(f"{kind}/{f.name}: not valid TOML: {e}", hint="fix the file's syntax") from e
    return out


def _check_stem(stem: str, item_id: str, kind: str) -> None:
    if stem != item_id:
        raise RegistryError(f"{kind}/{stem}.toml declares id {item_id!r}",
                            hint=f"rename the file to {item_id}.toml or fix its id")


@functools.cache
def _aups() -> tuple[Aup, ...]:
    out = []
    for stem, data in _read_dir("aup"):
        aup = parse_aup(data, f"aup/{stem}.toml")
        _check_stem(stem, aup.id, "aup")
        out.append(aup)
    return tuple(out)


@functools.cache
def _licenses() -> tuple[LicenseTerms, ...]:
    out = []
    for stem, data in _read_dir("licenses"):
        terms = parse_license(data, f"licenses/{stem}.toml")
        _check_stem(stem, terms.id, "licenses")
        out.append(terms)
    return tuple(check_licenses(out, load_aups()).values())


def load_aups() -> dict[str, Aup]:
    """Every shipped acceptable use policy, keyed by id (a fresh dict; the data is cached)."""
    return {a.id: a for a in _aups()}


def load_licenses() -> dict[str, LicenseTerms]:
    """Every shipped license version, keyed by id (a fresh dict; the data is cached)."""
    return {t.id: t for t in _licenses()}


def license_terms(license_id: str) -> LicenseTerms:
    """The terms of one license version; unknown ids raise RegistryError listing the known ones."""
    licenses = load_licenses()
    if license_id not in licenses:
        raise RegistryError(f"unknown license {license_id!r}",
                            hint=f"known licenses: {', '.join(sorted(licenses))}")
    return licenses[license_id]


def aup_terms(aup_id: str) -> Aup:
    """One acceptable use policy by id; unknown ids raise RegistryError listing the known ones."""
    aups = load_aups()
    if aup_id not in aups:
        raise RegistryError(f"unknown acceptable use policy {aup_id!r}",
                            hint=f"known policies: {', '.join(sorted(aups))}")
    return aups[aup_id]


def license_for_family(family: str) -> LicenseTerms:
    """The license that covers variants of ``family``."""
    for terms in _licenses():
        if terms.covers(family):
            return terms
    raise RegistryError(f"no license covers family {family!r}",
                        hint="add the family to a file in registry/licenses")


def known_uses() -> tuple[str, ...]:
    """Every intended-use id that some shipped AUP allows, sorted."""
    return tuple(sorted({u for aup in _aups() for u in aup.allowed_uses}))


def render_terms(terms: LicenseTerms) -> str:
    """The registry's summary of a license, as shown when no LICENSE file was imported."""
    lines = [terms.title, f"Issued by {terms.issuer}; covers {', '.join(terms.families)}; "
                          f"released {terms.release_date.isoformat()}.", "",
             "This is llamahub's summary of the terms, not the license text itself."]
    if terms.url:
        lines.append(f"The full text: {terms.url}")
    lines += ["", *(f"- {line}" for line in terms.summary), "",
              f"Monthly active users above {terms.mau_threshold:,} need a separate license from "
              f"{terms.issuer.rstrip('.')}.", f"Acceptable use policy: {terms.aup}."]
    return "\n".join(lines) + "\n"
