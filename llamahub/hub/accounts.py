"""Account data as the policy gates and the license routes see it.

``gate_profile`` and ``gate_grants`` turn store rows into :class:`llamahub.policy.Profile` and
:class:`llamahub.policy.Grant`; ``license_text`` is the exact text a user is shown before
accepting (the imported LICENSE of that license version if the hub has one, else a rendering of
the registry's summary) whose sha256 an acceptance records.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from llamahub.hub.context import HubContext
from llamahub.policy import Grant, LicenseTerms, Profile
from llamahub.policy.terms import render_terms


def active_org(ctx: HubContext, user: dict[str, Any]) -> str | None:
    """The id of the organisation record the user is an active member of (None while pending)."""
    member = ctx.store.membership(user["id"])
    return member["org_id"] if member and member["status"] == "active" else None


def gate_profile(ctx: HubContext, user: dict[str, Any]) -> Profile:
    profile = ctx.store.get_profile(user["id"])
    accepted = {lid: row["accepted_at"] for lid, row in ctx.store.acceptances(user["id"]).items()}
    return Profile(organisation=user["organisation"], organisation_id=active_org(ctx, user),
                   mau=profile["mau"],
                   intended_uses=tuple(profile["intended_uses"]), accepted=accepted,
                   country=user["country"], eu_domiciled=profile["eu_domiciled"],
                   certifications=tuple(profile["certifications"]), mau_at=profile["mau_at"])


def _when(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def to_grant(row: dict[str, Any]) -> Grant:
    not_before = _when(row["not_before"])
    assert not_before is not None
    return Grant(id=row["id"], organisation=row["organisation"], families=tuple(row["families"]),
                 max_mau=row["max_mau"], not_before=not_before, expires=_when(row["expires"]),
                 revoked=row["revoked_at"] is not None, organisation_id=row["org_id"],
                 variants=tuple(row["variants"]), uses=tuple(row["uses"]))


def gate_grants(ctx: HubContext, user: dict[str, Any]) -> list[Grant]:
    """The grants of the user's organisation record (none while the membership is pending)."""
    org_id = active_org(ctx, user)
    return [to_grant(row) for row in ctx.store.grants(org_id)] if org_id else []


def license_text(ctx: HubContext, terms: LicenseTerms) -> tuple[bytes, str]:
    """(text, source) shown for ``terms``: source is ``"imported"`` or ``"registry"``."""
    row = ctx.store.license_file(terms.id)
    if row is not None:
        return ctx.blobs.read_bytes(row["sha256"]), "imported"
    return render_terms(terms).encode("utf-8"), "registry"


def text_sha256(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()
