"""License terms and acceptable use policies as data: ``registry/licenses`` and ``registry/aup``.

Each license version is one flat TOML file; each acceptable use policy (AUP) is another, with one
``[[category]]`` table per prohibited category. The files summarise Meta's terms in our own
words and never hold Meta's text. ``text_sha256`` is therefore optional: a hub fills it in from
the LICENSE file of the Meta download it imports.

Loading validates every file against pydantic models (unknown keys, missing keys, types, ranges)
and the set as a whole (file name matches id, each license names an AUP that exists, no family
is covered by two licenses). Any problem raises :class:`~llamahub.errors.DataFileError` naming
the file, the entry and the field (the format of ``llamahub/schema.py``). Results are cached;
nothing is read at import time.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BeforeValidator, Field, PositiveInt

from llamahub.errors import DataFileError, RegistryError
from llamahub.schema import DataModel, Line, Lines, Problem, check, read_toml, validate

Group = Literal["unlawful", "harm", "deception", "disclosure", "scope"]  # scope: e.g. commercial use
AUP_GROUPS: tuple[str, ...] = get_args(Group)
HINT = "fix the file; registry/licenses/llama2.toml and registry/aup/llama2-aup.toml show every key"


@dataclass(frozen=True)
class LicenseTerms:
    """The enforceable facts of one license version (see ``registry/licenses/*.toml``)."""

    id: str
    title: str
    issuer: str
    families: tuple[str, ...]
    release_date: dt.date
    mau_threshold: int | None  # None: the license has no monthly-active-users clause (Llama 1)
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
    clauses: tuple[tuple[str, str], ...] = ()
    research_only: bool = False
    local_folders_gated: bool = True

    def clause(self, rule: str) -> str | None:
        """The license clause a rule comes from (``outputs``, ``naming``, ``attribution``,
        ``languages``, ``mau``, ...), None when the data does not name one."""
        return dict(self.clauses).get(rule)

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


# --- schemas (pydantic; llamahub/schema.py has the error format) --------------------------------


def _matching(pattern: str, what: str) -> AfterValidator:
    def check_value(value: str | None) -> str | None:
        if value is not None and not re.fullmatch(pattern, value):
            raise ValueError(f"must be {what}")
        return value

    return AfterValidator(check_value)


def _blank_is_none(value: Any) -> Any:
    return None if value == "" else value


Blank = BeforeValidator(_blank_is_none)  # an optional text written as "" counts as absent
Id = Annotated[str, _matching(r"[a-z0-9][a-z0-9.\-]*", "lower-case letters, digits, '.' and '-'")]
UseId = Annotated[str, _matching(r"[a-z][a-z0-9_]*", "a snake_case id")]
OptionalLine = Annotated[Line | None, Blank]
Url = Annotated[Line | None, Blank, _matching(r"https://\S+", "an https:// URL")]
Sha256 = Annotated[str | None, Blank, _matching(r"[0-9a-f]{64}", "64 lower-case hex digits (or absent)")]
NonEmptyLines = Annotated[Lines, Field(min_length=1)]


class LicenseTable(DataModel):
    """One ``registry/licenses/*.toml`` file."""

    id: Id
    title: Line
    issuer: Line
    family: NonEmptyLines
    release_date: dt.date
    mau_threshold: PositiveInt | None = None
    mau_measured_on: dt.date | None = None
    outputs_may_train_other_models: bool
    outputs_training_condition: OptionalLine = None
    attribution: OptionalLine = None
    derivative_name_prefix: OptionalLine = None
    redistribution: NonEmptyLines
    languages: NonEmptyLines
    aup: Id
    url: Url = None
    text_sha256: Sha256 = None
    summary: Annotated[Lines, Field(min_length=3, max_length=6)]
    eu_multimodal_restriction: bool = False
    multimodal_variants: Lines = Field(default_factory=list)
    clauses: dict[Annotated[str, _matching(r"[a-z_]+", "a snake_case rule name")], Line] = Field(
        default_factory=dict)
    research_only: bool = False
    local_folders_gated: bool = True

    def problems(self) -> list[Problem]:
        """What is wrong across fields."""
        out = []
        if self.outputs_may_train_other_models != (self.outputs_training_condition is not None):
            out.append(Problem("outputs_training_condition",
                               "required exactly when outputs_may_train_other_models is true"))
        if self.eu_multimodal_restriction != bool(self.multimodal_variants):
            out.append(Problem("multimodal_variants",
                               "required exactly when eu_multimodal_restriction is true"))
        if (self.mau_threshold is None) != (self.mau_measured_on is None):
            out.append(Problem("mau_measured_on",
                               "give mau_threshold and mau_measured_on together, or neither"))
        if self.mau_measured_on is not None and self.mau_measured_on > self.release_date:
            out.append(Problem("mau_measured_on", "cannot be after release_date"))
        if self.research_only and self.outputs_may_train_other_models:
            out.append(Problem("outputs_may_train_other_models", "a research-only license lets nothing train "
                                                                 "other models"))
        return out


class CategoryTable(DataModel):
    """One ``[[category]]`` of an acceptable use policy."""

    id: UseId
    group: Group
    description: Line
    certifiable: bool


class AupTable(DataModel):
    """One ``registry/aup/*.toml`` file."""

    id: Id
    version: Line
    url: Url = None
    report_email: OptionalLine = None
    allowed_uses: Annotated[list[UseId], Field(min_length=1)]
    category: Annotated[list[CategoryTable], Field(min_length=1)]

    def problems(self) -> list[Problem]:
        out = [Problem(f"category[{i}].certifiable", "must be false",
                       "no certification lifts an acceptable use prohibition")
               for i, c in enumerate(self.category) if c.certifiable]
        ids = [c.id for c in self.category]
        repeated = sorted({c for c in ids if ids.count(c) > 1})
        if repeated:
            out.append(Problem("category", f"duplicate category ids {repeated}"))
        if len(set(self.allowed_uses)) != len(self.allowed_uses):
            out.append(Problem("allowed_uses", "must not repeat an item"))
        both = sorted(set(self.allowed_uses) & set(ids))
        if both:
            out.append(Problem("allowed_uses", f"ids {both} are both allowed and prohibited",
                               "remove them from allowed_uses"))
        return out


def _entry(kind: str, data: Mapping[str, Any]) -> str:
    item_id = data.get("id") if isinstance(data, Mapping) else None
    return f"{kind} {item_id}" if isinstance(item_id, str) else kind


def parse_license(data: Mapping[str, Any], where: str = "license") -> LicenseTerms:
    """Validate one license table (from the file ``where``) and build its :class:`LicenseTerms`."""
    entry = _entry("license", data)
    t = validate(LicenseTable, dict(data), file=where, entry=entry, hint=HINT)
    check(t.problems(), file=where, entry=entry, hint=HINT)
    return LicenseTerms(
        id=t.id, title=t.title, issuer=t.issuer, families=tuple(t.family), release_date=t.release_date,
        mau_threshold=t.mau_threshold, mau_measured_on=t.mau_measured_on or t.release_date,
        outputs_may_train_other_models=t.outputs_may_train_other_models,
        outputs_training_condition=t.outputs_training_condition, attribution=t.attribution,
        derivative_name_prefix=t.derivative_name_prefix, redistribution=tuple(t.redistribution),
        languages=tuple(t.languages), aup=t.aup, url=t.url, text_sha256=t.text_sha256,
        summary=tuple(t.summary), eu_multimodal_restriction=t.eu_multimodal_restriction,
        multimodal_variants=tuple(t.multimodal_variants), clauses=tuple(sorted(t.clauses.items())),
        research_only=t.research_only, local_folders_gated=t.local_folders_gated,
    )


def parse_aup(data: Mapping[str, Any], where: str = "aup") -> Aup:
    """Validate one acceptable use policy table (from the file ``where``) and build its :class:`Aup`."""
    entry = _entry("aup", data)
    a = validate(AupTable, dict(data), file=where, entry=entry, hint=HINT)
    check(a.problems(), file=where, entry=entry, hint=HINT)
    categories = tuple(AupCategory(c.id, c.group, c.description, certifiable=False) for c in a.category)
    return Aup(id=a.id, version=a.version, categories=categories, allowed_uses=tuple(a.allowed_uses),
               url=a.url, report_email=a.report_email)


# --- whole-registry checks ---------------------------------------------------------------------


def check_licenses(licenses: Iterable[LicenseTerms], aups: Mapping[str, Aup]) -> dict[str, LicenseTerms]:
    """Cross-check a set of licenses against the AUPs; returns them keyed by id."""
    by_id: dict[str, LicenseTerms] = {}
    owner: dict[str, str] = {}
    for terms in licenses:
        problems = []
        if terms.id in by_id:
            problems.append(Problem("id", f"{terms.id!r} is defined twice", "ids must be unique"))
        if terms.aup not in aups:
            problems.append(Problem("aup", f"unknown aup {terms.aup!r}",
                                    f"known AUPs: {', '.join(sorted(aups))}"))
        problems += [Problem("family", f"{family!r} is covered by both {owner[family]} and {terms.id}",
                             "each family belongs to exactly one license")
                     for family in terms.families if family in owner]
        check(problems, file=f"licenses/{terms.id}.toml", entry=f"license {terms.id}", hint=HINT)
        owner |= dict.fromkeys(terms.families, terms.id)
        by_id[terms.id] = terms
    return by_id


def _data_dir(kind: str) -> Traversable:
    return resources.files("llamahub_registry") / kind


def _read_dir(kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(file stem, parsed TOML) for every ``*.toml`` in ``registry/<kind>``, sorted by name."""
    files = sorted((f for f in _data_dir(kind).iterdir() if f.name.endswith(".toml")), key=lambda f: f.name)
    return [(f.name.removesuffix(".toml"), read_toml(f.read_text(encoding="utf-8"), f"{kind}/{f.name}"))
            for f in files]


def _check_stem(stem: str, item_id: str, kind: str) -> None:
    if stem != item_id:
        raise DataFileError(f"{kind}/{stem}.toml", f"{kind.removesuffix('s')} {item_id}",
                            [("id", f"{item_id!r} does not match the file name")],
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
    lines += ["", *(f"- {line}" for line in terms.summary), ""]
    if terms.mau_threshold is not None:
        lines.append(f"Monthly active users above {terms.mau_threshold:,} need a separate license from "
                     f"{terms.issuer.rstrip('.')}.")
    if terms.research_only:
        lines.append("Non-commercial research only, under an application the issuer approved.")
    lines.append(f"Acceptable use policy: {terms.aup}.")
    return "\n".join(lines) + "\n"


def render_rules(terms: LicenseTerms) -> str:
    """The output-use, naming, attribution and language rules of a license, with their clauses."""
    def at(rule: str) -> str:
        clause = terms.clause(rule)
        return f" [clause {clause}]" if clause else ""

    outputs = "no, only models under this license"
    if terms.outputs_may_train_other_models:
        outputs = f"yes, on a condition: {terms.outputs_training_condition}"
    lines = ["", f"Outputs may train other models: {outputs}{at('outputs')}",
             f"Attribution to display: {terms.attribution or 'none'}{at('attribution')}",
             f"Derivative names must begin with: {terms.derivative_name_prefix or 'no rule'}{at('naming')}",
             f"Languages the models were tuned for: {', '.join(terms.languages)}{at('languages')}", ""]
    return "\n".join(lines)
