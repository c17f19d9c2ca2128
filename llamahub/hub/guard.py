"""The hub's outermost ASGI layer: a request-body size limit and a last answer for surprises.

- A body longer than ``max_body`` bytes is refused with 413 in the hub's error shape: at once when
  ``Content-Length`` says so, else as soon as the streamed (chunked) body passes the limit, so
  no handler ever parses more than ``max_body`` bytes.
- An exception no handler turned into an answer is logged and answered with 500 in the same
  shape and ``Connection: close``, so the client never meets a reset keep-alive connection. If
  the response had already started (a file half sent), the connection is closed.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY = 64 * 1024
log = logging.getLogger("llamahub.hub")


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (FastAPI lets HTTPException through)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the hub's limit of {limit:,} bytes")


def error_message(status: int, code: str, message: str, hint: str | None,
                  headers: dict[str, str] | None = None) -> tuple[Message, Message]:
    """The two ASGI messages of a JSON error answer in the hub's shape."""
    body = json.dumps({"error": {"code": code, "message": message, "hint": hint}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    return ({"type": "http.response.start", "status": status, "headers": raw},
            {"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            await self._too_large(send)
            return
        try:
            await self.app(scope, self._limited(receive), tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._too_large(send)
        except ClientDisconnect:
            return  # the client went away while sending its body: nobody is left to answer
        except Exception:
            log.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # the server closes the connection: a half-sent response cannot be fixed
            for message in error_message(500, "internal_error", "the hub hit an unexpected error",
                                         "retry; if it persists, tell the hub operator (the server log "
                                         "has the details)", {"Connection": "close"}):
                await send(message)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        return limited

    async def _too_large(self, send: Send) -> None:
        start, body = error_message(413, "body_too_large", BodyTooLarge(self.max_body).detail,
                                    "send a smaller body: every field has a length limit (see /docs)",
                                    {"Connection": "close"})
        await send(start)
        await send(body)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text: Any = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and len(text) < 20 else None
    return None
