"""The hub's database: SQLAlchemy Core over SQLite (WAL, the default) or PostgreSQL (same code).

Every public write method is ONE transaction that also appends its audit row, so a request that
fails half-way leaves nothing behind. Writes never race (see
:mod:`store_base`: SQLite's ``BEGIN IMMEDIATE``, PostgreSQL advisory locks); reads are ordinary.
Rows come back as plain dicts. API tokens are stored only as their sha256.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, func, insert, select, update

from llamahub.hub import schema as t
from llamahub.hub.errors import ImportRefusedError, LinkError, NotFoundError
from llamahub.hub.store_accounts import AccountStore
from llamahub.hub.store_base import new_id, org_key, sqlite_url, token_hash, utcnow
from llamahub.hub.store_grants import GrantStore
from llamahub.hub.store_profiles import ProfileStore

__all__ = ["FileRecord", "Store", "new_id", "org_key", "sqlite_url", "token_hash", "utcnow"]


@dataclass(frozen=True)
class FileRecord:
    """One file of an imported variant, as served: path under ``/dl/<family>/`` and its blob."""

    path: str
    sha256: str
    md5: str
    size: int



class Store(AccountStore, ProfileStore, GrantStore):
    """All reads and writes of the hub's state (the mixins hold users, profiles and grants)."""

    # --- signing keys ----------------------------------------------------------------------------

    def add_key(self, kid: str, public_pem: str, actor: str = "operator") -> None:
        with self.write() as conn:
            conn.execute(insert(t.signing_keys).values(key_id=kid, public_pem=public_pem,
                                                       created_at=utcnow(), revoked_at=None))
            self.audit(conn, actor, "key.create", kid)

    def revoke_key(self, kid: str, actor: str = "admin") -> None:
        with self.write() as conn:
            row = conn.execute(select(t.signing_keys).where(t.signing_keys.c.key_id == kid)).first()
            if row is None:
                raise NotFoundError(f"no signing key {kid}", code="unknown_key",
                                    hint="GET /.well-known/llamahub-keys.json lists them")
            if row.revoked_at is None:
                conn.execute(update(t.signing_keys).where(t.signing_keys.c.key_id == kid)
                             .values(revoked_at=utcnow()))
                self.audit(conn, actor, "key.revoke", kid)

    def signing_keys(self) -> list[dict]:
        """Every signing key, oldest first."""
        query = select(t.signing_keys).order_by(t.signing_keys.c.created_at, t.signing_keys.c.key_id)
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    # --- imported variants and their files -------------------------------------------------------

    def record_variant(self, name: str, family: str, license_id: str, fmt: str,
                       records: Sequence[FileRecord], actor: str = "operator",
                       converted: Sequence[FileRecord] = ()) -> None:
        """Record (or replace) an imported variant, its files and their ``converted`` other layout,
        refusing conflicting shared files."""
        with self.write() as conn:
            self._check_shared_files(conn, name, family, records)
            existed = conn.execute(select(t.variants.c.name).where(t.variants.c.name == name)).first()
            if existed:
                conn.execute(t.files.delete().where(t.files.c.variant == name))
                conn.execute(t.layout_files.delete().where(t.layout_files.c.variant == name))
                conn.execute(t.variants.delete().where(t.variants.c.name == name))
            conn.execute(insert(t.variants).values(name=name, family=family, license_id=license_id,
                                                   format=fmt, imported_at=utcnow()))
            conn.execute(insert(t.files), [{"variant": name, "path": r.path, "sha256": r.sha256,
                                            "md5": r.md5, "size": r.size} for r in records])
            if converted:
                conn.execute(insert(t.layout_files), [{"variant": name, "path": r.path, "sha256": r.sha256,
                                                       "md5": r.md5, "size": r.size} for r in converted])
            self.audit(conn, actor, "variant.import", name, family=family, format=fmt,
                       files=len(records), bytes=sum(r.size for r in records), replaced=bool(existed),
                       converted=len(converted))

    @staticmethod
    def _check_shared_files(conn: Connection, name: str, family: str, records: Sequence[FileRecord]) -> None:
        paths = {r.path: r.sha256 for r in records}
        query = (select(t.files.c.path, t.files.c.sha256, t.files.c.variant)
                 .join(t.variants, t.variants.c.name == t.files.c.variant)
                 .where(t.variants.c.family == family, t.variants.c.name != name,
                        t.files.c.path.in_(list(paths))))
        for row in conn.execute(query):
            if row.sha256 != paths[row.path]:
                raise ImportRefusedError(
                    f"{row.path} differs from the copy already imported with {row.variant}; both are "
                    f"served at the same path of the {family} download",
                    code="conflicting_file",
                    hint=f"import {name} from the same download as {row.variant}, or re-import "
                         f"{row.variant} from this one")

    def imported(self, family: str | None = None) -> list[dict]:
        query = select(t.variants).order_by(t.variants.c.name)
        if family is not None:
            query = query.where(t.variants.c.family == family)
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def files(self, variant_names: Sequence[str]) -> list[dict]:
        """Files of these variants, shared paths once, in path order."""
        query = (select(t.files).where(t.files.c.variant.in_(list(variant_names)))
                 .order_by(t.files.c.path, t.files.c.variant))
        out: dict[str, dict] = {}
        with self.read() as conn:
            for row in conn.execute(query):
                out.setdefault(row.path, dict(row._mapping))
        return list(out.values())

    def file_at(self, variant_names: Sequence[str], path: str) -> dict | None:
        query = (select(t.files).where(t.files.c.variant.in_(list(variant_names)), t.files.c.path == path)
                 .order_by(t.files.c.variant).limit(1))
        with self.read() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    def license_file(self, license_id: str, name: str = "LICENSE") -> dict | None:
        """The newest imported ``LICENSE`` (or ``name``) of a variant under ``license_id``."""
        query = (select(t.files).join(t.variants, t.variants.c.name == t.files.c.variant)
                 .where(t.variants.c.license_id == license_id, t.files.c.path == name)
                 .order_by(t.variants.c.imported_at.desc()).limit(1))
        with self.read() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    def blob_referenced(self, sha256: str) -> bool:
        with self.read() as conn:
            return any(conn.execute(select(func.count()).select_from(table)
                                    .where(table.c.sha256 == sha256)).scalar_one()
                       for table in (t.files, t.layout_files))

    # --- links and download counters -------------------------------------------------------------

    def create_link(self, link_id: str, user_id: str, family: str, kid: str, policy: dict,
                    expires: int, max_downloads: int, *, grants: Sequence[str] = (), **detail: Any) -> None:
        """A link and the grants it relied on (a revoked one stops the link at download)."""
        with self.write(lock=()) as conn:  # a new row only: beside any other write
            conn.execute(insert(t.links).values(
                id=link_id, user_id=user_id, family=family, key_id=kid,
                policy=json.dumps(policy, sort_keys=True), issued_at=utcnow(), expires=expires,
                max_downloads=max_downloads, revoked_at=None, grant_ids=json.dumps(list(grants))))
            self.audit(conn, f"user:{user_id}", "link.issue", link_id, family=family, key_id=kid,
                       expires=expires, max_downloads=max_downloads, grants=list(grants), **detail)

    def get_link(self, link_id: str) -> dict | None:
        with self.read() as conn:
            row = conn.execute(select(t.links).where(t.links.c.id == link_id)).first()
        return _link_dict(row._mapping) if row else None

    def links_of(self, user_id: str) -> list[dict]:
        query = select(t.links).where(t.links.c.user_id == user_id).order_by(t.links.c.issued_at)
        with self.read() as conn:
            return [_link_dict(r._mapping) for r in conn.execute(query)]

    def revoke_link(self, link_id: str, user_id: str) -> dict:
        """Revoke a link of ``user_id``; another user's link is reported as not found."""
        with self.write() as conn:
            row = conn.execute(select(t.links).where(t.links.c.id == link_id,
                                                     t.links.c.user_id == user_id)).first()
            if row is None:
                raise NotFoundError(f"you have no link {link_id}", code="unknown_link",
                                    hint="GET /api/links lists your links")
            if row.revoked_at is None:
                conn.execute(update(t.links).where(t.links.c.id == link_id).values(revoked_at=utcnow()))
                self.audit(conn, f"user:{user_id}", "link.revoke", link_id)
            row = conn.execute(select(t.links).where(t.links.c.id == link_id)).one()
        return _link_dict(row._mapping)

    def reserve_bytes(self, link_id: str, path: str, take: int, *, need: int, allowance: int) -> int:
        """Count ``take`` more bytes of ``path`` as served through ``link_id``; returns the total after.

        Refused (LinkError, HTTP 403) when ``need`` bytes do not fit in what is left of ``allowance``
        (the link's cap × the file's size). The first bytes of a file through a link are audited.
        """
        now = utcnow()
        key = (t.served.c.link_id == link_id) & (t.served.c.path == path)
        with self.write(lock=[f"served:{link_id}:{path}"]) as conn:
            row = conn.execute(select(t.served.c.bytes).where(key)).first()
            used = row.bytes if row else 0
            if used + need > allowance:
                left = max(allowance - used, 0)
                raise LinkError(f"this link has {left:,} of its {allowance:,} bytes of {path} left, and this "
                                f"request asks for {need:,}", code="download_cap_reached",
                                hint="request a new link (`llamahub link <family>`); each link serves each "
                                     "file at most its download cap times its size, resumes included")
            if row is None:
                conn.execute(insert(t.served).values(link_id=link_id, path=path, bytes=take, first_at=now,
                                                     last_at=now))
                self.audit(conn, "link:" + link_id, "download.start", path)
            else:
                conn.execute(update(t.served).where(key).values(bytes=t.served.c.bytes + take, last_at=now))
        return used + take

    def release_bytes(self, link_id: str, path: str, unsent: int) -> None:
        """Give back bytes counted by :meth:`reserve_bytes` that were never sent (a client went away)."""
        key = (t.served.c.link_id == link_id) & (t.served.c.path == path)
        with self.write(lock=[f"served:{link_id}:{path}"]) as conn:
            conn.execute(update(t.served).where(key).values(
                bytes=case((t.served.c.bytes > unsent, t.served.c.bytes - unsent), else_=0)))

    def served_bytes(self, link_id: str) -> dict[str, int]:
        """path → bytes counted against the link's cap."""
        with self.read() as conn:
            query = select(t.served.c.path, t.served.c.bytes).where(t.served.c.link_id == link_id)
            rows = conn.execute(query)
            return {r.path: r.bytes for r in rows}


def _link_dict(row: Any) -> dict:
    out = dict(row)
    out["policy"] = json.loads(out["policy"])
    out["grant_ids"] = json.loads(out.get("grant_ids") or "[]")
    return out
