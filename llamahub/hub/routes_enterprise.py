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
from llamahub.hub.deps import Actor, Ctx, User, require_admin
from llamahub.hub.fields import Ident, IdPath, Input, Note, PositiveMau, When
from llamahub.hub.routes_admin import check_scope, grant_document, grant_window

router = APIRouter(prefix="/api/enterprise", tags=["enterprise"], responses=m.ERRORS)
admin = APIRouter(prefix="/api/admin/enterprise", tags=["admin"], dependencies=[Depends(require_admin)],
                  responses=m.ERRORS)


class RequestBody(Input):
    families: list[Ident] = Field(min_length=1, max_length=16, description="e.g. llama-2, llama-3.1")
    mau: PositiveMau = Field(description="monthly active users the grant must cover")
    note: Note = Field("", description="what the models are for, for the reviewer")
    uses: list[Ident] = Field(default_factory=list, max_length=32,
                              description="prohibited or unclear AUP categories to be allowed by exception")
    variants: list[Ident] = Field(default_factory=list, max_length=64, description="only these variants")


class AnswerBody(Input):
    answer: Note = Field(min_length=1, description="the information the reviewer asked for")


class InfoBody(Input):
    question: Note = Field(min_length=1, description="what the reviewer needs to know (shown to the "
                                                     "requester)")


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
    check_scope(ctx, body.families, body.variants, body.uses)
    return {"request": enterprise.submit(ctx.store, user, body.families, body.mau, body.note.strip(),
                                         uses=body.uses, variants=body.variants)}


@router.get("/requests", response_model=m.RequestsOut)
def my_requests(ctx: Ctx, user: User) -> dict[str, Any]:
    return {"requests": enterprise.listing(ctx.store, user_id=user["id"])}


@router.post("/requests/{request_id}/withdraw", response_model=m.RequestOut)
def withdraw_request(request_id: IdPath, ctx: Ctx, user: User) -> dict[str, Any]:
    return {"request": enterprise.withdraw(ctx.store, request_id, user)}


@router.post("/requests/{request_id}/answer", response_model=m.RequestOut)
def answer_request(request_id: IdPath, body: AnswerBody, ctx: Ctx, user: User) -> dict[str, Any]:
    """Answer the reviewer's question (status needs_info); the request goes back to review."""
    return {"request": enterprise.answer(ctx.store, request_id, user, body.answer.strip())}


@admin.post("/requests/{request_id}/needs-info", response_model=m.RequestOut)
def ask_for_info(request_id: IdPath, body: InfoBody, ctx: Ctx, actor: Actor) -> dict[str, Any]:
    """Ask the requester for more information before deciding."""
    asked = enterprise.ask_info(ctx.store, request_id, question=body.question.strip(), actor=actor)
    return {"request": asked}


@admin.get("/requests", response_model=m.RequestsOut)
def all_requests(ctx: Ctx, status: str | None = Query(
        None, pattern="^(pending|needs_info|approved|denied|withdrawn)$")) -> dict[str, Any]:
    return {"requests": enterprise.listing(ctx.store, status=status)}


@admin.post("/requests/{request_id}/approve", response_model=m.ApprovedOut)
def approve_request(request_id: IdPath, body: ApproveBody, ctx: Ctx, actor: Actor) -> dict[str, Any]:
    """Approve a pending request: its organisation gets a grant for the families it asked for."""
    not_before, expires = grant_window(ctx, body.not_before, body.expires)
    decided = enterprise.approve(ctx.store, request_id, max_mau=body.max_mau, not_before=not_before,
                                 expires=expires, note=body.note.strip(), actor=actor)
    return {"request": decided, "document": grant_document(ctx, decided["grant"])}


@admin.post("/requests/{request_id}/deny", response_model=m.RequestOut)
def deny_request(request_id: IdPath, body: DenyBody, ctx: Ctx, actor: Actor) -> dict[str, Any]:
    return {"request": enterprise.deny(ctx.store, request_id, reason=body.reason.strip(), actor=actor)}
