"""Enterprise grants."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, insert, select, update

from llamahub.hub import schema as t
from llamahub.hub.errors import NotFoundError
from llamahub.hub.store_base import StoreBase, new_id, org_key, utcnow


class GrantStore(StoreBase):
    # --- enterprise grants -----------------------------------------------------------------------

    def create_grant(self, organisation: str, families: Sequence[str], max_mau: int | None,
                     not_before: str, expires: str | None, actor: str = "admin") -> dict:
        with self.write() as conn:
            return self.insert_grant(conn, organisation, families, max_mau, not_before, expires, actor)

    def insert_grant(self, conn: Connection, organisation: str, families: Sequence[str], max_mau: int | None,
                     not_before: str, expires: str | None, actor: str) -> dict:
        """A new grant (and its audit row) inside the caller's transaction."""
        row = {"id": new_id("g_"), "organisation": organisation.strip(),
               "organisation_key": org_key(organisation), "families": json.dumps(list(families)),
               "max_mau": max_mau, "not_before": not_before, "expires": expires, "created_at": utcnow(),
               "revoked_at": None}
        conn.execute(insert(t.grants).values(**row))
        self.audit(conn, actor, "grant.create", row["id"], organisation=row["organisation"],
                   families=list(families), max_mau=max_mau, not_before=not_before, expires=expires)
        return _grant_dict(row)

    def revoke_grant(self, grant_id: str, actor: str = "admin") -> dict:
        with self.write() as conn:
            row = conn.execute(select(t.grants).where(t.grants.c.id == grant_id)).first()
            if row is None:
                raise NotFoundError(f"no grant {grant_id}", code="unknown_grant",
                                    hint="GET /api/admin/grants lists them")
            if row.revoked_at is None:
                conn.execute(update(t.grants).where(t.grants.c.id == grant_id).values(revoked_at=utcnow()))
                self.audit(conn, actor, "grant.revoke", grant_id)
            row = conn.execute(select(t.grants).where(t.grants.c.id == grant_id)).one()
        return _grant_dict(row._mapping)

    def grants(self, organisation: str | None = None) -> list[dict]:
        query = select(t.grants).order_by(t.grants.c.created_at)
        if organisation is not None:
            query = query.where(t.grants.c.organisation_key == org_key(organisation))
        with self.read() as conn:
            return [_grant_dict(r._mapping) for r in conn.execute(query)]


def _grant_dict(row: Any) -> dict:
    out = {k: row[k] for k in ("id", "organisation", "max_mau", "not_before", "expires", "created_at",
                               "revoked_at")}
    out["families"] = json.loads(row["families"])
    return out

