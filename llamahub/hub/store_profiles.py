"""Declared profiles: MAU (today's and per license version, as of its release date), intended
uses, certifications. Every change is appended to ``profile_history`` and audited, atomically."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from llamahub.hub import schema as t
from llamahub.hub.store_base import StoreBase, utcnow

FIELDS = ("mau", "intended_uses", "certifications", "eu_domiciled", "mau_at")
EMPTY: dict[str, Any] = {"mau": None, "intended_uses": [], "certifications": [], "eu_domiciled": False,
                         "mau_at": {}, "mau_declarations": [], "updated_at": None}


class ProfileStore(StoreBase):
    """Profiles and dated MAU declarations."""

    def get_profile(self, user_id: str) -> dict:
        """The declared profile; a user who never declared MAU has ``mau`` None (not 0)."""
        with self.read() as conn:
            return self._profile(conn, user_id)

    def _profile(self, conn: Connection, user_id: str) -> dict:
        owner = self.mau_owner(conn, user_id)
        row = conn.execute(select(t.profiles).where(t.profiles.c.user_id == user_id)).first()
        declared = [dict(r._mapping) for r in conn.execute(
            select(t.mau_declarations).where(t.mau_declarations.c.owner_id == owner)
            .order_by(t.mau_declarations.c.license_id))]
        out = dict(EMPTY) if row is None else _profile_dict(row._mapping)
        out["mau_at"] = {d["license_id"]: d["mau"] for d in declared}
        out["mau_declarations"] = [{k: d[k] for k in ("license_id", "as_of", "mau", "declared_at")}
                                   for d in declared]
        return out

    def set_profile(self, user_id: str, changes: Mapping[str, Any], *, replace: bool = False,
                    as_of: Mapping[str, str] | None = None) -> dict:
        """Change the fields in ``changes`` only (``replace``: every field, absent ones reset).

        ``changes["mau_at"]`` maps license ids to figures; ``as_of`` gives the date each refers to.
        """
        now = utcnow()
        with self.write() as conn:
            before = self._profile(conn, user_id)
            after = dict(EMPTY) if replace else {k: before[k] for k in FIELDS}
            after.update({k: v for k, v in changes.items() if k in FIELDS and (v is not None or k == "mau")})
            mau_at = dict(after.pop("mau_at") or {})
            if not replace:
                mau_at = {**before["mau_at"], **mau_at}
            values = {"mau": after["mau"] or 0, "mau_declared": after["mau"] is not None,
                      "intended_uses": json.dumps(list(after["intended_uses"])),
                      "certifications": json.dumps(list(after["certifications"])),
                      "eu_domiciled": bool(after["eu_domiciled"]), "updated_at": now}
            key = t.profiles.c.user_id == user_id
            if conn.execute(select(t.profiles.c.user_id).where(key)).first() is None:
                conn.execute(insert(t.profiles).values(user_id=user_id, **values))
            else:
                conn.execute(update(t.profiles).where(key).values(**values))
            self._declare(conn, user_id, mau_at, before["mau_at"], as_of or {}, now)
            profile = self._profile(conn, user_id)
            logged = {k: v for k, v in profile.items() if k != "updated_at"}
            conn.execute(insert(t.profile_history).values(user_id=user_id, changed_at=now,
                                                          profile=json.dumps(logged, sort_keys=True)))
            old = {k: v for k, v in before.items() if k != "updated_at"} if before["updated_at"] else None
            self.audit(conn, f"user:{user_id}", "profile.update", user_id, before=old, after=logged)
        return profile

    @staticmethod
    def mau_owner(conn: Connection, user_id: str) -> str:
        """Whose MAU a user declares: their organisation's id when an active member, else their own."""
        row = conn.execute(select(t.memberships.c.org_id).where(
            t.memberships.c.user_id == user_id, t.memberships.c.status == "active")).first()
        return row.org_id if row else user_id

    def _declare(self, conn: Connection, user_id: str, mau_at: Mapping[str, int], had: Mapping[str, int],
                 as_of: Mapping[str, str], now: str) -> None:
        table, owner = t.mau_declarations, self.mau_owner(conn, user_id)
        gone = [lid for lid in had if lid not in mau_at]
        if gone:
            conn.execute(delete(table).where(table.c.owner_id == owner, table.c.license_id.in_(gone)))
        for license_id, mau in mau_at.items():
            if had.get(license_id) == mau:
                continue
            conn.execute(delete(table).where(table.c.owner_id == owner, table.c.license_id == license_id))
            conn.execute(insert(table).values(owner_id=owner, license_id=license_id, mau=mau,
                                              as_of=as_of.get(license_id, ""), declared_at=now))

    def profile_history(self, user_id: str) -> list[dict]:
        query = (select(t.profile_history).where(t.profile_history.c.user_id == user_id)
                 .order_by(t.profile_history.c.id))
        with self.read() as conn:
            rows = list(conn.execute(query))
        return [{**EMPTY, "changed_at": r.changed_at, **json.loads(r.profile)} for r in rows]


def _profile_dict(row: Any) -> dict:
    declared = row.get("mau_declared", True)
    return {"mau": row["mau"] if declared else None, "intended_uses": json.loads(row["intended_uses"]),
            "certifications": json.loads(row["certifications"]), "eu_domiciled": bool(row["eu_domiciled"]),
            "mau_at": {}, "mau_declarations": [], "updated_at": row["updated_at"]}
