"""Users, API tokens and license acceptances."""

from __future__ import annotations

import secrets

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from llamahub.hub import schema as t
from llamahub.hub.errors import ConflictError, NotFoundError
from llamahub.hub.store_base import new_id, org_key, token_hash, utcnow
from llamahub.hub.store_orgs import OrgStore


class AccountStore(OrgStore):
    """Users, tokens and acceptances."""

    # --- users and tokens ------------------------------------------------------------------------

    def create_user(self, email: str, name: str, organisation: str, country: str,
                    invitation: str | None = None) -> tuple[dict, str]:
        """Register a user with a fresh API token; returns (user, token). The token is not stored.

        The user joins an organisation record as :mod:`store_orgs` describes (``invitation``: at once).
        """
        user = {"id": new_id("u_"), "email": email.strip().lower(), "name": name.strip(),
                "organisation": organisation.strip(), "organisation_key": org_key(organisation),
                "country": country.strip().upper(), "created_at": utcnow()}
        token = "lh_" + secrets.token_urlsafe(32)
        try:
            with self.write() as conn:
                conn.execute(insert(t.users).values(**user))
                conn.execute(insert(t.tokens).values(token_sha256=token_hash(token), role="user",
                                                     user_id=user["id"], created_at=user["created_at"]))
                self.audit(conn, f"user:{user['id']}", "user.register", user["id"],
                           email=user["email"], organisation=user["organisation"])
                joined = self.join_at_registration(conn, user, invitation)
                if invitation:
                    org = conn.execute(select(t.organisations.c.name)
                                       .where(t.organisations.c.id == joined["org_id"])).one()
                    user |= {"organisation": org.name, "organisation_key": org_key(org.name)}
                    conn.execute(update(t.users).where(t.users.c.id == user["id"])
                                 .values(organisation=org.name, organisation_key=org_key(org.name)))
        except IntegrityError as e:
            raise ConflictError(f"a user with email {user['email']} is already registered",
                                code="email_taken", hint="use that account's API token") from e
        return user, token

    def create_admin_token(self, name: str = "operator") -> str:
        """An admin token of a new operator account called ``name``."""
        return self.create_operator(name)[1]

    def token_owner(self, token: str) -> tuple[str, dict | None] | None:
        """("admin", operator) or ("user", user) for a live token, None for an unknown or revoked one."""
        with self.read() as conn:
            row = conn.execute(select(t.tokens).where(t.tokens.c.token_sha256 == token_hash(token),
                                                      t.tokens.c.revoked_at.is_(None))).first()
            if row is None:
                return None
            if row.role == "admin":
                op = conn.execute(select(t.operators).where(t.operators.c.id == row.operator_id)).first()
                return "admin", dict(op._mapping) if op else {"id": None, "name": "admin"}
            user = conn.execute(select(t.users).where(t.users.c.id == row.user_id)).first()
        return ("user", dict(user._mapping)) if user else None

    def get_user(self, user_id: str) -> dict:
        with self.read() as conn:
            row = conn.execute(select(t.users).where(t.users.c.id == user_id)).first()
        if row is None:
            raise NotFoundError(f"no user {user_id}", code="unknown_user")
        return dict(row._mapping)

    # --- license acceptances ---------------------------------------------------------------------

    def accept_license(self, user_id: str, license_id: str, text_sha256: str) -> tuple[dict, bool]:
        """Record an acceptance with its audit row in one transaction; (row, created).

        Accepting a version already accepted returns the existing record unchanged.
        """
        with self.write(lock=[f"accept:{user_id}:{license_id}"]) as conn:
            existing = self._acceptance(conn, user_id, license_id)
            if existing is not None:
                return existing, False
            row = {"id": new_id("a_"), "user_id": user_id, "license_id": license_id,
                   "text_sha256": text_sha256, "accepted_at": utcnow()}
            conn.execute(insert(t.acceptances).values(**row))
            self.audit(conn, f"user:{user_id}", "license.accept", license_id, text_sha256=text_sha256,
                       acceptance_id=row["id"])
        return row, True

    @staticmethod
    def _acceptance(conn: Connection, user_id: str, license_id: str) -> dict | None:
        row = conn.execute(select(t.acceptances).where(t.acceptances.c.user_id == user_id,
                                                       t.acceptances.c.license_id == license_id)).first()
        return dict(row._mapping) if row else None

    def acceptances(self, user_id: str) -> dict[str, dict]:
        """license id → acceptance row."""
        with self.read() as conn:
            rows = conn.execute(select(t.acceptances).where(t.acceptances.c.user_id == user_id))
            return {r.license_id: dict(r._mapping) for r in rows}
