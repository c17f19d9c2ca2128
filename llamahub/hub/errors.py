"""Errors of the hub server. Each carries an HTTP ``status`` beside the usual ``code`` and ``hint``.

The app turns any :class:`~llamahub.errors.LlamahubError` into ``{"error": {"code", "message",
"hint"}}``; these subclasses say which status to answer with. ``code`` may be refined per raise
(``NotFoundError(..., code="variant_not_imported")``).
"""

from __future__ import annotations

from llamahub.errors import LlamahubError


class HubError(LlamahubError):
    """Root of the hub's own errors."""

    code = "hub_error"
    status = 400

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message, hint=hint)
        if code:
            self.code = code
        if status:
            self.status = status


class BadRequestError(HubError):
    code = "bad_request"
    status = 400


class AuthError(HubError):
    """No credentials, or credentials the hub does not know."""

    code = "unauthorized"
    status = 401


class ForbiddenError(HubError):
    code = "forbidden"
    status = 403


class LinkError(ForbiddenError):
    """A signed link that is expired, revoked, over its cap, or used outside its prefix."""

    code = "link_invalid"


class NotFoundError(HubError):
    code = "not_found"
    status = 404


class ConflictError(HubError):
    code = "conflict"
    status = 409


class ImportRefusedError(HubError):
    """A folder that cannot be imported: checksums, shapes, missing or conflicting files."""

    code = "import_refused"
    status = 422


class NotInitialisedError(HubError):
    code = "hub_not_initialised"
    status = 503


class BlobStoreError(HubError):
    """The blob store cannot be reached, refused a request or is full (try again later)."""

    status = 503


class DatabaseUnavailableError(HubError):
    """The hub's database cannot be reached (restarting, overloaded): try again shortly."""

    code = "database_unavailable"
    status = 503
    headers = {"Retry-After": "2"}  # noqa: RUF012 (read only, by the app's error handler)
