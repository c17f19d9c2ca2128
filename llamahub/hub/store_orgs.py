"""Organisations as records, memberships, invitations and named operators.

An organisation is created by an operator (verified at once) or by the first user who names it
at registration (unverified until an operator verifies it; that user is its admin). A later
user naming the same organisation (compared casefolded, spaces trimmed) is only a *pending*
member: grants, requests and MAU declarations of the organisation are not theirs until an
operator or the organisation's admin approves them, or they register with an invitation the
organisation's admin issued. Operators are named accounts; their admin tokens name them in the
audit log (``operator:<name>``).
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from llamahub.hub import schema as t
from llamahub.hub.errors import ConflictError, ForbiddenError, NotFoundError
from llamahub.hub.store_base import StoreBase, new_id, org_key, token_hash, utcnow

ACTIVE, PENDING = "active", "pending"
VERIFIED, UNVERIFIED = "verified", "unverified"


class OrgStore(StoreBase):
    """Organisations, memberships, invitations, operators."""

    # --- organisations ---------------------------------------------------------------------------

    def create_org(self, name: str, *, by: str, verified: bool) -> dict:
        with self.write() as conn:
            return self.insert_org(conn, name, by=by, verified=verified)

    def insert_org(self, conn: Connection, name: str, *, by: str, verified: bool) -> dict:
        now = utcnow()
        row = {"id": new_id("o_"), "name": name.strip(), "name_key": org_key(name),
               "status": VERIFIED if verified else UNVERIFIED, "created_by": by, "created_at": now,
               "verified_at": now if verified else None, "verified_by": by if verified else None}
        same = select(t.organisations.c.id).where(t.organisations.c.name_key == row["name_key"])
        if conn.execute(same).first():
            raise ConflictError(f"an organisation named {name.strip()!r} exists", code="organisation_exists",
                                hint="GET /api/admin/organisations lists them; users join it by approval or "
                                     "invitation")
        conn.execute(insert(t.organisations).values(**row))
        self.audit(conn, by, "org.create", row["id"], name=row["name"], status=row["status"])
        return row

    def get_org(self, org_id: str) -> dict:
        with self.read() as conn:
            row = conn.execute(select(t.organisations).where(t.organisations.c.id == org_id)).first()
        if row is None:
            raise NotFoundError(f"no organisation {org_id}", code="unknown_organisation",
                                hint="GET /api/admin/organisations lists them")
        return dict(row._mapping)

    def org_named(self, name: str) -> dict | None:
        with self.read() as conn:
            query = select(t.organisations).where(t.organisations.c.name_key == org_key(name))
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    def organisations(self) -> list[dict]:
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(select(t.organisations)
                                                           .order_by(t.organisations.c.created_at))]

    def verify_org(self, org_id: str, *, by: str) -> dict:
        with self.write() as conn:
            self.verify_in(conn, org_id, by=by)
        return self.get_org(org_id)

    def verify_in(self, conn: Connection, org_id: str, *, by: str) -> None:
        row = conn.execute(select(t.organisations).where(t.organisations.c.id == org_id)).first()
        if row is None:
            raise NotFoundError(f"no organisation {org_id}", code="unknown_organisation")
        if row.status != VERIFIED:
            conn.execute(update(t.organisations).where(t.organisations.c.id == org_id)
                         .values(status=VERIFIED, verified_at=utcnow(), verified_by=by))
            self.audit(conn, by, "org.verify", org_id, name=row.name)

    # --- memberships -----------------------------------------------------------------------------

    def join_at_registration(self, conn: Connection, user: dict, invitation: str | None) -> dict:
        """Inside ``create_user``'s transaction: the membership a new user gets (see module doc)."""
        actor, now = f"user:{user['id']}", utcnow()
        if invitation:
            invite = self._invitation(conn, invitation, user["email"])
            membership = {"user_id": user["id"], "org_id": invite["org_id"], "role": "member",
                          "status": ACTIVE, "created_at": now, "decided_at": now,
                          "decided_by": invite["created_by"]}
            conn.execute(update(t.invitations).where(t.invitations.c.token_sha256 == invite["token_sha256"])
                         .values(used_at=now))
            action = "org.join_by_invitation"
        else:
            org = conn.execute(select(t.organisations)
                               .where(t.organisations.c.name_key == user["organisation_key"])).first()
            if org is None:
                created = self.insert_org(conn, user["organisation"], by=actor, verified=False)
                membership = {"user_id": user["id"], "org_id": created["id"], "role": "admin",
                              "status": ACTIVE, "created_at": now, "decided_at": now, "decided_by": actor}
                action = "org.join_as_founder"
            else:
                membership = {"user_id": user["id"], "org_id": org.id, "role": "member", "status": PENDING,
                              "created_at": now, "decided_at": None, "decided_by": None}
                action = "org.join_request"
        conn.execute(insert(t.memberships).values(**membership))
        self.audit(conn, actor, action, membership["org_id"], status=membership["status"])
        return membership

    def membership(self, user_id: str) -> dict | None:
        """The user's membership joined with its organisation (``org_name``, ``org_status``)."""
        query = (select(t.memberships, t.organisations.c.name.label("org_name"),
                        t.organisations.c.status.label("org_status"))
                 .join(t.organisations, t.organisations.c.id == t.memberships.c.org_id)
                 .where(t.memberships.c.user_id == user_id))
        with self.read() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    def members(self, org_id: str) -> list[dict]:
        query = (select(t.memberships, t.users.c.email, t.users.c.name)
                 .join(t.users, t.users.c.id == t.memberships.c.user_id)
                 .where(t.memberships.c.org_id == org_id).order_by(t.memberships.c.created_at))
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def approve_member(self, org_id: str, user_id: str, *, by: str) -> dict:
        with self.write() as conn:
            key = (t.memberships.c.user_id == user_id) & (t.memberships.c.org_id == org_id)
            row = conn.execute(select(t.memberships).where(key)).first()
            if row is None:
                raise NotFoundError(f"{user_id} has not asked to join {org_id}", code="unknown_member",
                                    hint="GET /api/organisations/{id}/members lists who asked")
            if row.status != ACTIVE:
                conn.execute(update(t.memberships).where(key).values(status=ACTIVE, decided_at=utcnow(),
                                                                     decided_by=by))
                self.audit(conn, by, "org.member_approve", org_id, user=user_id)
        return self.membership(user_id) or {}

    def require_org_admin(self, user_id: str, org_id: str) -> None:
        m = self.membership(user_id)
        if m is None or m["org_id"] != org_id or m["role"] != "admin" or m["status"] != ACTIVE:
            raise ForbiddenError("only the organisation's admin (or an operator) may do this",
                                 code="org_admin_required", hint="ask your organisation's admin")

    # --- invitations -----------------------------------------------------------------------------

    def invite(self, org_id: str, email: str, *, by: str) -> str:
        token = "lhi_" + secrets.token_urlsafe(24)
        with self.write() as conn:
            conn.execute(insert(t.invitations).values(token_sha256=token_hash(token), org_id=org_id,
                                                      email=email.strip().lower(), created_by=by,
                                                      created_at=utcnow(), used_at=None))
            self.audit(conn, by, "org.invite", org_id, email=email.strip().lower())
        return token

    @staticmethod
    def _invitation(conn: Connection, token: str, email: str) -> dict:
        query = select(t.invitations).where(t.invitations.c.token_sha256 == token_hash(token))
        row = conn.execute(query).first()
        if row is None or row.used_at is not None or row.email != email:
            raise ForbiddenError("this invitation is unknown, used, or for another email address",
                                 code="invalid_invitation",
                                 hint="ask the organisation's admin for a new invitation to your address")
        return dict(row._mapping)

    # --- operators -------------------------------------------------------------------------------

    def create_operator(self, name: str, email: str | None = None, *,
                        by: str = "operator") -> tuple[dict, str]:
        """A named operator account with a fresh admin token; returns (operator, token)."""
        op = {"id": new_id("op_"), "name": name.strip(), "email": (email or "").strip().lower() or None,
              "created_at": utcnow()}
        token = "lha_" + secrets.token_urlsafe(32)
        try:
            with self.write() as conn:
                conn.execute(insert(t.operators).values(**op))
                conn.execute(insert(t.tokens).values(token_sha256=token_hash(token), role="admin",
                                                     user_id=None, created_at=op["created_at"],
                                                     operator_id=op["id"]))
                self.audit(conn, by, "operator.create", op["id"], name=op["name"])
        except IntegrityError as e:
            raise ConflictError(f"an operator named {op['name']!r} exists", code="operator_exists",
                                hint="choose another name") from e
        return op, token

    def operator(self, operator_id: str | None) -> dict[str, Any]:
        with self.read() as conn:
            row = conn.execute(select(t.operators).where(t.operators.c.id == operator_id)).first()
        return dict(row._mapping) if row else {"id": None, "name": "admin", "email": None, "created_at": None}


def actor_of(operator: dict[str, Any] | None) -> str:
    """How the audit log names an operator."""
    return f"operator:{operator['name']}" if operator else "operator"
