"""Account routes: registration, the organisation profile, license texts and acceptances."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field, field_validator

from llamahub import crypto
from llamahub.hub import models as m
from llamahub.hub.accounts import license_text, text_sha256
from llamahub.hub.context import HubContext
from llamahub.hub.deps import Ctx, User, client_ip, hub_url
from llamahub.hub.errors import ConflictError, NotFoundError
from llamahub.hub.fields import Country, Ident, IdPath, Input, Mau, Name
from llamahub.policy import LicenseTerms, load_licenses, validate_uses

router = APIRouter(prefix="/api", tags=["accounts"], responses=m.ERRORS)
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


class RegisterBody(Input):
    email: str = Field(max_length=320)
    name: Name
    organisation: Name
    country: Country
    invitation: str | None = Field(None, max_length=128, description="an invitation from an organisation's "
                                                                    "admin: joins that organisation at once")

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not _EMAIL.match(value.strip()):
            raise ValueError("not an email address")
        return value.strip()

    @field_validator("name", "organisation")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


class ProfileBody(Input):
    mau: Mau | None = Field(None, description="monthly active users today; null: not declared")
    mau_at: dict[Ident, Mau] = Field(default_factory=dict, max_length=32,
                                     description="license id -> MAU over the calendar month before that "
                                                 "version's release date (what its MAU clause counts)")
    intended_uses: list[Ident] = Field(default_factory=list, max_length=64,
                                       description="use ids, see GET /api/licenses")
    certifications: list[Name] = Field(default_factory=list, max_length=32)
    eu_domiciled: bool = False


class ProfilePatch(Input):
    """Only the fields present change; ``mau_at`` entries are added to those declared before."""

    mau: Mau | None = None
    mau_at: dict[Ident, Mau] | None = Field(None, max_length=32)
    intended_uses: list[Ident] | None = Field(None, max_length=64)
    certifications: list[Name] | None = Field(None, max_length=32)
    eu_domiciled: bool | None = None


class AcceptBody(Input):
    text_sha256: str | None = Field(None, max_length=64,
                                    description="sha256 of the text you were shown; refused if the hub's "
                                                "text has changed since")


def _public_user(user: dict[str, Any]) -> dict[str, Any]:
    return {k: user[k] for k in ("id", "email", "name", "organisation", "country", "created_at")}


@router.post("/users", status_code=201, response_model=m.RegisteredOut)
def register(body: RegisterBody, request: Request, ctx: Ctx) -> dict[str, Any]:
    """Register; the API token is returned once and stored only as its sha256."""
    ctx.limiter.check("register", ip=client_ip(request))
    user, token = ctx.store.create_user(body.email, body.name, body.organisation, body.country,
                                        invitation=body.invitation)
    return {"user": _public_user(user), "token": token,
            "note": "store this token now: the hub keeps only its hash and cannot show it again"}


@router.get("/users/me", response_model=m.MeOut)
def me(user: User, ctx: Ctx) -> dict[str, Any]:
    return {"user": _public_user(user), "profile": ctx.store.get_profile(user["id"])}


@router.get("/profile", response_model=m.ProfileOut)
def get_profile(user: User, ctx: Ctx) -> dict[str, Any]:
    return {"organisation": user["organisation"], "country": user["country"],
            **ctx.store.get_profile(user["id"])}


def _as_of(mau_at: dict[str, int]) -> dict[str, str]:
    """The date each declared figure refers to: its license version's MAU date (unknown ids: 404)."""
    return {license_id: _terms(license_id).mau_measured_on.isoformat() for license_id in mau_at}


def _save_profile(ctx: HubContext, user: dict[str, Any], changes: dict[str, Any], *,
                  replace: bool) -> dict[str, Any]:
    if changes.get("intended_uses") is not None:
        changes["intended_uses"] = list(validate_uses(changes["intended_uses"]))
    as_of = _as_of(changes.get("mau_at") or {})
    profile = ctx.store.set_profile(user["id"], changes, replace=replace, as_of=as_of)
    return {"organisation": user["organisation"], "country": user["country"], **profile}


@router.put("/profile", response_model=m.ProfileOut)
def put_profile(body: ProfileBody, user: User, ctx: Ctx) -> dict[str, Any]:
    """Replace the declared profile; every change is kept in the profile history and the audit log."""
    return _save_profile(ctx, user, body.model_dump(), replace=True)


@router.patch("/profile", response_model=m.ProfileOut)
def patch_profile(body: ProfilePatch, user: User, ctx: Ctx) -> dict[str, Any]:
    """Change only the fields given (``mau: null`` withdraws today's figure); history and audit as PUT."""
    return _save_profile(ctx, user, body.model_dump(include=body.model_fields_set), replace=False)


