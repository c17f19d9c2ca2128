"""The license gates: pure functions ``(profile, variant, grants, now) -> Decision``.

:func:`check` runs the gates in a fixed order and returns the first refusal, or an allowed
decision naming the enterprise grant it relied on:

1. the variant's license version was accepted (each version separately);
   then the Llama 3.2 territorial rule (multimodal variants are not licensed to EU-domiciled
   organisations);
2. the declared intended uses: none declared, an unknown id, or a category the variant's
   acceptable use policy prohibits are all refused (no certification lifts a prohibition), unless
   a current grant of the organisation for that variant permits exactly that category (the
   case-by-case exception Meta's FAQ describes);
3. monthly active users, as the license counts them: the figure declared for that license
   version (the calendar month before its release date), else the current figure; none declared
   is refused with what to declare. More than the threshold needs a current enterprise grant for
   this organisation and family, whose ``max_mau`` (if any) covers the figure.

Nothing here reads a clock, a file other than the registry data, or the network: ``now`` is
always passed in and must be timezone-aware. The hub and the client call the same code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol

from llamahub.errors import (
    AcceptableUseError,
    ConfigError,
    LicenseError,
    LicenseNotAcceptedError,
    MauLimitError,
)
from llamahub.policy.terms import Aup, LicenseTerms, aup_terms, known_uses, license_terms, load_aups

OK = "ok"
_ERRORS: dict[str, type[LicenseError]] = {
    "license_not_accepted": LicenseNotAcceptedError,
    "eu_multimodal_restricted": LicenseError,
    "research_only": AcceptableUseError,
    "application_required": LicenseError,
    "no_intended_use": AcceptableUseError,
    "unknown_use": AcceptableUseError,
    "prohibited_use": AcceptableUseError,
    "mau_not_declared": MauLimitError,
    "mau_over_threshold": MauLimitError,
    "grant_mau_exceeded": MauLimitError,
    "grant_expired": MauLimitError,
    "grant_not_yet_valid": MauLimitError,
    "grant_revoked": MauLimitError,
}
CODES = (OK, *_ERRORS)


def error_class(code: str) -> type[LicenseError] | None:
    """The LicenseError subclass a refusal ``code`` raises (None for codes that are not refusals)."""
    return _ERRORS.get(code)
# When several grants match but none is usable, report the most actionable reason.
_GRANT_REASON_RANK = ("grant_mau_exceeded", "grant_expired", "grant_not_yet_valid", "grant_revoked")


class VariantLike(Protocol):
    """What the gates read from a variant (``llamahub.registry.Variant`` fits)."""

    @property
    def name(self) -> str: ...

    @property
    def family(self) -> str: ...

    @property
    def license(self) -> str: ...


def _require_aware(value: dt.datetime, what: str) -> None:
    if not isinstance(value, dt.datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {value!r}")


@dataclass(frozen=True)
class Profile:
    """Who is asking and for what: the local profile or the hub's record of an account."""

    organisation: str
    mau: int | None
    intended_uses: tuple[str, ...]
    accepted: Mapping[str, str] = field(hash=False)
    country: str | None = None
    eu_domiciled: bool = False
    certifications: tuple[str, ...] = ()
    mau_at: Mapping[str, int] = field(default_factory=dict, hash=False)
    organisation_id: str | None = None  # the hub's organisation record, when an active member

    def __post_init__(self) -> None:
        for figure in (self.mau, *dict(self.mau_at).values()):
            if figure is not None and (isinstance(figure, bool) or not isinstance(figure, int) or figure < 0):
                raise ConfigError(f"declared MAU must be a whole number of users >= 0, got {figure!r}",
                                  hint="run `llamahub profile set --mau N`")
        object.__setattr__(self, "intended_uses", tuple(self.intended_uses))
        object.__setattr__(self, "certifications", tuple(self.certifications))
        object.__setattr__(self, "accepted", MappingProxyType(dict(self.accepted)))
        object.__setattr__(self, "mau_at", MappingProxyType(dict(self.mau_at)))

    def mau_for(self, license_id: str) -> tuple[int | None, bool]:
        """(figure, dated): the MAU declared for that license version's date, else the current one."""
        if license_id in self.mau_at:
            return self.mau_at[license_id], True
        return self.mau, False

    def has_accepted(self, license_id: str) -> bool:
        return bool(self.accepted.get(license_id))


