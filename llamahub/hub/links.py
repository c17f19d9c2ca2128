"""Signed-link rules, as pure functions: the policy a link carries, the raw download path, Range.

A link's policy (signed JSON, see :mod:`llamahub.crypto`) holds::

    {"v": 1, "link_id", "resource": "{hub}/dl/<family>/", "family", "variants": [...],
     "subject": "<user id>", "issued": epoch, "expires": epoch, "max_downloads": 5}

Download paths are checked on the RAW request path (before any percent-decoding): each segment
is plain ``[A-Za-z0-9._-]`` and never ``.`` or ``..``, so neither ``../`` nor ``%2e%2e%2f`` nor an
absolute path can name anything but a file of the link's variants.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from llamahub.hub.errors import BadRequestError, HubError, LinkError

POLICY_VERSION = 1
DEFAULT_TTL = 24 * 3600
MAX_TTL = 7 * 24 * 3600
DEFAULT_MAX_DOWNLOADS = 5
MAX_PATH = 1024
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
_DIGITS = re.compile(r"^[0-9]{1,20}$")
_POLICY_KEYS = ("v", "link_id", "resource", "family", "variants", "subject", "issued", "expires",
                "max_downloads")


class RangeNotSatisfiable(HubError):
    code = "range_not_satisfiable"
    status = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message, hint="the file is already complete; nothing is left to fetch")
        self.headers = {"Content-Range": f"bytes */{size}"}


def build_policy(*, link_id: str, resource: str, family: str, variants: Sequence[str], subject: str,
                 issued: int, expires: int, max_downloads: int) -> dict[str, Any]:
    return {"v": POLICY_VERSION, "link_id": link_id, "resource": resource, "family": family,
            "variants": list(variants), "subject": subject, "issued": issued, "expires": expires,
            "max_downloads": max_downloads}


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def check_policy(policy: dict[str, Any], family: str, now: float) -> None:
    """Refuse a (signature-checked) policy that is malformed, expired, or for another prefix."""
    missing = [k for k in _POLICY_KEYS if k not in policy]
    if missing or policy.get("v") != POLICY_VERSION or not isinstance(policy.get("expires"), int):
        raise LinkError(f"the link policy is malformed (missing {', '.join(missing) or 'nothing'})",
                        code="malformed_link", hint="request a new link")
    if now >= policy["expires"]:
        raise LinkError(f"this link expired at {iso(policy['expires'])}", code="link_expired",
                        hint=f"request a new link: `llamahub link {policy['family']}`")
    prefix = urlsplit(str(policy["resource"])).path
    if policy["family"] != family or prefix != f"/dl/{family}/":
        raise LinkError(f"this link covers {policy['resource']}*, not /dl/{family}/",
                        code="outside_link_prefix",
                        hint=f"replace only the * of the link; for {family} request a link for it")


def split_download_path(raw_path: bytes) -> tuple[str, str]:
    """``(family, path)`` of a raw ``/dl/<family>/<path>``; BadRequestError for anything unsafe."""
    if len(raw_path) > MAX_PATH:
        raise _bad_path(f"the path is longer than {MAX_PATH} bytes")
    try:
        text = raw_path.decode("ascii")
    except UnicodeDecodeError as e:
        raise _bad_path("the path is not plain ASCII") from e
    if not text.startswith("/dl/"):
        raise _bad_path("download paths start with /dl/<family>/")
    family, _, path = text[len("/dl/"):].partition("/")
    if path == "*":
        raise BadRequestError("the * of the link was not replaced by a file path", code="unsubstituted_path",
                              hint="replace * with a file such as LICENSE or <model>/params.json; "
                                   "GET /api/links/manifest lists them")
    if "%" in text or "\\" in text:
        raise _bad_path("percent-encoded characters and backslashes are not allowed in file paths")
    for segment in (family, *path.split("/")):
        if segment in ("", ".", "..") or not _SEGMENT.match(segment):
            raise _bad_path(f"bad path segment {segment!r}")
    return family, path


def _bad_path(why: str) -> BadRequestError:
    return BadRequestError(f"refused download path: {why}", code="bad_path",
                           hint="use a path of the manifest (GET /api/links/manifest) in place of *")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range to serve, or None for the whole file.

    One ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` is honoured; anything else (other units,
    several ranges, bad syntax) is ignored as RFC 9110 allows, and the whole file is served. A
    range starting at or past the end raises RangeNotSatisfiable (HTTP 416).
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = (part.strip() for part in spec.partition("-"))
    if not dash:
        return None
    if not first:  # suffix: the last n bytes
        if not _DIGITS.match(last):
            return None
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(f"empty suffix range for a file of {size} bytes", size)
        return max(size - n, 0), size - 1
    if not _DIGITS.match(first) or (last and not _DIGITS.match(last)):
        return None
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(f"range starts at {start}, the file has {size} bytes", size)
    return start, min(int(last) if last else size - 1, size - 1)
