"""Bring a database made by an older hub up to the current schema, in place.

``metadata.create_all`` creates missing tables but never changes existing ones; the columns
added since are listed here and added with ``ALTER TABLE ... ADD COLUMN`` (SQLite and PostgreSQL
alike), then :func:`backfill` moves old rows into the new shape. Each step is idempotent, so it
runs on every start. (A move to Alembic replaces this file with revisions.)
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, inspect

# (table, column, DDL of the column as added to an existing table)
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("profiles", "mau_declared", "BOOLEAN NOT NULL DEFAULT TRUE"),
)

Step = Callable[[Connection], None]
BACKFILLS: list[Step] = []


def missing_columns(conn: Connection) -> list[tuple[str, str, str]]:
    inspector = inspect(conn)
    have = {table: {c["name"] for c in inspector.get_columns(table)}
            for table in {table for table, _, _ in ADDED_COLUMNS}}
    return [(table, column, ddl) for table, column, ddl in ADDED_COLUMNS if column not in have[table]]


def upgrade(conn: Connection) -> list[str]:
    """Add what is missing and backfill; returns the columns added (``table.column``)."""
    added = []
    for table, column, ddl in missing_columns(conn):
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")
        added.append(f"{table}.{column}")
    for step in BACKFILLS:
        step(conn)
    return added
