"""Response models of the hub's JSON routes: the OpenAPI contract that clients and the fuzz test check.

Every route declares one, and every router declares :data:`ERRORS` (4XX answers in the hub's error
shape), so ``/openapi.json`` says exactly what each answer holds.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    code: str
    message: str
    hint: str | None


class ErrorOut(BaseModel):
    """Every refusal: a machine-readable ``code``, a ``message`` and a ``hint`` naming the next step."""

    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {"4XX": {"model": ErrorOut, "description": "refused"}}


class SignedDocument(BaseModel):
    """An Ed25519-signed document: verify ``signature`` over the canonical JSON of ``payload``."""

    payload: dict[str, Any]
    key_id: str
    signature: str


# --- public -----------------------------------------------------------------------------------------


class HealthOut(BaseModel):
    status: str
    key_id: str
    variants: int


class PublishedKey(BaseModel):
    kid: str
    kty: str
    crv: str
    alg: str
    x: str
    public_key_pem: str
    created_at: str
    revoked: bool
    revoked_at: str | None


class KeysOut(BaseModel):
    active: str
    keys: list[PublishedKey]


# --- accounts ---------------------------------------------------------------------------------------


class PublicUser(BaseModel):
    id: str
    email: str
    name: str
    organisation: str
    country: str
    created_at: str


class RegisteredOut(BaseModel):
    user: PublicUser
    token: str
    note: str


class MauDeclaration(BaseModel):
    license_id: str
    as_of: str
    mau: int
    declared_at: str


class Profile(BaseModel):
    mau: int | None
    intended_uses: list[str]
    certifications: list[str]
    eu_domiciled: bool
    updated_at: str | None
    mau_at: dict[str, int] = {}
    mau_declarations: list[MauDeclaration] = []


class MeOut(BaseModel):
    user: PublicUser
    profile: Profile


class ProfileOut(Profile):
    organisation: str
    country: str


class HistoryEntry(Profile):
    changed_at: str


class HistoryOut(BaseModel):
    history: list[HistoryEntry]


class LicenseOut(BaseModel):
    id: str
    title: str
    issuer: str
    families: list[str]
    release_date: str
    mau_threshold: int | None
    aup: str | None
    summary: list[str]
    url: str | None
    official_text_sha256: str | None
    text_sha256: str
    text_source: str
    text_url: str
    outputs_may_train_other_models: bool | None = None
    outputs_training_condition: str | None = None
    attribution: str | None = None
    derivative_name_prefix: str | None = None
    languages: list[str] = []
    clauses: dict[str, str] = {}


class RulingOut(BaseModel):
    question: str
    asked: str
    variant: str
    license: str
    allowed: bool
    rule: str
    obligations: list[str]
    note: str | None
    clause: str | None
    suggestion: str | None


class LicensesOut(BaseModel):
    licenses: list[LicenseOut]


class LicenseStatus(BaseModel):
    id: str
    title: str
    accepted: bool
    accepted_at: str | None
    text_sha256: str | None
    receipt: SignedDocument | None


class LicenseStatusOut(BaseModel):
    licenses: list[LicenseStatus]


class Acceptance(BaseModel):
    id: str
    license_id: str
    text_sha256: str
    accepted_at: str


class AcceptOut(BaseModel):
    acceptance: Acceptance
    text_source: str
    created: bool
    receipt: SignedDocument


# --- links ------------------------------------------------------------------------------------------


class Excluded(BaseModel):
    variant: str
    code: str
    message: str
    hint: str | None


class LinkOut(BaseModel):
    url: str
    link_id: str
    family: str
    variants: list[str]
    key_id: str
    expires: str
    expires_epoch: int
    max_downloads: int
    grants: list[str]
    manifest_url: str
    excluded: list[Excluded]
    not_imported: list[str]


class LinkSummary(BaseModel):
    link_id: str
    family: str
    variants: list[str]
    issued_at: str
    expires: str
    revoked: bool
    max_downloads: int
    bytes_served: dict[str, int]
    downloads: dict[str, float]


class LinksOut(BaseModel):
    links: list[LinkSummary]


class RevokedLinkOut(BaseModel):
    link_id: str
    revoked_at: str | None


class ManifestFile(BaseModel):
    path: str
    variant: str
    size: int
    md5: str
    sha256: str
    bytes_served: int
    bytes_left: int
    downloads: float


class ManifestOut(BaseModel):
    link_id: str
    family: str
    variants: list[str]
    resource: str
    expires: str
    max_downloads: int
    files: list[ManifestFile]


# --- grants, keys, audit ----------------------------------------------------------------------------


class Grant(BaseModel):
    id: str
    organisation: str
    org_id: str | None = None
    families: list[str]
    variants: list[str] = []
    uses: list[str] = []
    max_mau: int | None
    not_before: str
    expires: str | None
    created_at: str
    revoked_at: str | None


class GrantOut(BaseModel):
    grant: Grant
    document: SignedDocument


class GrantsOut(BaseModel):
    grants: list[Grant]


class KeyRingOut(BaseModel):
    active: str
    keys: list[PublishedKey]


class RevokedKeyOut(KeyRingOut):
    revoked: str


class AuditEntry(BaseModel):
    id: int
    at: str
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any]


class AuditOut(BaseModel):
    entries: list[AuditEntry]


# --- enterprise requests ----------------------------------------------------------------------------


class EnterpriseRequest(BaseModel):
    id: str
    user_id: str
    organisation: str
    families: list[str]
    mau: int
    note: str
    status: str
    created_at: str
    decided_at: str | None
    decision_note: str | None
    grant_id: str | None
    org_id: str | None = None
    uses: list[str] = []
    variants: list[str] = []
    info_request: str | None = None
    info_answer: str | None = None


class RequestOut(BaseModel):
    request: EnterpriseRequest


class RequestsOut(BaseModel):
    requests: list[EnterpriseRequest]


class ApprovedRequest(EnterpriseRequest):
    grant: Grant


class ApprovedOut(BaseModel):
    request: ApprovedRequest
    document: SignedDocument
