"""The hub's FastAPI application: ``create_app(data_dir)``.

Routes live in ``routes_account`` (users, profile, licenses), ``routes_links`` (signed links, the
manifest and ``/dl/`` file serving), ``routes_admin`` (grants, keys, audit) and ``routes_hf``
(the Hugging Face Hub download protocol). Every error is
answered as ``{"error": {"code", "message", "hint"}}`` with a status that fits it. OpenAPI is
served at ``/openapi.json`` (and ``/docs``) and is the contract.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llamahub.crypto import SignatureError
from llamahub.errors import (
    CheckpointError,
    ConfigError,
    LicenseError,
    LlamahubError,
    RegistryError,
    UnknownVariantError,
)
from llamahub.hub import models as m
from llamahub.hub import (
    pages,
    routes_account,
    routes_admin,
    routes_credentials,
    routes_enterprise,
    routes_hf,
    routes_links,
    routes_orgs,
    routes_rules,
    routes_site,
)
from llamahub.hub.context import open_context
from llamahub.hub.deps import Ctx
from llamahub.hub.errors import HubError
from llamahub.hub.guard import MAX_BODY, Guard
from llamahub.hub.links import DEFAULT_MAX_DOWNLOADS, DEFAULT_TTL
from llamahub.hub.ratelimit import Rate, parse_limits
from llamahub.version import __version__

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "body_too_large", 422: "invalid_request",
               429: "rate_limited"}
_HTTP_HINTS = {404: "see /docs for the routes", 405: "see /docs for the routes",
               413: "send a smaller body: every field has a length limit (see /docs)"}


def error_body(code: str, message: str, hint: str | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "hint": hint}}


def status_for(exc: LlamahubError) -> int:
    if isinstance(exc, HubError):
        return exc.status
    if isinstance(exc, SignatureError):
        return 403
    if exc.code == "unknown_use":
        return 422
    if isinstance(exc, LicenseError):
        return 403
    if isinstance(exc, UnknownVariantError):
        return 404
    if isinstance(exc, CheckpointError):
        return 422
    if isinstance(exc, ConfigError | RegistryError):
        return 500
    return 400


def _header_text(text: str, limit: int = 400) -> str:
    """``text`` as a header value can carry it: printable ASCII only (the rest as ``?``), cut short."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit]).strip()


async def _llamahub_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LlamahubError)
    status = status_for(exc)
    headers = dict(getattr(exc, "headers", None) or {})
    # wget shows only the status line: its --server-response (-S) shows this header, with the reason
    headers["X-Llamahub-Error"] = _header_text(f"{exc.code}: {exc.message}")
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status >= 500:
        headers["Connection"] = "close"
    return JSONResponse(error_body(exc.code, exc.message, exc.hint), status_code=status, headers=headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                         for e in exc.errors())
    return JSONResponse(error_body("invalid_request", problems or "invalid request",
                                   "see /docs for the request schema"), status_code=422)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(error_body(code, str(exc.detail), _HTTP_HINTS.get(exc.status_code)),
                        status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _internal_error(_request: Request, _exc: Exception) -> JSONResponse:
    hint = "retry; if it persists, tell the hub operator (the server log has the details)"
    body = error_body("internal_error", "the hub hit an unexpected error", hint)
    return JSONResponse(body, status_code=500, headers={"Connection": "close"})


def create_app(data_dir: str | Path, *, public_url: str | None = None, database_url: str | None = None,
               blobs_url: str | None = None, keys_dir: str | Path | None = None,
               clock: Callable[[], float] = time.time, link_ttl: int = DEFAULT_TTL,
               max_downloads: int = DEFAULT_MAX_DOWNLOADS, max_body: int = MAX_BODY,
               rate_limits: Mapping[str, Rate | None] | None = None) -> FastAPI:
    """The hub for ``data_dir`` (initialised with ``llamahub hub init``)."""
    ctx = open_context(Path(data_dir), database_url=database_url, blobs_url=blobs_url,
                       keys_dir=Path(keys_dir) if keys_dir else None, public_url=public_url, clock=clock,
                       link_ttl=link_ttl, max_downloads=max_downloads, rate_limits=rate_limits)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        ctx.store.close()

    app = FastAPI(title="llamahub hub", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Accounts, license gates and Ed25519-signed download links in the "
                              "shape of Meta's, serving Meta's download layout.")
    app.state.hub = ctx
    app.add_exception_handler(LlamahubError, _llamahub_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(pages.FormRefused, pages.refused_page)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(Guard, max_body=max_body)
    app.include_router(public_router)
    app.include_router(routes_account.router)
    app.include_router(routes_rules.router)
    app.include_router(routes_credentials.router)
    app.include_router(routes_orgs.router)
    app.include_router(routes_orgs.admin)
    app.include_router(routes_links.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_enterprise.router)
    app.include_router(routes_enterprise.admin)
    app.include_router(pages.router)
    app.include_router(routes_site.router)  # `/` and `/docs`, with Swagger UI served by the hub itself
    app.include_router(routes_hf.router)  # last: the Hugging Face protocol's `/{repo}/resolve/...`
    return app


SERVE_ENV = "LLAMAHUB_HUB_SERVE"


def app_from_env() -> FastAPI:
    """The app of one ``hub serve --workers N`` worker process: ``create_app`` with the settings the
    command put in ``LLAMAHUB_HUB_SERVE`` (JSON: data_dir, public_url, database_url, blobs_url,
    keys_dir, link_ttl, max_downloads, rate_limits as ``NAME=COUNT/SECONDS`` specs)."""
    settings = json.loads(os.environ[SERVE_ENV])
    settings["rate_limits"] = parse_limits(settings.get("rate_limits") or ())
    return create_app(**settings)


public_router = APIRouter(tags=["public"], responses=m.ERRORS)


@public_router.get("/api/health", response_model=m.HealthOut)
def health(ctx: Ctx) -> dict[str, Any]:
    """Liveness: the store answers and a signing key is usable."""
    kid, _ = ctx.keys.signing_key()
    return {"status": "ok", "key_id": kid, "variants": len(ctx.store.imported())}


@public_router.get("/.well-known/llamahub-keys.json", response_model=m.KeysOut)
def published_keys(ctx: Ctx) -> dict[str, Any]:
    """The hub's public keys, by key id, with their revocation status."""
    kid, _ = ctx.keys.signing_key()
    return {"active": kid, "keys": ctx.keys.published()}
