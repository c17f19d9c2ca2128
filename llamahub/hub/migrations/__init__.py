"""The hub's schema migrations (Alembic), for SQLite and PostgreSQL alike.

:func:`upgrade` brings any hub database to the newest revision, in place: an empty one, one made
by the hub before Alembic (it has tables but no ``alembic_version``: revision 0001 adopts it,
adding the columns older hubs lacked), or one at an older revision. It runs on every start of the
store and from ``llamahub hub migrate``; several processes starting at once take turns (SQLite's
write lock, a PostgreSQL advisory lock), so it runs once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, inspect

HERE = Path(__file__).resolve().parent
LOCK_KEY = 0x6C6C686D  # the advisory lock migrations hold on PostgreSQL ("llhm")
HEAD = "0002"  # the newest revision (a test checks it is Alembic's head): at head, alembic is not imported


def _config(conn: Connection | None = None) -> Any:
    """Alembic's configuration, without an ini file (alembic is imported here: no import-time cost)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = conn
    return config


def current(conn: Connection) -> str | None:
    """The revision the database is at (None: not under Alembic yet)."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def head() -> str:
    """The newest revision."""
    from alembic.script import ScriptDirectory

    found = ScriptDirectory.from_config(_config()).get_current_head()
    assert found is not None
    return found


def upgrade(conn: Connection, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade inside the caller's write transaction; returns (revision before, after)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")
    before = current(conn)
    if before == HEAD and revision == "head":
        return before, before
    from alembic import command

    command.upgrade(_config(conn), revision)
    return before, current(conn)
