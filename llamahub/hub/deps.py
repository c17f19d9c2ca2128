"""FastAPI dependencies of the hub routes: the context, the calling user, the admin check."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request

from llamahub.hub.context import HubContext
from llamahub.hub.errors import AuthError, ForbiddenError


def get_ctx(request: Request) -> HubContext:
    return request.app.state.hub


MAX_TOKEN = 128  # longer than any token the hub issues: a longer one is cut and then unknown
Ctx = Annotated[HubContext, Depends(get_ctx)]


def hub_url(request: Request, ctx: HubContext) -> str:
    """The URL links and receipts name: ``--public-url`` if set, else the address the hub is bound to
    (the listening socket's, as the connection was accepted on it), never a request header."""
    return ctx.public_url or bound_url(request)


def client_ip(request: Request) -> str:
    """The peer's address (uvicorn takes it from X-Forwarded-For only for a trusted proxy)."""
    return request.client.host if request.client else "unknown"


def bound_url(request: Request) -> str:
    host, port = request.scope.get("server") or ("127.0.0.1", 80)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` as a browser's Origin header names ``url`` (default ports left out)."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}.get(scheme)
    try:
        port = parts.port
    except ValueError:
        return ""
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token[:MAX_TOKEN] if scheme.lower() == "bearer" and token else None


def _owner(request: Request, ctx: HubContext, who: str) -> tuple[str, dict[str, Any] | None]:
    token = _bearer(request)
    if token is None:
        raise AuthError("this route needs an API token", code="unauthorized",
                        hint=f"send `Authorization: Bearer <token>` with {who}")
    owner = ctx.store.token_owner(token)
    if owner is None:
        raise AuthError("unknown or revoked API token", code="invalid_token",
                        hint=f"send {who}")
    return owner


def current_user(request: Request, ctx: Ctx) -> dict[str, Any]:
    role, user = _owner(request, ctx, "your API token (POST /api/users returns it)")
    if role != "user" or user is None:
        raise ForbiddenError("an admin token does not act as a user", code="user_required",
                             hint="use a user's API token")
    return user


def require_admin(request: Request, ctx: Ctx) -> dict[str, Any]:
    """The operator whose admin token this is (403 for any other token)."""
    role, operator = _owner(request, ctx, "the admin token printed by `llamahub hub init`")
    if role != "admin":
        raise ForbiddenError("this route is for the hub's administrators", code="admin_required",
                             hint="use the admin token printed by `llamahub hub init`")
    return operator or {"id": None, "name": "admin"}


def operator_actor(operator: Annotated[dict[str, Any], Depends(require_admin)]) -> str:
    """How the audit log names the operator making this request: ``operator:<name>``."""
    return f"operator:{operator['name']}"


User = Annotated[dict[str, Any], Depends(current_user)]
Actor = Annotated[str, Depends(operator_actor)]
