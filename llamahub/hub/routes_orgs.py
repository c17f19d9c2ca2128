"""Organisations over HTTP: records, memberships, invitations; named operators.

Operators (``/api/admin/...``, an admin token) create organisations (verified), verify those
their first user made, approve members, and create other named operators. An organisation's
admin (a user, ``/api/organisations/...``) approves members and issues invitations; any user
sees their own membership at ``GET /api/organisation``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import Field

from llamahub.hub import models as m
from llamahub.hub.deps import Actor, Ctx, User, require_admin
from llamahub.hub.fields import IdPath, Input, Name

router = APIRouter(prefix="/api", tags=["organisations"], responses=m.ERRORS)
admin = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                  responses=m.ERRORS)


class OrgBody(Input):
    name: Name


class OperatorBody(Input):
    name: Name
    email: str | None = Field(None, max_length=320)


class InviteBody(Input):
    email: str = Field(min_length=3, max_length=320)


@admin.post("/organisations", status_code=201)
def create_org(body: OrgBody, ctx: Ctx, actor: Actor) -> dict[str, Any]:
    """An organisation record made by an operator: verified at once."""
    return {"organisation": ctx.store.create_org(body.name, by=actor, verified=True)}


@admin.get("/organisations")
def list_orgs(ctx: Ctx) -> dict[str, Any]:
    return {"organisations": ctx.store.organisations()}


@admin.post("/organisations/{org_id}/verify")
def verify_org(org_id: IdPath, ctx: Ctx, actor: Actor) -> dict[str, Any]:
    return {"organisation": ctx.store.verify_org(org_id, by=actor)}


@admin.get("/organisations/{org_id}/members")
def org_members(org_id: IdPath, ctx: Ctx) -> dict[str, Any]:
    ctx.store.get_org(org_id)
    return {"members": ctx.store.members(org_id)}


@admin.post("/organisations/{org_id}/members/{user_id}/approve")
def operator_approves(org_id: IdPath, user_id: IdPath, ctx: Ctx, actor: Actor) -> dict[str, Any]:
    return {"membership": ctx.store.approve_member(org_id, user_id, by=actor)}


@admin.post("/operators", status_code=201)
def create_operator(body: OperatorBody, ctx: Ctx, actor: Actor) -> dict[str, Any]:
    """A named operator account; its admin token is returned once."""
    operator, token = ctx.store.create_operator(body.name, body.email, by=actor)
    return {"operator": operator, "token": token}


@router.get("/organisation")
def my_org(user: User, ctx: Ctx) -> dict[str, Any]:
    """Your membership: the organisation record, your role, and whether it is active or pending."""
    member = ctx.store.membership(user["id"])
    return {"membership": member, "organisation": ctx.store.get_org(member["org_id"]) if member else None}


@router.get("/organisations/{org_id}/members")
def members_for_admin(org_id: IdPath, user: User, ctx: Ctx) -> dict[str, Any]:
    ctx.store.require_org_admin(user["id"], org_id)
    return {"members": ctx.store.members(org_id)}


@router.post("/organisations/{org_id}/members/{user_id}/approve")
def admin_approves(org_id: IdPath, user_id: IdPath, user: User, ctx: Ctx) -> dict[str, Any]:
    """The organisation's admin approves someone who asked to join."""
    ctx.store.require_org_admin(user["id"], org_id)
    return {"membership": ctx.store.approve_member(org_id, user_id, by=f"user:{user['id']}")}


@router.post("/organisations/{org_id}/invitations", status_code=201)
def invite(org_id: IdPath, body: InviteBody, user: User, ctx: Ctx) -> dict[str, Any]:
    """An invitation for one email address; registering with it joins the organisation at once."""
    ctx.store.require_org_admin(user["id"], org_id)
    token = ctx.store.invite(org_id, body.email, by=f"user:{user['id']}")
    return {"invitation": token, "email": body.email.strip().lower(),
            "note": "give it to the invitee: POST /api/users with \"invitation\" joins them"}