@router.get("/profile/history", response_model=m.HistoryOut)
def profile_history(user: User, ctx: Ctx) -> dict[str, Any]:
    return {"history": ctx.store.profile_history(user["id"])}


def _terms(license_id: str) -> LicenseTerms:
    licenses = load_licenses()
    if license_id not in licenses:
        raise NotFoundError(f"unknown license {license_id!r}", code="unknown_license",
                            hint=f"known licenses: {', '.join(sorted(licenses))}")
    return licenses[license_id]


def _license_info(ctx: HubContext, terms: LicenseTerms) -> dict[str, Any]:
    text, source = license_text(ctx, terms)
    return {"id": terms.id, "title": terms.title, "issuer": terms.issuer, "families": list(terms.families),
            "release_date": terms.release_date.isoformat(), "mau_threshold": terms.mau_threshold,
            "aup": terms.aup, "summary": list(terms.summary), "url": terms.url,
            "official_text_sha256": terms.text_sha256, "text_sha256": text_sha256(text),
            "text_source": source, "text_url": f"/api/licenses/{terms.id}/text",
            "outputs_may_train_other_models": terms.outputs_may_train_other_models,
            "outputs_training_condition": terms.outputs_training_condition,
            "attribution": terms.attribution, "derivative_name_prefix": terms.derivative_name_prefix,
            "languages": list(terms.languages), "clauses": dict(terms.clauses)}


@router.get("/licenses", response_model=m.LicensesOut)
def licenses(ctx: Ctx) -> dict[str, Any]:
    """Every license version; each is accepted separately."""
    return {"licenses": [_license_info(ctx, t) for t in load_licenses().values()]}


def _receipt(ctx: HubContext, request: Request, user: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    _, key = ctx.keys.signing_key()
    payload = {"type": "llamahub.license_acceptance", "v": 1, "hub": hub_url(request, ctx),
               "acceptance_id": row["id"], "user_id": user["id"], "email": user["email"],
               "organisation": user["organisation"], "license_id": row["license_id"],
               "text_sha256": row["text_sha256"], "accepted_at": row["accepted_at"]}
    return crypto.sign_document(payload, key)


@router.get("/licenses/status", response_model=m.LicenseStatusOut)
def license_status(request: Request, user: User, ctx: Ctx) -> dict[str, Any]:
    """Which license versions this user accepted, with a signed receipt for each."""
    accepted = ctx.store.acceptances(user["id"])
    out = []
    for terms in load_licenses().values():
        row = accepted.get(terms.id)
        out.append({"id": terms.id, "title": terms.title, "accepted": row is not None,
                    "accepted_at": row["accepted_at"] if row else None,
                    "text_sha256": row["text_sha256"] if row else None,
                    "receipt": _receipt(ctx, request, user, row) if row else None})
    return {"licenses": out}


@router.get("/licenses/{license_id}", response_model=m.LicenseOut)
def license_info(license_id: IdPath, ctx: Ctx) -> dict[str, Any]:
    return _license_info(ctx, _terms(license_id))


@router.get("/licenses/{license_id}/text", response_model=None, responses={
    200: {"description": "the text", "content": {"text/plain": {"schema": {"type": "string"}}}}})
def license_text_route(license_id: IdPath, ctx: Ctx) -> Response:
    """The exact text whose sha256 an acceptance records."""
    text, source = license_text(ctx, _terms(license_id))
    return Response(text, media_type="text/plain; charset=utf-8",
                    headers={"X-Text-SHA256": text_sha256(text), "X-Text-Source": source})


@router.post("/licenses/{license_id}/accept", status_code=201, response_model=m.AcceptOut,
             responses={200: {"model": m.AcceptOut, "description": "accepted before"}})
def accept(license_id: IdPath, request: Request, user: User, ctx: Ctx,
           body: Annotated[AcceptBody | None, Body()] = None) -> JSONResponse:
    """Accept one license version; returns the acceptance and a signed receipt (200 if already accepted)."""
    terms = _terms(license_id)
    text, source = license_text(ctx, terms)
    digest = text_sha256(text)
    if body is not None and body.text_sha256 and body.text_sha256 != digest:
        raise ConflictError(f"the {terms.title} text changed since you read it", code="license_text_changed",
                            hint=f"read GET /api/licenses/{terms.id}/text again and accept that text")
    row, created = ctx.store.accept_license(user["id"], terms.id, digest)
    content = {"acceptance": {k: row[k] for k in ("id", "license_id", "text_sha256", "accepted_at")},
               "text_source": source, "created": created, "receipt": _receipt(ctx, request, user, row)}
    return JSONResponse(content, status_code=201 if created else 200)
