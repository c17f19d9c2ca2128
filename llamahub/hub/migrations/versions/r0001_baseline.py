"""Baseline: the schema of the hub before Alembic (7e6b78a), made or adopted in place.

A new database gets the frozen tables; a database made by an older hub keeps its rows and gets
the columns it lacks, backfilled (:mod:`llamahub.hub.migrations.legacy`, formerly migrate.py).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from llamahub.hub.migrations import baseline, legacy

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    baseline.metadata.create_all(conn)  # only the tables that are missing
    legacy.record(conn, legacy.upgrade(conn))
    if conn.dialect.name == "sqlite":
        for ddl in baseline.sqlite_append_only_triggers():
            conn.exec_driver_sql(ddl)
