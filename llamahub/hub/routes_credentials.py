"""What a client keeps to decide offline as the hub would, all signed by the hub.

``GET /api/credentials`` (a user's token) returns the user's profile as the hub holds it (with
the organisation record's id), the signed documents of that organisation's grants, and the
signed revocation list; ``GET /api/revocations`` is the revocation list alone (public). The
client verifies all of it with the hub keys it pinned, stores it, and runs the offline gates on
it: editing the local profile changes nothing the hub signed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from llamahub import crypto
from llamahub.hub import models as m
from llamahub.hub.accounts import active_org
from llamahub.hub.context import HubContext
from llamahub.hub.deps import Ctx, User, hub_url
from llamahub.hub.routes_admin import grant_document

router = APIRouter(prefix="/api", tags=["accounts"], responses=m.ERRORS)
PROFILE_TYPE = "llamahub.signed_profile"
REVOCATIONS_TYPE = "llamahub.grant_revocations"


def revocation_list(ctx: HubContext, request: Request) -> dict[str, Any]:
    _, key = ctx.keys.signing_key()
    payload = {"type": REVOCATIONS_TYPE, "v": 1, "hub": hub_url(request, ctx),
               "issued_at": ctx.now().isoformat(), "revoked": ctx.store.revoked_grants()}
    return crypto.sign_document(payload, key)


@router.get("/revocations")
def revocations(request: Request, ctx: Ctx) -> dict[str, Any]:
    """Every revoked grant id with the time it was revoked, signed by the hub."""
    return {"revocations": revocation_list(ctx, request)}


@router.get("/credentials")
def credentials(request: Request, user: User, ctx: Ctx) -> dict[str, Any]:
    """Your profile as the hub holds it, your organisation's grants and the revocation list, signed."""
    profile = ctx.store.get_profile(user["id"])
    org_id = active_org(ctx, user)
    declared = {k: profile[k] for k in ("mau", "mau_at", "intended_uses", "certifications", "eu_domiciled")}
    payload = {"type": PROFILE_TYPE, "v": 1, "hub": hub_url(request, ctx), "user_id": user["id"],
               "issued_at": ctx.now().isoformat(), "organisation": user["organisation"],
               "organisation_id": org_id, "country": user["country"], **declared}
    _, key = ctx.keys.signing_key()
    grants = [grant_document(ctx, g) for g in ctx.store.grants(org_id)] if org_id else []
    return {"profile": crypto.sign_document(payload, key), "grants": grants,
            "revocations": revocation_list(ctx, request)}
