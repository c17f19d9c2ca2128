"""Imported variants seen as Hugging Face model repos: ids, files per layout, commits, raw paths.

Each imported variant is a repo under its real HF repo id (``Variant.hf_repo``; a variant without
one is ``llamahub/<name>``) holding the HF layout. Meta's layout is the repo ``hf_repo_native``
when the registry names one (``meta-llama/Llama-2-7b``), else the ``original/`` folder of the HF
repo, as Meta's Llama 3 repos have it. The layout a variant was not imported in comes from the
files converted at import (:mod:`llamahub.hub.layouts`).

A repo has one branch, ``main``; its commit is the sha1 of the repo id and its files' paths,
sizes and sha256s, so the same bytes always have the same commit and a re-import that changes a
file changes it. Every file is presented as an LFS file: its ETag is its sha256.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from urllib.parse import unquote

from sqlalchemy import func, select

from llamahub.errors import UnknownVariantError
from llamahub.hub import schema as t
from llamahub.hub.context import HubContext
from llamahub.registry import Variant

MAIN = "main"
_REPO_PART = re.compile(r"^[A-Za-z0-9._-]{1,96}$")
LFS_SPEC = "version https://git-lfs.github.com/spec/v1\n"


@dataclass(frozen=True)
class RepoFile:
    path: str
    sha256: str
    md5: str
    size: int

    @property
    def pointer(self) -> str:
        """The git-lfs pointer text that stands for this file in a git repo."""
        return f"{LFS_SPEC}oid sha256:{self.sha256}\nsize {self.size}\n"

    @property
    def oid(self) -> str:
        """The git blob id of the pointer (what the real hub reports for an LFS file)."""
        pointer = self.pointer.encode()
        return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()


@dataclass(frozen=True)
class Repo:
    id: str
    variant: Variant
    layout: str  # "hf" or "meta": the layout at the top of the repo
    files: tuple[RepoFile, ...]  # in path order
    imported_at: str

    @property
    def commit(self) -> str:
        lines = "".join(f"{f.path}\0{f.size}\0{f.sha256}\n" for f in self.files)
        return hashlib.sha1(f"{self.id.lower()}\n{lines}".encode()).hexdigest()

    def file(self, path: str) -> RepoFile | None:
        return next((f for f in self.files if f.path == path), None)

    def resolves(self, revision: str) -> bool:
        return revision in (MAIN, self.commit)


def repo_ids(variant: Variant) -> dict[str, str]:
    """``{repo id: layout}`` under which ``variant`` is served."""
    ids = {variant.hf_repo or f"llamahub/{variant.name}": "hf"}
    if variant.hf_repo_native:
        ids[variant.hf_repo_native] = "meta"
    return ids


def find_repo(ctx: HubContext, repo_id: str) -> Repo | None:
    """The repo ``repo_id`` (case-insensitive), or None when no imported variant is served under it."""
    for row in ctx.store.imported():
        try:
            variant = ctx.registry.resolve(row["name"])
        except UnknownVariantError:
            continue
        for rid, layout in repo_ids(variant).items():
            if rid.lower() == repo_id.lower():
                return Repo(rid, variant, layout, _repo_files(ctx, variant, row["format"], layout, rid),
                            row["imported_at"])
    return None


def _repo_files(ctx: HubContext, variant: Variant, imported: str, layout: str,
                rid: str) -> tuple[RepoFile, ...]:
    files = _layout(ctx, variant, imported, layout)
    if layout == "hf" and rid != variant.hf_repo_native and not variant.hf_repo_native:
        files += [RepoFile(f"original/{f.path}", f.sha256, f.md5, f.size)
                  for f in _layout(ctx, variant, imported, "meta")]
    return tuple(sorted(files, key=lambda f: f.path))


def _layout(ctx: HubContext, variant: Variant, imported: str, layout: str) -> list[RepoFile]:
    """The files of ``variant`` in ``layout``, with paths relative to that layout's model folder."""
    rows = ctx.store.files([variant.name]) if layout == imported else converted(ctx, variant.name)
    if layout == "hf":
        prefix = f"{variant.name}/"
        return [RepoFile(r["path"][len(prefix):], r["sha256"], r["md5"], int(r["size"]))
                for r in rows if r["path"].startswith(prefix)]
    prefix = f"{variant.meta_folder}/"
    return [RepoFile(r["path"].removeprefix(prefix), r["sha256"], r["md5"], int(r["size"])) for r in rows]


def converted(ctx: HubContext, variant: str) -> list[dict]:
    """The rows of ``variant``'s layout converted at import."""
    query = select(t.layout_files).where(t.layout_files.c.variant == variant).order_by(t.layout_files.c.path)
    with ctx.store.read() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def downloads(ctx: HubContext, repo_id: str) -> int:
    """Files of ``repo_id`` downloaded through the HF protocol (one per whole-file GET)."""
    query = (select(func.count()).select_from(t.audit)
             .where(t.audit.c.action == "hf.download", t.audit.c.target == repo_id))
    with ctx.store.read() as conn:
        return int(conn.execute(query).scalar_one())


# --- raw request paths ---------------------------------------------------------------------


def segments(raw: str) -> list[str] | None:
    """The percent-decoded segments of a raw path (split BEFORE decoding), None when malformed."""
    try:
        out = [unquote(p, errors="strict") for p in raw.split("/")]
    except UnicodeDecodeError:
        return None
    return None if any(not p or "\0" in p for p in out) else out


def split_repo(parts: list[str], keywords: tuple[str, ...]) -> tuple[str, str | None, list[str]] | None:
    """``(repo id, keyword, rest)``: the repo id is one or two segments, the keyword (if any) follows it."""
    for n in (2, 1):
        if len(parts) > n and parts[n] in keywords and all(_repo_part(p) for p in parts[:n]):
            return "/".join(parts[:n]), parts[n], parts[n + 1:]
    if len(parts) in (1, 2) and all(_repo_part(p) for p in parts):
        return "/".join(parts), None, []
    return None


def _repo_part(part: str) -> bool:
    """A namespace or name as the Hugging Face Hub allows them (no ``..`` or ``--`` inside)."""
    return bool(_REPO_PART.match(part)) and ".." not in part and "--" not in part
