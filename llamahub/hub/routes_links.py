"""Signed links: issuing them (after the license gates), the manifest, and ``/dl/`` file serving.

A download is checked in this order: the raw path is safe; the key is not revoked and the
signature verifies; the policy is not expired and covers this family's prefix; the link exists
and is not revoked; the file belongs to a variant the link grants; the Range is satisfiable; the
bytes asked for fit in the link's allowance for that file.

The download cap counts bytes: a link with a cap of N serves each file at most N × its size bytes,
whole files, resumes and parallel ranges alike (a 1-byte probe costs 1 byte). Bytes are counted
before they are sent, in slices of at most ``SLICE`` bytes, and what a client did not take (it
went away) is given back; a hub killed mid-transfer loses at most one slice per transfer.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any

import anyio
import anyio.lowlevel
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import Field, model_validator

from llamahub import crypto
from llamahub.hub import models as m
from llamahub.hub.accounts import gate_grants, gate_profile
from llamahub.hub.blobserve import FILE_RESPONSES, blob_response
from llamahub.hub.context import HubContext
from llamahub.hub.deps import Ctx, User, client_ip, hub_url
from llamahub.hub.errors import LinkError, NotFoundError
from llamahub.hub.fields import MAX_ID, Ident, IdPath, Input, Name
from llamahub.hub.links import MAX_TTL, build_policy, check_policy, iso, parse_range, split_download_path
from llamahub.hub.store import new_id
from llamahub.policy import check
from llamahub.registry import Variant

router = APIRouter(tags=["links"], responses=m.ERRORS)
SLICE = 64 << 20
PolicyQ = Annotated[str, Query(alias="Policy", max_length=8192)]
SignatureQ = Annotated[str, Query(alias="Signature", max_length=256)]
KeyPairQ = Annotated[str, Query(alias="Key-Pair-Id", max_length=MAX_ID)]


class LinkBody(Input):
    family: Ident | None = Field(None, description="every imported variant of this family you may get")
    variant: Name | None = Field(None, description="one variant (a name, alias or HF repo id)")
    expires_in: int | None = Field(None, ge=1, le=MAX_TTL, description="seconds; default 24 h")
    max_downloads: int | None = Field(None, ge=1, le=1000, description="per file; at most the hub's cap")

    @model_validator(mode="after")
    def _one_target(self) -> LinkBody:
        if (self.family is None) == (self.variant is None):
            raise ValueError("give exactly one of family or variant")
        return self


def _requested(ctx: HubContext, body: LinkBody) -> tuple[str, list[Variant]]:
    if body.variant is not None:
        v = ctx.registry.resolve(body.variant)
        return v.family, [v]
    variants = [v for v in ctx.registry if v.family == body.family]
    if not variants:
        families = sorted({v.family for v in ctx.registry})
        raise NotFoundError(f"unknown family {body.family!r}", code="unknown_family",
                            hint=f"known families: {', '.join(families)}")
    return str(body.family), variants


@router.post("/api/links", status_code=201, response_model=m.LinkOut)
def issue_link(body: LinkBody, request: Request, user: User, ctx: Ctx) -> dict[str, Any]:
    """Run the license gates for every requested variant, then issue a signed link."""
    ctx.limiter.check("link", ip=client_ip(request), token=user["id"])
    family, variants = _requested(ctx, body)
    profile, grants, now = gate_profile(ctx, user), gate_grants(ctx, user["organisation"]), ctx.now()
    decisions = [(v, check(profile, v, grants, now)) for v in variants]
    refused = [(v, d) for v, d in decisions if not d.allowed]
    allowed = [(v, d) for v, d in decisions if d.allowed]
    if refused and (body.variant is not None or not allowed):
        variant, decision = refused[0]
        ctx.store.record(f"user:{user['id']}", "link.refuse", variant.name, code=decision.code)
        decision.raise_if_denied()
    imported = {row["name"] for row in ctx.store.imported(family)}
    granted = [v.name for v, _ in allowed if v.name in imported]
    if not granted:
        names = ", ".join(v.name for v, _ in allowed)
        raise NotFoundError(f"this hub has not imported {names}", code="variant_not_imported",
                            hint="ask the hub operator to run `llamahub hub import FOLDER --variant NAME`; "
                                 "GET /api/health shows how many variants are imported")
    grant_ids = sorted({d.grant_id for _, d in allowed if d.grant_id})
    issued = _sign_link(ctx, request, user, body, family, granted, grant_ids)
    issued["excluded"] = [{"variant": v.name, "code": d.code, "message": d.message, "hint": d.hint}
                          for v, d in refused]
    issued["not_imported"] = [v.name for v, _ in allowed if v.name not in imported]
    return issued


def _sign_link(ctx: HubContext, request: Request, user: dict[str, Any], body: LinkBody, family: str,
               granted: list[str], grant_ids: list[str]) -> dict[str, Any]:
    cap = min(body.max_downloads or ctx.max_downloads, ctx.max_downloads)
    now = ctx.clock()
    expires = math.ceil(now + min(body.expires_in or ctx.link_ttl, MAX_TTL))
    link_id = new_id("l_")
    hub = hub_url(request, ctx)
    policy = build_policy(link_id=link_id, resource=crypto.link_prefix(hub, family), family=family,
                          variants=granted, subject=user["id"], issued=int(now), expires=expires,
                          max_downloads=cap)
    kid, key = ctx.keys.signing_key()
    url = crypto.make_link(hub, family, policy, key)
    ctx.store.create_link(link_id, user["id"], family, kid, policy, expires, cap, variants=granted,
                          grants=grant_ids)
    return {"url": url, "link_id": link_id, "family": family, "variants": granted, "key_id": kid,
            "expires": iso(expires), "expires_epoch": expires, "max_downloads": cap, "grants": grant_ids,
            "manifest_url": f"{hub}/api/links/manifest?{url.partition('?')[2]}"}


@router.get("/api/links", response_model=m.LinksOut)
def my_links(user: User, ctx: Ctx) -> dict[str, Any]:
    """Your links, newest last, with the bytes served per file (and the same in whole downloads)."""
    out = []
    for link in ctx.store.links_of(user["id"]):
        served = ctx.store.served_bytes(link["id"])
        sizes = {f["path"]: int(f["size"]) for f in ctx.store.files(link["policy"]["variants"])}
        out.append({"link_id": link["id"], "family": link["family"], "variants": link["policy"]["variants"],
                    "issued_at": link["issued_at"], "expires": iso(link["expires"]),
                    "revoked": link["revoked_at"] is not None, "max_downloads": link["max_downloads"],
                    "bytes_served": served,
                    "downloads": {path: _usage(n, sizes.get(path, 0), 1)["downloads"]
                                  for path, n in served.items()}})
    return {"links": out}


@router.delete("/api/links/{link_id}", response_model=m.RevokedLinkOut)
def revoke_link(link_id: IdPath, user: User, ctx: Ctx) -> dict[str, Any]:
    """Revoke one of your links (another user's link is reported as not found)."""
    link = ctx.store.revoke_link(link_id, user["id"])
    return {"link_id": link["id"], "revoked_at": link["revoked_at"]}


def _authorise(ctx: HubContext, policy_b64: str, signature: str, kid: str,
               family: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(policy, link row) of a link that may be used now, or a 403 error saying why not."""
    if kid and ctx.keys.is_revoked(kid):
        raise LinkError(f"this link was signed with key {kid}, which the hub has revoked",
                        code="key_revoked", hint="request a new link (`llamahub link <family>`)")
    policy = crypto.verify_link(policy_b64, signature, kid, ctx.keys.verifying_keys())
    check_policy(policy, family if family is not None else str(policy.get("family")), ctx.clock())
    link = ctx.store.get_link(str(policy["link_id"]))
    if link is None or link["policy"] != policy:
        raise LinkError("this hub did not issue that link", code="unknown_link", hint="request a new link")
    if link["revoked_at"] is not None:
        raise LinkError(f"this link was revoked at {link['revoked_at']}", code="link_revoked",
                        hint=f"request a new link (`llamahub link {link['family']}`)")
    return policy, link


@router.get("/api/links/manifest", response_model=m.ManifestOut)
def manifest(ctx: Ctx, policy: PolicyQ = "", signature: SignatureQ = "",
             kid: KeyPairQ = "") -> dict[str, Any]:
    """Every file a link serves, with size, md5 and sha256 (pass the link's query string)."""
    pol, link = _authorise(ctx, policy, signature, kid, None)
    served, cap = ctx.store.served_bytes(link["id"]), int(pol["max_downloads"])
    files = [{"path": f["path"], "variant": f["variant"], "size": f["size"], "md5": f["md5"],
              "sha256": f["sha256"], **_usage(served.get(f["path"], 0), int(f["size"]), cap)}
             for f in ctx.store.files(pol["variants"])]
    return {"link_id": link["id"], "family": pol["family"], "variants": pol["variants"],
            "resource": pol["resource"], "expires": iso(pol["expires"]),
            "max_downloads": pol["max_downloads"], "files": files}


def _usage(served: int, size: int, cap: int) -> dict[str, Any]:
    """What a link has used of one file: bytes, and the same in whole-file downloads."""
    return {"bytes_served": served, "bytes_left": max(cap * size - served, 0),
            "downloads": round(served / size, 3) if size else 0.0}


@router.get("/dl/{family}/{path:path}", response_model=None, responses=FILE_RESPONSES)
@router.head("/dl/{family}/{path:path}", response_model=None, responses=FILE_RESPONSES)
def download(request: Request, ctx: Ctx, family: str, path: str, policy: PolicyQ = "",
             signature: SignatureQ = "", kid: KeyPairQ = "") -> Response:
    """A file of Meta's layout through a signed link: the link's ``*`` replaced by the file's path."""
    raw = request.scope.get("raw_path") or request.url.path.encode("utf-8")
    fam, rel = split_download_path(raw)
    if not policy and not signature:
        raise LinkError("this URL lacks the signed link's query string", code="malformed_link",
                        hint="use the whole URL the hub gave you, query string "
                             "(?Policy=...&Signature=...&Key-Pair-Id=...) included")
    pol, link = _authorise(ctx, policy, signature, kid, fam)
    row = _file(ctx, pol, fam, rel)
    etag = f'"{row["sha256"]}"'
    if_range = request.headers.get("if-range")
    span = parse_range(request.headers.get("range"), row["size"])
    if span is not None and if_range is not None and if_range.strip() != etag:
        span = None
    start, length = (span[0], span[1] - span[0] + 1) if span else (0, int(row["size"]))
    blocks = ctx.blobs.reader(row["sha256"], start, length)  # 404 now if the store lacks the blob
    if request.method == "HEAD":
        return blob_response(row, span, etag, None)
    meter = _Meter(ctx, link["id"], rel, int(pol["max_downloads"]) * int(row["size"]))
    meter.reserve_first(length)
    return blob_response(row, span, etag, meter.stream(blocks, length))


class _Meter:
    """Counts the bytes of one file served through one link against the link's allowance."""

    def __init__(self, ctx: HubContext, link_id: str, path: str, allowance: int) -> None:
        self.ctx, self.link_id, self.path, self.allowance = ctx, link_id, path, allowance
        self.reserved = 0

    def reserve_first(self, length: int) -> None:
        """Refuse (403) unless all ``length`` bytes fit; count the first slice of them."""
        take = min(length, SLICE)
        self.ctx.store.reserve_bytes(self.link_id, self.path, take, need=length, allowance=self.allowance)
        self.reserved = take

    def _reserve_next(self, length: int) -> None:
        take = min(SLICE, length - self.reserved)
        self.ctx.store.reserve_bytes(self.link_id, self.path, take, need=take, allowance=self.allowance)
        self.reserved += take

    async def stream(self, blob: AsyncIterator[bytes | memoryview],
                     length: int) -> AsyncIterator[bytes | memoryview]:
        sent = 0
        try:
            async with aclosing(blob) as blocks:  # type: ignore[type-var]
                async for block in blocks:
                    # a block read from the page cache and sent to a client that went away never waits:
                    # let the event loop deliver the disconnect before counting another block as sent
                    await anyio.lowlevel.checkpoint()
                    if sent + len(block) > self.reserved:  # count the next slice before sending it
                        await anyio.to_thread.run_sync(self._reserve_next, length)
                    sent += len(block)
                    yield block
        finally:
            if self.reserved > sent:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.ctx.store.release_bytes, self.link_id, self.path,
                                                   self.reserved - sent)


def _file(ctx: HubContext, policy: dict[str, Any], family: str, path: str) -> dict[str, Any]:
    row = ctx.store.file_at(policy["variants"], path)
    if row is not None:
        return row
    other = ctx.store.file_at([v["name"] for v in ctx.store.imported(family)], path)
    if other is not None:
        raise LinkError(f"{path} belongs to {other['variant']}, which this link does not grant",
                        code="outside_link", hint=f"request a link for {other['variant']}")
    raise NotFoundError(f"no file {path} among {', '.join(policy['variants'])}", code="no_such_file",
                        hint="GET /api/links/manifest with the link's query string lists the files")
