"""Serving a blob's bytes over HTTP: the headers of a file (or a Range of it) and its content,
read in blocks without stalling the event loop. Used by the signed-link and the HF routes."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from llamahub.hub.errors import BadRequestError

FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": what, "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                   "format": "binary"}}}}
    for status, what in ((200, "the file"), (206, "the requested range"))}
CHUNK = 1 << 20


def blob_response(row: dict[str, Any], span: tuple[int, int] | None, etag: str,
                   body: AsyncIterator[bytes | memoryview] | None) -> Response:
    """The file's headers, and ``body`` as its content (None: a HEAD answer)."""
    size = int(row["size"])
    headers = {"Accept-Ranges": "bytes", "ETag": etag, "X-Checksum-Sha256": row["sha256"],
               "X-Checksum-Md5": row["md5"], "Cache-Control": "private, no-transform"}
    length, status = size, 200
    if span is not None:
        length, status = span[1] - span[0] + 1, 206
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{size}"
    headers["Content-Length"] = str(length)
    if body is None:
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    return ClosingStream(body, status_code=status, headers=headers, media_type="application/octet-stream")


class ClosingStream(StreamingResponse):
    """A StreamingResponse that closes its body when it ends, however it ends (a client that went
    away included), so a metered stream gives back the bytes it did not send at once, not at GC."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            body = self.body_iterator
            if isinstance(body, AsyncGenerator):
                with anyio.CancelScope(shield=True):
                    await body.aclose()


async def read_blob(blob: Path, start: int, length: int) -> AsyncIterator[bytes | memoryview]:
    """The blob's bytes ``start..start+length`` in CHUNK blocks.

    A block already in the page cache is read right on the event loop; any other is read in a
    worker thread, so a cold disk never stalls the loop. A warm hub thus serves without a thread
    hand-off per block: measured on the 2-core bench machine, about a quarter less hub CPU per
    byte than reading every block in a thread.
    """
    fd = os.open(blob, os.O_RDONLY)
    try:
        while length > 0:
            n = min(CHUNK, length)
            block = _read_cached(fd, n, start)
            if block is None:
                block = await anyio.to_thread.run_sync(os.pread, fd, n, start)
            if not block:
                raise BadRequestError(f"blob {blob.name} is shorter than recorded", code="blob_truncated")
            start, length = start + len(block), length - len(block)
            yield block
    finally:
        os.close(fd)


def _read_cached(fd: int, n: int, offset: int) -> memoryview | None:
    """Up to ``n`` bytes at ``offset`` if the page cache holds them (Linux), else None."""
    nowait = getattr(os, "RWF_NOWAIT", None)
    if nowait is None:
        return None
    buf = bytearray(n)
    try:
        got = os.preadv(fd, [buf], offset, nowait)  # fails with EAGAIN rather than wait for the disk
    except OSError:  # EAGAIN, or a file system that does not support RWF_NOWAIT
        return None
    return memoryview(buf)[:got] if got else None
