"""The hub's database: SQLAlchemy Core over SQLite (WAL, the default) or PostgreSQL (same code).

Every public write method is ONE transaction that also appends its audit row, so a request that
fails half-way leaves nothing behind. On SQLite, writes take the lock up front (``BEGIN
IMMEDIATE``) so read-then-write sequences never race; reads are ordinary deferred transactions.
Rows come back as plain dicts. API tokens are stored only as their sha256.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, case, create_engine, event, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from llamahub.hub import schema as t
from llamahub.hub.errors import ConflictError, ImportRefusedError, LinkError, NotFoundError

BUSY_TIMEOUT_MS = 10_000


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def new_id(prefix: str = "") -> str:
    return prefix + secrets.token_hex(8)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def org_key(organisation: str) -> str:
    return organisation.strip().casefold()


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'hub.db'}"


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_sqlite_begin)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


def _on_sqlite_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


@dataclass(frozen=True)
class FileRecord:
    """One file of an imported variant, as served: path under ``/dl/<family>/`` and its blob."""

    path: str
    sha256: str
    md5: str
    size: int


class Store:
    """All reads and writes of the hub's state."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine: Engine = self._engine(url)

    @classmethod
    def for_dir(cls, data_dir: Path) -> Store:
        """The SQLite store ``data_dir/hub.db`` (the folder is created if needed)."""
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        return cls(sqlite_url(data_dir))

    def _engine(self, url: str) -> Engine:
        if not self.is_sqlite:
            return create_engine(url, pool_pre_ping=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _on_sqlite_connect)
        event.listen(engine, "begin", _on_sqlite_begin)
        return engine

    def create_all(self) -> None:
        t.metadata.create_all(self.engine)
        if self.is_sqlite:
            with self.write() as conn:
                for ddl in t.sqlite_append_only_triggers():
                    conn.exec_driver_sql(ddl)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if self.is_sqlite:
                conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    # --- audit -----------------------------------------------------------------------------------

    @staticmethod
    def audit(conn: Connection, actor: str, action: str, target: str | None = None,
              **detail: Any) -> None:
        conn.execute(insert(t.audit).values(at=utcnow(), actor=actor, action=action, target=target,
                                            detail=json.dumps(detail, sort_keys=True)))

    def latest_audit(self, prefixes: Sequence[str], limit: int = 20) -> list[dict]:
        """The newest audit rows whose action starts with one of ``prefixes``, newest first."""
        query = (select(t.audit).where(or_(*(t.audit.c.action.startswith(p) for p in prefixes)))
                 .order_by(t.audit.c.id.desc()).limit(limit))
        with self.read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            row["detail"] = json.loads(row["detail"])
        return rows

    def record(self, actor: str, action: str, target: str | None = None, **detail: Any) -> None:
        """An audit row on its own (refusals, operator actions)."""
        with self.write() as conn:
            self.audit(conn, actor, action, target, **detail)

    def audit_log(self, *, after: int = 0, limit: int = 100, action: str | None = None) -> list[dict]:
        query = select(t.audit).where(t.audit.c.id > after).order_by(t.audit.c.id).limit(limit)
        if action:  # a prefix: "grant." is every grant action
            query = query.where(t.audit.c.action.startswith(action))
        with self.read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            row["detail"] = json.loads(row["detail"])
        return rows

    # --- users and tokens ------------------------------------------------------------------------

    def create_user(self, email: str, name: str, organisation: str, country: str) -> tuple[dict, str]:
        """Register a user with a fresh API token; returns (user, token). The token is not stored."""
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
        except IntegrityError as e:
            raise ConflictError(f"a user with email {user['email']} is already registered",
                                code="email_taken", hint="use that account's API token") from e
        return user, token

    def create_admin_token(self, actor: str = "operator") -> str:
        token = "lha_" + secrets.token_urlsafe(32)
        with self.write() as conn:
            conn.execute(insert(t.tokens).values(token_sha256=token_hash(token), role="admin",
                                                 user_id=None, created_at=utcnow()))
            self.audit(conn, actor, "admin_token.create")
        return token

    def token_owner(self, token: str) -> tuple[str, dict | None] | None:
        """("admin", None) or ("user", user) for a live token, None for an unknown or revoked one."""
        with self.read() as conn:
            row = conn.execute(select(t.tokens).where(t.tokens.c.token_sha256 == token_hash(token),
                                                      t.tokens.c.revoked_at.is_(None))).first()
            if row is None:
                return None
            if row.role == "admin":
                return "admin", None
            user = conn.execute(select(t.users).where(t.users.c.id == row.user_id)).first()
        return ("user", dict(user._mapping)) if user else None

    def get_user(self, user_id: str) -> dict:
        with self.read() as conn:
            row = conn.execute(select(t.users).where(t.users.c.id == user_id)).first()
        if row is None:
            raise NotFoundError(f"no user {user_id}", code="unknown_user")
        return dict(row._mapping)

    # --- profiles --------------------------------------------------------------------------------

    def get_profile(self, user_id: str) -> dict:
        """The declared profile; a user who never set one has MAU 0 and no intended uses."""
        with self.read() as conn:
            row = conn.execute(select(t.profiles).where(t.profiles.c.user_id == user_id)).first()
        if row is None:
            return {"mau": 0, "intended_uses": [], "certifications": [], "eu_domiciled": False,
                    "updated_at": None}
        return _profile_dict(row._mapping)

    def set_profile(self, user_id: str, *, mau: int, intended_uses: Sequence[str],
                    certifications: Sequence[str], eu_domiciled: bool) -> dict:
        """Replace the profile, append it to profile_history and audit the change, atomically."""
        now = utcnow()
        values = {"mau": mau, "intended_uses": json.dumps(list(intended_uses)),
                  "certifications": json.dumps(list(certifications)), "eu_domiciled": eu_domiciled,
                  "updated_at": now}
        with self.write() as conn:
            before = conn.execute(select(t.profiles).where(t.profiles.c.user_id == user_id)).first()
            if before is None:
                conn.execute(insert(t.profiles).values(user_id=user_id, **values))
            else:
                conn.execute(update(t.profiles).where(t.profiles.c.user_id == user_id).values(**values))
            profile = _profile_dict(values)
            conn.execute(insert(t.profile_history).values(user_id=user_id, changed_at=now,
                                                          profile=json.dumps(profile, sort_keys=True)))
            old = _profile_dict(before._mapping) if before is not None else None
            self.audit(conn, f"user:{user_id}", "profile.update", user_id, before=old, after=profile)
        return profile

    def profile_history(self, user_id: str) -> list[dict]:
        query = (select(t.profile_history).where(t.profile_history.c.user_id == user_id)
                 .order_by(t.profile_history.c.id))
        with self.read() as conn:
            return [{"changed_at": r.changed_at, **json.loads(r.profile)} for r in conn.execute(query)]

    # --- license acceptances ---------------------------------------------------------------------

    def accept_license(self, user_id: str, license_id: str, text_sha256: str) -> tuple[dict, bool]:
        """Record an acceptance with its audit row in one transaction; (row, created).

        Accepting a version already accepted returns the existing record unchanged.
        """
        with self.write() as conn:
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
                    expires: int, max_downloads: int, **detail: Any) -> None:
        with self.write() as conn:
            conn.execute(insert(t.links).values(
                id=link_id, user_id=user_id, family=family, key_id=kid,
                policy=json.dumps(policy, sort_keys=True), issued_at=utcnow(), expires=expires,
                max_downloads=max_downloads, revoked_at=None))
            self.audit(conn, f"user:{user_id}", "link.issue", link_id, family=family, key_id=kid,
                       expires=expires, max_downloads=max_downloads, **detail)

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
        with self.write() as conn:
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
        with self.write() as conn:
            conn.execute(update(t.served).where(key).values(
                bytes=case((t.served.c.bytes > unsent, t.served.c.bytes - unsent), else_=0)))

    def served_bytes(self, link_id: str) -> dict[str, int]:
        """path → bytes counted against the link's cap."""
        with self.read() as conn:
            query = select(t.served.c.path, t.served.c.bytes).where(t.served.c.link_id == link_id)
            rows = conn.execute(query)
            return {r.path: r.bytes for r in rows}


def _profile_dict(row: Any) -> dict:
    return {"mau": row["mau"], "intended_uses": json.loads(row["intended_uses"]),
            "certifications": json.loads(row["certifications"]), "eu_domiciled": bool(row["eu_domiciled"]),
            "updated_at": row["updated_at"]}


def _grant_dict(row: Any) -> dict:
    out = {k: row[k] for k in ("id", "organisation", "max_mau", "not_before", "expires", "created_at",
                               "revoked_at")}
    out["families"] = json.loads(row["families"])
    return out


def _link_dict(row: Any) -> dict:
    out = dict(row)
    out["policy"] = json.loads(out["policy"])
    return out
