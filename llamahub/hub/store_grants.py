"""Enterprise grants: scoped (families or variants, MAU cap, permitted AUP categories, dates)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, insert, select, update

from llamahub.hub import schema as t
from llamahub.hub.errors import NotFoundError
from llamahub.hub.store_base import new_id, utcnow
from llamahub.hub.store_orgs import OrgStore


class GrantStore(OrgStore):
    """Grants belong to an organisation record (``org_id``); granting verifies the organisation."""

    def create_grant(self, org_id: str, families: Sequence[str], max_mau: int | None,
                     not_before: str, expires: str | None, actor: str = "operator", **scope: Any) -> dict:
        with self.write() as conn:
            return self.insert_grant(conn, org_id, families, max_mau, not_before, expires, actor, **scope)

    def insert_grant(self, conn: Connection, org_id: str, families: Sequence[str], max_mau: int | None,
                     not_before: str, expires: str | None, actor: str, *, variants: Sequence[str] = (),
                     uses: Sequence[str] = (), note: str = "") -> dict:
        """A new grant (and its audit row) inside the caller's transaction. ``variants`` narrows the
        families to those variants; ``uses`` are AUP categories the grant permits (an exception)."""
        org = conn.execute(select(t.organisations).where(t.organisations.c.id == org_id)).first()
        if org is None:
            raise NotFoundError(f"no organisation {org_id}", code="unknown_organisation",
                                hint="GET /api/admin/organisations lists them")
        self.verify_in(conn, org_id, by=actor)  # an operator granting to an organisation vouches for it
        row = {"id": new_id("g_"), "organisation": org.name, "organisation_key": org.name_key,
               "org_id": org_id, "families": json.dumps(list(families)),
               "variants": json.dumps(list(variants)),
               "uses": json.dumps(list(uses)), "max_mau": max_mau, "not_before": not_before,
               "expires": expires, "created_at": utcnow(), "revoked_at": None}
        conn.execute(insert(t.grants).values(**row))
        self.audit(conn, actor, "grant.create", row["id"], organisation=org.name, org_id=org_id,
                   families=list(families), variants=list(variants), uses=list(uses), max_mau=max_mau,
                   not_before=not_before, expires=expires, note=note)
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

    def grants(self, org_id: str | None = None) -> list[dict]:
        """Every grant, or one organisation's (by its record's id), oldest first."""
        query = select(t.grants).order_by(t.grants.c.created_at)
        if org_id is not None:
            query = query.where(t.grants.c.org_id == org_id)
        with self.read() as conn:
            return [_grant_dict(r._mapping) for r in conn.execute(query)]


    def revoked_grants(self, grant_ids: Sequence[str] | None = None) -> dict[str, str]:
        """{grant id: revoked_at} of revoked grants (all of them, or among ``grant_ids``)."""
        query = select(t.grants.c.id, t.grants.c.revoked_at).where(t.grants.c.revoked_at.is_not(None))
        if grant_ids is not None:
            query = query.where(t.grants.c.id.in_(list(grant_ids)))
        with self.read() as conn:
            return {r.id: r.revoked_at for r in conn.execute(query)}


def _grant_dict(row: Any) -> dict:
    out = {k: row[k] for k in ("id", "organisation", "org_id", "max_mau", "not_before", "expires",
                               "created_at", "revoked_at")}
    for key in ("families", "variants", "uses"):
        out[key] = json.loads(row[key] or "[]")
    return out