@dataclass(frozen=True)
class Grant:
    """An enterprise license grant: lets one organisation exceed the MAU threshold for some families."""

    id: str
    organisation: str
    families: tuple[str, ...]
    max_mau: int | None
    not_before: dt.datetime
    expires: dt.datetime | None
    revoked: bool = False
    organisation_id: str | None = None
    variants: tuple[str, ...] = ()  # only these variants of the families (empty: all of them)
    uses: tuple[str, ...] = ()  # AUP categories permitted by exception (the case-by-case license)

    def __post_init__(self) -> None:
        object.__setattr__(self, "families", tuple(self.families))
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "uses", tuple(self.uses))
        _require_aware(self.not_before, f"grant {self.id} not_before")
        if self.expires is not None:
            _require_aware(self.expires, f"grant {self.id} expires")
            if self.expires <= self.not_before:
                raise ValueError(f"grant {self.id} expires before it starts")
        if self.max_mau is not None and (isinstance(self.max_mau, bool) or self.max_mau <= 0):
            raise ValueError(f"grant {self.id} max_mau must be positive or None, got {self.max_mau!r}")

    def applies_to(self, profile: Profile, variant: VariantLike) -> bool:
        """True when the grant is this profile's organisation's and covers the variant. A grant tied
        to an organisation record matches only a member of that record, never a name."""
        if self.organisation_id is not None:
            same = profile.organisation_id == self.organisation_id
        else:
            same = profile.organisation_id is None and _same_org(self.organisation, profile.organisation)
        listed = not self.variants or variant.name in self.variants
        return same and variant.family in self.families and listed

    def status(self, now: dt.datetime, mau: int) -> str:
        """``"ok"`` when usable at ``now`` for ``mau`` users, else the ``grant_*`` code that says why not."""
        if self.revoked:
            return "grant_revoked"
        if now < self.not_before:
            return "grant_not_yet_valid"
        if self.expires is not None and now >= self.expires:
            return "grant_expired"
        if self.max_mau is not None and mau > self.max_mau:
            return "grant_mau_exceeded"
        return OK


@dataclass(frozen=True)
class Decision:
    """The outcome of the gates. ``code`` is machine-readable; ``hint`` names the fixing command."""

    allowed: bool
    code: str
    message: str
    hint: str | None = None
    grant_id: str | None = None

    def raise_if_denied(self) -> None:
        """Raise the LicenseError subclass matching ``code`` (its ``code`` set to this one)."""
        if self.allowed:
            return
        error = _ERRORS.get(self.code, LicenseError)(self.message, hint=self.hint)
        error.code = self.code
        raise error

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _deny(code: str, message: str, hint: str) -> Decision:
    return Decision(allowed=False, code=code, message=message, hint=hint)


