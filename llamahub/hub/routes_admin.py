"""Admin routes (``Authorization: Bearer <admin token>``): enterprise grants, signing keys, audit log.

An administrator creates a grant directly here, or approves an organisation's request
(routes_enterprise.py). Grants are returned with an Ed25519-signed document the organisation can
verify.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import Field, model_validator

from llamahub import crypto
from llamahub.hub import models as m
from llamahub.hub.accounts import to_grant
from llamahub.hub.context import HubContext
from llamahub.hub.deps import Actor, Ctx, require_admin
from llamahub.hub.errors import BadRequestError
from llamahub.hub.fields import (
    MAX_ID,
    MAX_NAME,
    MAX_ROW_ID,
    Ident,
    IdPath,
    Input,
    Name,
    Note,
    PositiveMau,
    When,
)
from llamahub.policy import load_aups

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=m.ERRORS)


class GrantBody(Input):
    organisation_id: Ident | None = Field(None, description="the organisation record (GET "
                                                            "/api/admin/organisations)")
    organisation: Name | None = Field(None, description="or its name: the record of that name, made "
                                                        "(verified) if none exists")
    families: list[Ident] = Field(min_length=1, max_length=16)
    variants: list[Ident] = Field(default_factory=list, max_length=64,
                                  description="only these variants of the families (default: all)")
    uses: list[Ident] = Field(default_factory=list, max_length=32,
                              description="AUP categories the grant permits by exception (research, "
                                          "public interest: the case-by-case license)")
    max_mau: PositiveMau | None = Field(None, description="the most monthly active users it covers")
    not_before: When | None = Field(None, description="default: now")
    expires: When | None = Field(None, description="default: never")
    note: Note = ""

    @model_validator(mode="after")
    def _one_org(self) -> GrantBody:
        if (self.organisation_id is None) == (self.organisation is None):
            raise ValueError("give exactly one of organisation_id or organisation")
        return self


def _aware(value: dt.datetime | None, what: str) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        raise BadRequestError(f"{what} needs a timezone", code="invalid_request",
                              hint="write times like 2026-12-01T00:00:00Z")
    return value


def grant_window(ctx: HubContext, not_before: dt.datetime | None, expires: dt.datetime | None
                 ) -> tuple[str, str | None]:
    """(not_before, expires) of a new grant as ISO strings: now and never by default."""
    start = _aware(not_before, "not_before") or ctx.now()
    end = _aware(expires, "expires")
    if end is not None and end <= start:
        raise BadRequestError("the grant would expire before it starts", code="invalid_request",
                              hint="set expires after not_before")
    return start.isoformat(), end.isoformat() if end else None


def check_families(ctx: HubContext, families: list[str]) -> None:
    known = {v.family for v in ctx.registry}
    unknown = sorted(set(families) - known)
    if unknown:
        raise BadRequestError(f"unknown families {unknown}", code="unknown_family",
                              hint=f"known families: {', '.join(sorted(known))}")


def grant_document(ctx: HubContext, grant: dict[str, Any]) -> dict[str, Any]:
    """The grant signed with the hub's current key, for the organisation to keep and verify."""
    to_grant(grant)  # the policy's own validation of the record
    _, key = ctx.keys.signing_key()
    return crypto.sign_document({"type": "llamahub.enterprise_grant", "v": 1, **grant}, key)


def check_scope(ctx: HubContext, families: list[str], variants: list[str], uses: list[str]) -> None:
    """Families, variants and AUP categories of a grant's scope must exist (400 otherwise)."""
    check_families(ctx, families)
    for name in variants:
        if ctx.registry.resolve(name).family not in families:
            raise BadRequestError(f"{name} is not in the families {families}", code="invalid_scope",
                                  hint="name variants of the granted families only")
    prohibited = set().union(*(a.prohibited for a in load_aups().values()))
    unknown = sorted(set(uses) - prohibited)
    if unknown:
        raise BadRequestError(f"{unknown} are not prohibited categories of any acceptable use policy",
                              code="invalid_scope", hint="a grant's uses lift AUP prohibitions; allowed uses "
                                                         "need no grant (GET /api/licenses)")


def grant_org(ctx: HubContext, body: GrantBody, actor: str) -> str:
    if body.organisation_id is not None:
        return str(ctx.store.get_org(body.organisation_id)["id"])
    org = ctx.store.org_named(str(body.organisation))
    return str((org or ctx.store.create_org(str(body.organisation), by=actor, verified=True))["id"])


@router.post("/grants", status_code=201, response_model=m.GrantOut)
def create_grant(body: GrantBody, ctx: Ctx, actor: Actor) -> dict[str, Any]:
    """Grant an organisation record use above the MAU threshold, or an exception to the AUP, within
    a scope (families or variants, MAU cap, permitted categories, not-before and expiry)."""
    check_scope(ctx, body.families, body.variants, body.uses)
    not_before, expires = grant_window(ctx, body.not_before, body.expires)
    row = ctx.store.create_grant(grant_org(ctx, body, actor), body.families, body.max_mau, not_before,
                                 expires, actor, variants=body.variants, uses=body.uses,
                                 note=body.note.strip())
    return {"grant": row, "document": grant_document(ctx, row)}


@router.get("/grants", response_model=m.GrantsOut)
def list_grants(ctx: Ctx, organisation: Annotated[str | None, Query(max_length=MAX_NAME)] = None
                ) -> dict[str, Any]:
    """Every grant, or those of the organisation record of that name (or id)."""
    if organisation is None:
        return {"grants": ctx.store.grants()}
    org = ctx.store.org_named(organisation) or {"id": organisation}
    return {"grants": ctx.store.grants(org["id"])}


@router.post("/grants/{grant_id}/revoke", response_model=m.GrantOut)
def revoke_grant(grant_id: IdPath, ctx: Ctx, actor: Actor) -> dict[str, Any]:
    row = ctx.store.revoke_grant(grant_id, actor)
    _, key = ctx.keys.signing_key()
    return {"grant": row, "document": crypto.sign_document({"type": "llamahub.grant_revocation", "v": 1,
                                                            "grant_id": row["id"],
                                                            "revoked_at": row["revoked_at"]}, key)}


@router.post("/keys/rotate", status_code=201, response_model=m.KeyRingOut)
def rotate_key(ctx: Ctx, actor: Actor) -> dict[str, Any]:
    """A new signing key signs from now on; older keys keep verifying until revoked."""
    kid = ctx.keys.create(actor)
    return {"active": kid, "keys": ctx.keys.published()}


@router.post("/keys/{kid}/revoke", response_model=m.RevokedKeyOut)
def revoke_key(kid: IdPath, ctx: Ctx, actor: Actor) -> dict[str, Any]:
    """Revoke a key: every link and document it signed stops verifying."""
    active = ctx.keys.revoke(kid, actor)
    return {"revoked": kid, "active": active, "keys": ctx.keys.published()}


@router.get("/audit", response_model=m.AuditOut)
def audit_log(ctx: Ctx, after: int = Query(0, ge=0, le=MAX_ROW_ID), limit: int = Query(100, ge=1, le=1000),
              action: str | None = Query(None, max_length=MAX_ID)) -> dict[str, Any]:
    """The append-only audit log, oldest first, ``limit`` rows after id ``after``; ``action`` keeps
    the actions starting with it (``grant.`` or ``link.create``)."""
    return {"entries": ctx.store.audit_log(after=after, limit=limit, action=action)}
