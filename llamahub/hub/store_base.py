"""The store's foundation: the engine (SQLite in WAL mode, or PostgreSQL), transactions, the audit log.

The store is split by responsibility: :mod:`store_base` (this), :mod:`store_orgs` (organisation
records, memberships, invitations, operators), :mod:`store_accounts` (users, tokens,
acceptances), :mod:`store_profiles` (profiles, dated MAU declarations), :mod:`store_grants`
(scoped grants, revocations), and :mod:`store` (keys, imported variants, links; the
:class:`~llamahub.hub.store.Store` everyone uses). :mod:`migrations` makes and upgrades the schema.

Write transactions never race into a constraint error. On SQLite every write takes the database's
write lock up front (``BEGIN IMMEDIATE``). On PostgreSQL a write takes the same exclusive lock by
default (a transaction-level advisory lock), so every read-then-write sequence is as safe as on
SQLite; the hot paths name the rows they touch instead (``write(lock=[key, ...])``): they hold the
global lock shared and an exclusive advisory lock per key, so downloads, acceptances and links of
different users run in parallel while two requests on the same rows take turns. A database that
cannot be reached raises :class:`~llamahub.hub.errors.DatabaseUnavailableError` (HTTP 503).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from sqlalchemy import Connection, Engine, create_engine, event, insert, or_, select, text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from llamahub.hub import migrations
from llamahub.hub import schema as t
from llamahub.hub.errors import DatabaseUnavailableError

BUSY_TIMEOUT_MS = 10_000
DATABASE_ENV = "LLAMAHUB_HUB_DATABASE_URL"
GLOBAL_LOCK = (0x6C6C6868, 0)  # the two-key advisory lock every PostgreSQL write holds ("llhh")


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


# SQLite's OperationalError also means bad SQL ("no such table"): only these say "try again"
SQLITE_UNAVAILABLE = ("locked", "busy", "unable to open", "disk i/o")


@contextmanager
def _reachable() -> Iterator[None]:
    try:
        yield
    except (OperationalError, InterfaceError, PoolTimeoutError) as e:
        orig = getattr(e, "orig", None)
        if isinstance(orig, sqlite3.Error) and not any(w in str(orig).lower() for w in SQLITE_UNAVAILABLE):
            raise
        # no detail for the client (it would name the database's host); the cause stays chained
        raise DatabaseUnavailableError("the hub's database is unavailable (restarting, or unreachable)",
                                       hint="retry in a few seconds; if it persists, the hub's operator "
                                            "should check the database server") from e


def _advisory_locks(conn: Connection, keys: Sequence[str] | None) -> None:
    if keys is None:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock{GLOBAL_LOCK}")
        return
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock_shared{GLOBAL_LOCK}")
    for key in sorted(set(keys)):  # always in the same order: no deadlock between two writers
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})


class StoreBase:
    """The engine, transactions and the audit log; the other store modules add their tables' methods."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine: Engine = self._engine(url)

    @classmethod
    def for_dir(cls, data_dir: Path) -> Self:
        """The SQLite store ``data_dir/hub.db`` (the folder is created if needed)."""
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        return cls(sqlite_url(data_dir))

    def _engine(self, url: str) -> Engine:
        if not self.is_sqlite:  # pre-ping: after a database restart the next request reconnects
            return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=30,  # the thread pool
                                 connect_args={"options": "-c timezone=UTC"})
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _on_sqlite_connect)
        event.listen(engine, "begin", _on_sqlite_begin)
        return engine

    def create_all(self) -> tuple[str | None, str | None]:
        """Create the schema or upgrade it in place (:mod:`llamahub.hub.migrations`); (before, after)."""
        with self.write() as conn:
            return migrations.upgrade(conn)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with _reachable(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self, lock: Sequence[str] | None = None) -> Iterator[Connection]:
        """A write transaction: alone (``lock`` None), or beside others not touching ``lock``'s keys."""
        with _reachable(), self.engine.connect() as conn:
            if self.is_sqlite:
                conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                if not self.is_sqlite:
                    _advisory_locks(conn, lock)
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
        with self.write(lock=()) as conn:
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