def _same_org(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def _use_flags(uses: Iterable[str]) -> str:
    flags = " ".join(f"--use {u}" for u in uses)
    return flags or "--use <id>"


# --- gate 1: license acceptance and territory ------------------------------------------------------


def _acceptance_gate(profile: Profile, variant: VariantLike, terms: LicenseTerms) -> Decision | None:
    if profile.has_accepted(terms.id):
        return None
    return _deny("license_not_accepted",
                 f"{variant.name} is under the {terms.title} ({terms.id}), which this profile has not "
                 "accepted",
                 f"run `llamahub license accept {terms.id}` (each license version is accepted separately)")


def _territory_gate(profile: Profile, variant: VariantLike, terms: LicenseTerms) -> Decision | None:
    if not (terms.eu_multimodal_restriction and profile.eu_domiciled and terms.is_multimodal(variant.name)):
        return None
    return _deny("eu_multimodal_restricted",
                 f"the {terms.title} does not license the multimodal model {variant.name} to individuals "
                 "domiciled or companies based in the EU",
                 "use a text-only variant of the same family instead (`llamahub list` shows them)")


# --- gate 2: intended uses -------------------------------------------------------------------------


def _exception(profile: Profile, variant: VariantLike, grants: Iterable[Grant], now: dt.datetime,
               use: str) -> Grant | None:
    """A usable grant of this organisation for this variant that permits the category ``use``."""
    mau = profile.mau_for(variant.license)[0] or 0
    return next((g for g in grants if use in g.uses and g.applies_to(profile, variant)
                 and g.status(now, mau) == OK), None)


def _uses_gate(profile: Profile, variant: VariantLike, terms: LicenseTerms, grants: Iterable[Grant],
               now: dt.datetime) -> Decision | None:
    aup = aup_terms(terms.aup)
    uses = profile.intended_uses
    if not uses:
        return _deny("no_intended_use", "this profile declares no intended use",
                     f"run `llamahub profile set --use <id>`; known ids: {', '.join(aup.allowed_uses)}")
    prohibited = [u for u in uses
                  if u in aup.prohibited and _exception(profile, variant, grants, now, u) is None]
    if prohibited:
        return _prohibited(profile, aup, prohibited[0])
    unknown = [u for u in uses if u not in aup.known_uses]
    if unknown:
        keep = [u for u in uses if u in aup.allowed_uses]
        return _deny("unknown_use",
                     f"unknown intended use {unknown[0]!r} (not a use or category of {aup.id})",
                     f"run `llamahub profile set {_use_flags(keep)}`; "
                     f"known ids: {', '.join(aup.allowed_uses)}")
    return None


def _prohibited(profile: Profile, aup: Aup, use: str) -> Decision:
    category = aup.category(use)
    description = (category.description if category else use).rstrip(".")
    held = ""
    if profile.certifications:
        held = f"; certifications held ({', '.join(profile.certifications)}) do not lift it"
    keep = [u for u in profile.intended_uses if u in aup.allowed_uses]
    return _deny("prohibited_use",
                 f"intended use {use!r} is prohibited by the acceptable use policy {aup.id}: "
                 f"{description}{held}",
                 f"declare only permitted uses: `llamahub profile set {_use_flags(keep)}`; a research "
                 "or public-interest case may ask for an exception: `llamahub enterprise request "
                 f"--use {use} --note WHY`")


# --- gate 3: monthly active users ------------------------------------------------------------------


def _request_hint(family: str, mau: int) -> str:
    return f"run `llamahub enterprise request --family {family} --mau {mau}`"


def _month_before(terms: LicenseTerms) -> str:
    return f"the calendar month before {terms.mau_measured_on.isoformat()}"


def _undeclared(profile: Profile, terms: LicenseTerms) -> Decision:
    return _deny("mau_not_declared",
                 f"{profile.organisation} has declared no monthly active users; the {terms.title} counts "
                 f"them over {_month_before(terms)} ({terms.id}'s release date)",
                 f"declare that month's figure: `llamahub profile set --mau-at {terms.id}=N` "
                 "(or today's figure for every version without a dated one: `--mau N`)")


def _mau_gate(profile: Profile, variant: VariantLike, terms: LicenseTerms,
              grants: Iterable[Grant], now: dt.datetime) -> Decision:
    if terms.mau_threshold is None:  # no monthly-active-users clause in this license
        return Decision(allowed=True, code=OK, message=f"{variant.name}: every license gate passed")
    mau, dated = profile.mau_for(terms.id)
    if mau is None:
        return _undeclared(profile, terms)
    if mau <= terms.mau_threshold:
        return Decision(allowed=True, code=OK, message=f"{variant.name}: every license gate passed")
    matching = [g for g in grants if g.applies_to(profile, variant)]
    for grant in matching:
        if grant.status(now, mau) == OK:
            return Decision(allowed=True, code=OK, grant_id=grant.id,
                            message=f"{variant.name}: every license gate passed under enterprise grant "
                                    f"{grant.id}")
    if not matching:
        which = f"for {_month_before(terms)}" if dated else "today (no figure dated for this version)"
        hint = _request_hint(variant.family, mau)
        if not dated:
            hint += (f"; or, if you had fewer users over {_month_before(terms)}, declare that figure: "
                     f"`llamahub profile set --mau-at {terms.id}=N`")
        return _deny("mau_over_threshold",
                     f"{profile.organisation} declares {mau:,} monthly active users {which}; above "
                     f"{terms.mau_threshold:,} (counted over {_month_before(terms)}) the {terms.title} "
                     f"requires a separate license from {terms.issuer}, and no enterprise grant covers "
                     f"{variant.family}", hint)
    return _grant_refusal(profile, variant, matching, now, mau)


def _grant_refusal(profile: Profile, variant: VariantLike, matching: list[Grant],
                   now: dt.datetime, mau: int) -> Decision:
    def rank(g: Grant) -> int:
        return _GRANT_REASON_RANK.index(g.status(now, mau))

    grant = min(matching, key=rank)
    code = grant.status(now, mau)
    hint = _request_hint(variant.family, mau)
    if code == "grant_mau_exceeded":
        message = (f"enterprise grant {grant.id} covers up to {grant.max_mau:,} monthly active users; "
                   f"{profile.organisation} declares {mau:,}")
    elif code == "grant_expired":
        expired = grant.expires.isoformat() if grant.expires else "an unknown time"
        message = f"enterprise grant {grant.id} for {variant.family} expired at {expired}"
    elif code == "grant_not_yet_valid":
        message = (f"enterprise grant {grant.id} for {variant.family} is valid only from "
                   f"{grant.not_before.isoformat()}")
        hint = f"wait until then, or {hint}"
    else:
        message = f"enterprise grant {grant.id} for {variant.family} was revoked"
    return _deny(code, message, hint)


# --- research-only licenses (Llama 1) ----------------------------------------------------------------


def _research_gate(profile: Profile, variant: VariantLike, terms: LicenseTerms, grants: tuple[Grant, ...],
                   now: dt.datetime) -> Decision:
    """Only the uses the license's policy allows (research), and only under an approved application:
    a current grant of the organisation that covers the variant."""
    aup = aup_terms(terms.aup)
    other = [u for u in profile.intended_uses if u not in aup.allowed_uses]
    if not profile.intended_uses or other:
        what = f"declares {other[0]!r}" if other else "declares no intended use"
        return _deny("research_only",
                     f"the {terms.title} admits only {', '.join(aup.allowed_uses)} (non-commercial); this "
                     f"profile {what}",
                     f"declare only that: `llamahub profile set {_use_flags(aup.allowed_uses)}`")
    # no MAU clause here: an application's grant is usable whatever MAU it names
    usable = [g for g in grants if g.applies_to(profile, variant) and g.status(now, 0) == OK]
    if not usable:
        return _deny("application_required",
                     f"the {terms.title} gives access only to researchers whose application was approved, "
                     f"and no current approval of {profile.organisation} covers {variant.name}",
                     f"apply: `llamahub enterprise request --family {variant.family} --mau 1 --note "
                     "'institution, research purpose, publications'`; an operator reviews it")
    return Decision(allowed=True, code=OK, grant_id=usable[0].id,
                    message=f"{variant.name}: research use under approved application {usable[0].id}")


# --- entry points ----------------------------------------------------------------------------------


def check(profile: Profile, variant: VariantLike, grants: Iterable[Grant], now: dt.datetime) -> Decision:
    """Run every gate for ``variant`` and return the first refusal, or an allowed Decision."""
    _require_aware(now, "now")
    terms, grants = license_terms(variant.license), tuple(grants)
    first = _acceptance_gate(profile, variant, terms) or _territory_gate(profile, variant, terms)
    if first is None and terms.research_only:
        return _research_gate(profile, variant, terms, grants, now)
    early = first or _uses_gate(profile, variant, terms, grants, now)
    decision = early or _mau_gate(profile, variant, terms, grants, now)
    if decision.allowed and decision.grant_id is None:
        prohibited = aup_terms(terms.aup).prohibited
        excepted = [g for u in profile.intended_uses if u in prohibited
                    if (g := _exception(profile, variant, grants, now, u)) is not None]
        if excepted:
            decision = replace(decision, grant_id=excepted[0].id,
                               message=f"{variant.name}: every license gate passed; the uses "
                                       f"{', '.join(sorted(set(profile.intended_uses) & prohibited))} under "
                                       f"the exception of grant {excepted[0].id}")
    return decision


def validate_uses(uses: Iterable[str]) -> tuple[str, ...]:
    """Check intended-use ids a profile is about to declare; unknown ids raise AcceptableUseError.

    Known ids are the allowed uses and prohibited categories of every shipped AUP. A prohibited id
    is accepted here on purpose: the profile records it truthfully and :func:`check` refuses it.
    """
    uses = tuple(uses)
    known = set().union(*(aup.known_uses for aup in load_aups().values()))
    unknown = [u for u in uses if u not in known]
    if unknown:
        error = AcceptableUseError(f"unknown intended use {unknown[0]!r}",
                                   hint=f"use one of: {', '.join(known_uses())}")
        error.code = "unknown_use"
        raise error
    return uses
