"""The license gates as a decision table: acceptance per version, intended uses, MAU and grants.

Variants are real ones resolved from the shipped registry; ``now`` is fixed, never read from a clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import replace
from types import SimpleNamespace

import pytest

from llamahub.errors import (
    AcceptableUseError,
    ConfigError,
    LicenseError,
    LicenseNotAcceptedError,
    MauLimitError,
)
from llamahub.policy import Decision, Grant, Profile, aup_terms, check, license_terms, validate_uses
from llamahub.registry import Variant, _builtin

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
THRESHOLD = 700_000_000
ORG = "Acme Corp"
ALL_LICENSES = ("llama2", "llama3", "llama3.1", "llama3.2", "llama-debug", "llama1", "llama3.3")
ACCEPTED_AT = "2026-11-01T09:00:00+00:00"
# family -> a real variant of it
FAMILIES = {
    "llama-2": "llama-2-7b-chat",
    "llama-3": "llama-3-8b-instruct",
    "llama-3.1": "llama-3.1-8b-instruct",
    "llama-3.2": "llama-3.2-1b-instruct",
    "llama-debug": "llama-debug-2",
}


def variant(name: str) -> Variant:
    return _builtin().resolve(name)


def profile(mau: int | None = 1_000, uses: Sequence[str] = ("chatbot",),
            accepted: Sequence[str] = ALL_LICENSES, **extra: object) -> Profile:
    return Profile(organisation=ORG, mau=mau, intended_uses=tuple(uses),
                   accepted={license_id: ACCEPTED_AT for license_id in accepted}, **extra)


def grant(family: str, **changes: object) -> Grant:
    base = Grant(id="g-1", organisation=ORG, families=(family,), max_mau=None,
                 not_before=NOW - 30 * DAY, expires=NOW + 335 * DAY, revoked=False)
    return replace(base, **changes)


def other_family(family: str) -> str:
    return next(f for f in FAMILIES if f != family)


# --- gate 3: MAU and grants ------------------------------------------------------------------------

GrantsFor = Callable[[str], list[Grant]]
MAU_CASES: list[tuple[str, int, GrantsFor, str, str | None]] = [
    ("under", 1_000_000, lambda f: [], "ok", None),
    ("zero", 0, lambda f: [], "ok", None),
    ("exactly_at_threshold", THRESHOLD, lambda f: [], "ok", None),
    ("one_over", THRESHOLD + 1, lambda f: [], "mau_over_threshold", None),
    ("far_over", 3_000_000_000, lambda f: [], "mau_over_threshold", None),
    ("under_with_grant_unused", 5, lambda f: [grant(f)], "ok", None),
    ("over_with_grant", THRESHOLD + 1, lambda f: [grant(f)], "ok", "g-1"),
    ("over_with_grant_many_families", 10**9,
     lambda f: [grant(f, families=(other_family(f), f))], "ok", "g-1"),
    ("org_matched_case_insensitively", 10**9,
     lambda f: [grant(f, organisation="  acme corp ")], "ok", "g-1"),
    ("grant_for_another_family", 10**9,
     lambda f: [grant(other_family(f))], "mau_over_threshold", None),
    ("grant_for_another_org", 10**9,
     lambda f: [grant(f, organisation="Globex")], "mau_over_threshold", None),
    ("revoked_grant", 10**9, lambda f: [grant(f, revoked=True)], "grant_revoked", None),
    ("expired_grant", 10**9,
     lambda f: [grant(f, not_before=NOW - 400 * DAY, expires=NOW - DAY)], "grant_expired", None),
    ("grant_expiring_exactly_now", 10**9, lambda f: [grant(f, expires=NOW)], "grant_expired", None),
    ("grant_not_yet_valid", 10**9, lambda f: [grant(f, not_before=NOW + DAY)], "grant_not_yet_valid", None),
    ("grant_starting_exactly_now", 10**9, lambda f: [grant(f, not_before=NOW)], "ok", "g-1"),
    ("grant_without_expiry", 10**9, lambda f: [grant(f, expires=None)], "ok", "g-1"),
    ("grant_max_mau_below_declared", 10**9,
     lambda f: [grant(f, max_mau=800_000_000)], "grant_mau_exceeded", None),
    ("grant_max_mau_equal_declared", 10**9, lambda f: [grant(f, max_mau=10**9)], "ok", "g-1"),
    ("expired_then_valid", 10**9,
     lambda f: [grant(f, id="old", expires=NOW - DAY, not_before=NOW - 99 * DAY), grant(f, id="new")],
     "ok", "new"),
    ("revoked_and_expired_reports_expired", 10**9,
     lambda f: [grant(f, id="a", revoked=True),
                grant(f, id="b", not_before=NOW - 9 * DAY, expires=NOW - DAY)],
     "grant_expired", None),
    ("revoked_and_too_small_reports_size", 10**9,
     lambda f: [grant(f, id="a", revoked=True), grant(f, id="b", max_mau=THRESHOLD)],
     "grant_mau_exceeded", None),
]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize(("case", "mau", "grants_for", "code", "grant_id"), MAU_CASES,
                         ids=[c[0] for c in MAU_CASES])
def test_mau_gate(family: str, case: str, mau: int, grants_for: GrantsFor, code: str,
                  grant_id: str | None) -> None:
    decision = check(profile(mau=mau), variant(FAMILIES[family]), grants_for(family), NOW)
    assert decision.code == code, decision.message
    assert decision.allowed is (code == "ok")
    assert decision.grant_id == grant_id
    if not decision.allowed:
        assert decision.hint is not None and "`llamahub enterprise request" in decision.hint
        assert f"--family {family}" in decision.hint and f"--mau {mau}" in decision.hint


def test_mau_refusal_message_names_the_numbers() -> None:
    decision = check(profile(mau=THRESHOLD + 1), variant("llama-3.1-8b"), [], NOW)
    assert "700,000,001" in decision.message and "700,000,000" in decision.message
    assert "2024-07-23" in decision.message
    assert decision.hint and decision.hint.startswith(
        "run `llamahub enterprise request --family llama-3.1 --mau 700000001`")
    assert "--mau-at llama3.1=N" in decision.hint


def test_grants_accept_any_iterable() -> None:
    decision = check(profile(mau=10**9), variant("llama-2-7b"), (g for g in [grant("llama-2")]), NOW)
    assert decision.allowed and decision.grant_id == "g-1"


# --- gate 1: license versions accepted separately ------------------------------------------------


@pytest.mark.parametrize(("accepted", "name", "allowed"), [
    (("llama2",), "llama-2-7b", True),
    (("llama2",), "llama-3-8b", False),
    (("llama2",), "llama-3.1-8b", False),
    (("llama2",), "llama-3.2-1b", False),
    (("llama3",), "llama-3-8b", True),
    (("llama3",), "llama-3.1-8b", False),
    (("llama3.1",), "llama-3.2-1b", False),
    (("llama3.1",), "llama-3.1-405b-instruct", True),
    (("llama3.2",), "llama-3.2-3b", True),
    (ALL_LICENSES[:4], "llama-debug-2-chat", False),
    (("llama-debug",), "llama-debug-3.1", True),
    ((), "llama-2-7b", False),
])
def test_license_versions_accepted_separately(accepted: tuple[str, ...], name: str, allowed: bool) -> None:
    v = variant(name)
    decision = check(profile(accepted=accepted), v, [], NOW)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.code == "license_not_accepted"
        assert decision.hint is not None and f"`llamahub license accept {v.license}`" in decision.hint


def test_empty_acceptance_timestamp_does_not_count() -> None:
    p = Profile(organisation=ORG, mau=1, intended_uses=("chatbot",), accepted={"llama2": ""})
    assert check(p, variant("llama-2-7b"), [], NOW).code == "license_not_accepted"


def test_acceptance_is_checked_first() -> None:
    p = profile(mau=10**10, uses=("spam",), accepted=())
    assert check(p, variant("llama-3-8b"), [], NOW).code == "license_not_accepted"


# --- gate 2: intended uses --------------------------------------------------------------------------


def _categories(family: str) -> list[tuple[str, str]]:
    aup = aup_terms(license_terms(variant(FAMILIES[family]).license).aup)
    return [(family, c.id) for c in aup.categories]


@pytest.mark.parametrize(("family", "use"), [c for f in FAMILIES for c in _categories(f)])
def test_every_prohibited_category_is_refused(family: str, use: str) -> None:
    decision = check(profile(uses=("chatbot", use)), variant(FAMILIES[family]), [], NOW)
    assert decision.code == "prohibited_use"
    assert not decision.allowed
    assert repr(use) in decision.message
    hint = decision.hint or ""
    assert hint.startswith("declare only permitted uses: `llamahub profile set --use chatbot`")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_certifications_never_lift_critical_infrastructure(family: str) -> None:
    certified = profile(uses=("critical_infrastructure",),
                        certifications=("ISO 27001", "IEC 62443", "NERC CIP", "SOC 2"))
    decision = check(certified, variant(FAMILIES[family]), [grant(family)], NOW)
    assert decision.code == "prohibited_use"
    assert "IEC 62443" in decision.message and "do not lift" in decision.message
    assert ".;" not in decision.message  # "heavy machinery; certifications held ..."


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_allowed_use_passes(family: str) -> None:
    v = variant(FAMILIES[family])
    aup = aup_terms(license_terms(v.license).aup)
    for use in aup.allowed_uses:
        assert check(profile(uses=(use,)), v, [], NOW).allowed, use
    assert check(profile(uses=aup.allowed_uses), v, [], NOW).allowed


def test_unknown_use() -> None:
    decision = check(profile(uses=("chatbot", "world_domination")), variant("llama-3-8b"), [], NOW)
    assert decision.code == "unknown_use"
    assert "world_domination" in decision.message
    assert decision.hint is not None
    assert "`llamahub profile set --use chatbot`" in decision.hint
    assert "summarization" in decision.hint and "code_assistant" in decision.hint


def test_categories_new_in_32() -> None:
    for use in ("circumvent_safety_measures", "bio_chemical_weapons", "unlawful_third_party_tools"):
        assert check(profile(uses=(use,)), variant("llama-3.2-1b"), [], NOW).code == "prohibited_use"
        # the older policies do not name these ids: still refused, as unknown
        assert check(profile(uses=(use,)), variant("llama-2-7b"), [], NOW).code == "unknown_use"


def test_no_declared_use_is_refused() -> None:
    decision = check(profile(uses=()), variant("llama-3.1-8b"), [], NOW)
    assert decision.code == "no_intended_use"
    assert decision.hint is not None and "`llamahub profile set --use <id>`" in decision.hint


def test_prohibited_use_is_reported_before_mau() -> None:
    decision = check(profile(mau=10**10, uses=("weapons",)), variant("llama-2-70b"), [], NOW)
    assert decision.code == "prohibited_use"


def test_validate_uses() -> None:
    assert validate_uses(["chatbot", "research"]) == ("chatbot", "research")
    assert validate_uses(["critical_infrastructure"]) == ("critical_infrastructure",)
    with pytest.raises(AcceptableUseError) as err:
        validate_uses(["chatbot", "mind_reading"])
    assert err.value.code == "unknown_use"
    assert "chatbot" in (err.value.hint or "") and "translation" in (err.value.hint or "")


# --- the Llama 3.2 EU rule for multimodal models ----------------------------------------------------


def test_eu_rule_spares_text_models() -> None:
    eu = profile(eu_domiciled=True, country="DE")
    for name in ("llama-3.2-1b", "llama-3.2-3b-instruct", "llama-3.1-8b"):
        assert check(eu, variant(name), [], NOW).allowed


def test_eu_rule_refuses_multimodal_models_to_eu_organisations() -> None:
    vision = replace(variant("llama-3.2-1b-instruct"), name="llama-3.2-11b-vision-instruct")
    decision = check(profile(eu_domiciled=True), vision, [], NOW)
    assert decision.code == "eu_multimodal_restricted"
    assert decision.hint is not None and "`llamahub list`" in decision.hint
    assert check(profile(eu_domiciled=False), vision, [], NOW).allowed


# --- Decision.raise_if_denied ------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "error"), [
    (lambda: check(profile(accepted=("llama2",)), variant("llama-3-8b"), [], NOW), LicenseNotAcceptedError),
    (lambda: check(profile(mau=10**9), variant("llama-2-7b"), [], NOW), MauLimitError),
    (lambda: check(profile(mau=10**9), variant("llama-2-7b"), [grant("llama-2", expires=NOW)], NOW),
     MauLimitError),
    (lambda: check(profile(uses=("critical_infrastructure",)), variant("llama-3.1-8b"), [], NOW),
     AcceptableUseError),
    (lambda: check(profile(uses=("nope",)), variant("llama-3.1-8b"), [], NOW), AcceptableUseError),
    (lambda: check(profile(eu_domiciled=True),
                   replace(variant("llama-3.2-1b"), name="llama-3.2-90b-vision"), [], NOW), LicenseError),
])
def test_raise_if_denied(make: Callable[[], Decision], error: type[LicenseError]) -> None:
    decision = make()
    assert not decision.allowed
    with pytest.raises(error) as err:
        decision.raise_if_denied()
    assert isinstance(err.value, LicenseError)
    assert err.value.code == decision.code
    assert err.value.message == decision.message
    assert err.value.hint == decision.hint
    assert "`llamahub " in (err.value.hint or "")
    assert "next: " in str(err.value)


def test_allowed_decision_does_not_raise() -> None:
    decision = check(profile(), variant("llama-2-7b"), [], NOW)
    assert decision == Decision(allowed=True, code="ok", message=decision.message)
    decision.raise_if_denied()
    assert decision.as_dict()["allowed"] is True


# --- purity and inputs -------------------------------------------------------------------------------


def test_only_name_family_and_license_are_read() -> None:
    plain = SimpleNamespace(name="my-llama", family="llama-3.1", license="llama3.1")
    assert check(profile(), plain, [], NOW).allowed


def test_same_inputs_same_decision() -> None:
    args = (profile(mau=10**9), variant("llama-3-70b"), [grant("llama-3")], NOW)
    assert check(*args) == check(*args)


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        check(profile(), variant("llama-2-7b"), [], NOW.replace(tzinfo=None))


def test_grant_and_profile_validation() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        grant("llama-2", not_before=NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="expires before"):
        grant("llama-2", expires=NOW - 60 * DAY)
    with pytest.raises(ValueError, match="max_mau"):
        grant("llama-2", max_mau=0)
    with pytest.raises(ConfigError):
        profile(mau=-1)


def test_profile_is_immutable_and_copies_accepted() -> None:
    accepted = {"llama2": ACCEPTED_AT}
    p = Profile(organisation=ORG, mau=1, intended_uses=["chatbot"],
                accepted=accepted)
    accepted.clear()
    assert p.has_accepted("llama2")
    assert p.intended_uses == ("chatbot",)
    with pytest.raises(TypeError):
        p.accepted["llama3"] = ACCEPTED_AT  # type: ignore[index]
    assert hash(p) == hash(Profile(organisation=ORG, mau=1, intended_uses=("chatbot",),
                                   accepted={"llama2": ACCEPTED_AT}))


# --- MAU as each license version counts it ------------------------------------------------------


@pytest.mark.parametrize(("name", "allowed"), [("llama-2-7b", True), ("llama-3.1-8b", False)])
def test_dated_mau_500m_then_800m_now(name: str, allowed: bool) -> None:
    p = profile(mau=800_000_000, mau_at={"llama2": 500_000_000})
    decision = check(p, variant(name), [], NOW)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.code == "mau_over_threshold" and "800,000,000" in decision.message


def test_a_dated_figure_over_the_threshold_is_refused_even_when_today_is_small() -> None:
    decision = check(profile(mau=10, mau_at={"llama2": 900_000_000}), variant("llama-2-7b"), [], NOW)
    assert decision.code == "mau_over_threshold" and "calendar month before 2023-07-18" in decision.message
    assert "--mau-at" not in (decision.hint or "")  # already dated: nothing more to declare


def test_undeclared_mau_is_not_zero() -> None:
    decision = check(profile(mau=None), variant("llama-3-8b"), [], NOW)
    assert decision.code == "mau_not_declared" and "2024-04-18" in decision.message
    assert "--mau-at llama3=N" in (decision.hint or "")
    with pytest.raises(MauLimitError):
        decision.raise_if_denied()
    assert check(profile(mau=None, mau_at={"llama3": 5}), variant("llama-3-8b"), [], NOW).allowed


# --- scoped grants: the case-by-case exception; Llama 1's research gate ------------------------------


def test_an_exception_grant_lifts_exactly_its_categories() -> None:
    exception = grant("llama-3", uses=("weapons",), variants=("llama-3-8b",))
    p = profile(uses=("research", "weapons"))
    allowed = check(p, variant("llama-3-8b"), [exception], NOW)
    assert allowed.allowed and allowed.grant_id == "g-1"
    assert check(p, variant("llama-3-70b"), [exception], NOW).code == "prohibited_use"  # another variant
    both = profile(uses=("research", "weapons", "spam"))
    assert check(both, variant("llama-3-8b"), [exception], NOW).code == "prohibited_use"
    late = NOW + 400 * DAY  # after the grant's expiry
    assert check(p, variant("llama-3-8b"), [exception], late).code == "prohibited_use"
    other_org = replace(exception, organisation="Someone else")
    assert check(p, variant("llama-3-8b"), [other_org], NOW).code == "prohibited_use"


def test_a_grant_of_an_organisation_record_matches_only_its_members() -> None:
    recorded = grant("llama-3", organisation_id="o_1")
    member = profile(mau=800_000_000, organisation_id="o_1")
    lookalike = profile(mau=800_000_000)  # same organisation name, no record id: a pending look-alike
    assert check(member, variant("llama-3-8b"), [recorded], NOW).allowed
    assert check(lookalike, variant("llama-3-8b"), [recorded], NOW).code == "mau_over_threshold"


def test_llama1_research_under_an_application() -> None:
    application = grant("llama-1")
    research = profile(uses=("research",))
    assert check(research, variant("llama-1-7b"), [application], NOW).allowed
    assert check(research, variant("llama-1-7b"), [], NOW).code == "application_required"
    capped = grant("llama-1", max_mau=1)  # an application names no real MAU: its cap does not apply
    assert check(research, variant("llama-1-7b"), [capped], NOW).allowed
    chatbot = profile(uses=("chatbot",))
    assert check(chatbot, variant("llama-1-7b"), [application], NOW).code == "research_only"
