"""Enterprise license requests over HTTP: users submit and follow them, operators decide.

User routes (``/api/enterprise``, a user's token) submit, list and withdraw the caller's own
requests. Admin routes (``/api/admin/enterprise``, the admin token) list every request and
approve (creating the grant, returned with its signed document) or deny it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import Field

from llamahub.hub import enterprise
from llamahub.hub import models as m
from llamahub.hub.deps import Ctx, User, require_admin
from llamahub.hub.fields import Ident, IdPath, Input, Note, PositiveMau, When
from llamahub.hub.routes_admin import check_families, grant_document, grant_window

router = APIRouter(prefix="/api/enterprise", tags=["enterprise"], responses=m.ERRORS)
admin = APIRouter(prefix="/api/admin/enterprise", tags=["admin"], dependencies=[Depends(require_admin)],
                  responses=m.ERRORS)


class RequestBody(Input):
    families: list[Ident] = Field(min_length=1, max_length=16, description="e.g. llama-2, llama-3.1")
    mau: PositiveMau = Field(description="monthly active users the grant must cover")
    note: Note = Field("", description="what the models are for, for the reviewer")


class ApproveBody(Input):
    max_mau: PositiveMau | None = Field(None, description="default: the MAU the request asked for")
    not_before: When | None = Field(None, description="default: now")
    expires: When | None = Field(None, description="default: never")
    note: Note = ""


class DenyBody(Input):
    reason: Note = Field(min_length=1, description="shown to the requester")


@router.post("/requests", status_code=201, response_model=m.RequestOut)
def submit_request(body: RequestBody, ctx: Ctx, user: User) -> dict[str, Any]:
    """Ask for an enterprise grant above the license's MAU threshold; an operator reviews it."""
    check_families(ctx, body.families)
    return {"request": enterprise.submit(ctx.store, user, body.families, body.mau, body.note.strip())}


@router.get("/requests", response_model=m.RequestsOut)
def my_requests(ctx: Ctx, user: User) -> dict[str, Any]:
    return {"requests": enterprise.listing(ctx.store, user_id=user["id"])}


@router.post("/requests/{request_id}/withdraw", response_model=m.RequestOut)
def withdraw_request(request_id: IdPath, ctx: Ctx, user: User) -> dict[str, Any]:
    return {"request": enterprise.withdraw(ctx.store, request_id, user)}


@admin.get("/requests", response_model=m.RequestsOut)
def all_requests(ctx: Ctx, status: str | None = Query(None, pattern="^(pending|approved|denied|withdrawn)$")
                 ) -> dict[str, Any]:
    return {"requests": enterprise.listing(ctx.store, status=status)}


@admin.post("/requests/{request_id}/approve", response_model=m.ApprovedOut)
def approve_request(request_id: IdPath, body: ApproveBody, ctx: Ctx) -> dict[str, Any]:
    """Approve a pending request: its organisation gets a grant for the families it asked for."""
    not_before, expires = grant_window(ctx, body.not_before, body.expires)
    decided = enterprise.approve(ctx.store, request_id, max_mau=body.max_mau, not_before=not_before,
                                 expires=expires, note=body.note.strip())
    return {"request": decided, "document": grant_document(ctx, decided["grant"])}


@admin.post("/requests/{request_id}/deny", response_model=m.RequestOut)
def deny_request(request_id: IdPath, body: DenyBody, ctx: Ctx) -> dict[str, Any]:
    return {"request": enterprise.deny(ctx.store, request_id, reason=body.reason.strip())}
