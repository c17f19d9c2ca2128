"""License policy: license terms and acceptable use policies as data, and the pure gates over them."""

from llamahub.policy.gates import CODES, Decision, Grant, Profile, VariantLike, check, validate_uses
from llamahub.policy.rules import QUESTIONS, Ruling
from llamahub.policy.terms import (
    AUP_GROUPS,
    Aup,
    AupCategory,
    LicenseTerms,
    aup_terms,
    known_uses,
    license_for_family,
    license_terms,
    load_aups,
    load_licenses,
)

__all__ = [
    "AUP_GROUPS",
    "CODES",
    "QUESTIONS",
    "Aup",
    "AupCategory",
    "Decision",
    "Grant",
    "LicenseTerms",
    "Profile",
    "Ruling",
    "VariantLike",
    "aup_terms",
    "check",
    "known_uses",
    "license_for_family",
    "license_terms",
    "load_aups",
    "load_licenses",
    "validate_uses",
]
