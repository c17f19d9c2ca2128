"""Part of revision 0001: bring a database made by a hub older than 7e6b78a to the baseline, in place.

Those hubs made their tables with ``metadata.create_all`` (without Alembic) and added columns as
they went; the columns added since d32997c are listed here and added with ``ALTER TABLE ... ADD
COLUMN`` (SQLite and PostgreSQL alike), then the backfills move old rows into the new shape.
Each step is idempotent. The tables are the frozen :mod:`baseline`, never today's schema.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable

from sqlalchemy import Connection, insert, inspect, select, update

from llamahub.hub.migrations import baseline as t

MIGRATION = "operator:migration"

# (table, column, DDL of the column as added to an existing table)
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("profiles", "mau_declared", "BOOLEAN NOT NULL DEFAULT TRUE"),
    ("tokens", "operator_id", "VARCHAR(32)"),
    ("grants", "org_id", "VARCHAR(32)"),
    ("enterprise_requests", "org_id", "VARCHAR(32)"),
    ("grants", "variants", "TEXT"),
    ("grants", "uses", "TEXT"),
    ("enterprise_requests", "uses", "TEXT"),
    ("enterprise_requests", "variants", "TEXT"),
    ("enterprise_requests", "info_request", "TEXT"),
    ("enterprise_requests", "info_answer", "TEXT"),
    ("links", "grant_ids", "TEXT"),
)

Step = Callable[[Connection], None]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _org_for(conn: Connection, name: str, key: str, *, by: str, verified: bool) -> tuple[str, bool]:
    """(org id, created) of the record for ``key``, made if missing."""
    row = conn.execute(select(t.organisations.c.id).where(t.organisations.c.name_key == key)).first()
    if row is not None:
        return row.id, False
    org_id, now = "o_" + secrets.token_hex(8), _now()
    conn.execute(insert(t.organisations).values(
        id=org_id, name=name.strip(), name_key=key, status="verified" if verified else "unverified",
        created_by=by, created_at=now, verified_at=now if verified else None,
        verified_by=MIGRATION if verified else None))
    return org_id, True


def memberships_from_strings(conn: Connection) -> None:
    """Users registered before organisations were records: the first user naming an organisation
    founds its (unverified) record and is its admin; later ones are pending members, so a
    look-alike name inherits nothing until approved."""
    joined = select(t.memberships.c.user_id)
    users = conn.execute(select(t.users).where(t.users.c.id.not_in(joined)).order_by(t.users.c.created_at))
    for user in users:
        org_id, founded = _org_for(conn, user.organisation, user.organisation_key, by=f"user:{user.id}",
                                   verified=False)
        conn.execute(insert(t.memberships).values(
            user_id=user.id, org_id=org_id, role="admin" if founded else "member",
            status="active" if founded else "pending", created_at=user.created_at,
            decided_at=_now() if founded else None, decided_by=MIGRATION if founded else None))


def grants_and_requests_to_org_ids(conn: Connection) -> None:
    """Grants and requests named an organisation string: point them at its record (a grant for a
    name no user had becomes an operator-made, verified record)."""
    for row in conn.execute(select(t.grants).where(t.grants.c.org_id.is_(None))).all():
        org_id, _ = _org_for(conn, row.organisation, row.organisation_key, by=MIGRATION, verified=True)
        conn.execute(update(t.grants).where(t.grants.c.id == row.id).values(org_id=org_id))
    requests = t.enterprise_requests
    for row in conn.execute(select(requests).where(requests.c.org_id.is_(None))).all():
        query = select(t.memberships.c.org_id).where(t.memberships.c.user_id == row.user_id)
        member = conn.execute(query).first()
        if member is not None:
            conn.execute(update(requests).where(requests.c.id == row.id).values(org_id=member.org_id))


def admin_tokens_to_operators(conn: Connection) -> None:
    """Admin tokens made before operators had names belong to an operator called "admin"."""
    nameless = conn.execute(select(t.tokens.c.token_sha256).where(
        t.tokens.c.role == "admin", t.tokens.c.operator_id.is_(None))).all()
    if not nameless:
        return
    row = conn.execute(select(t.operators.c.id).where(t.operators.c.name == "admin")).first()
    operator_id = row.id if row else "op_" + secrets.token_hex(8)
    if row is None:
        conn.execute(insert(t.operators).values(id=operator_id, name="admin", email=None, created_at=_now()))
    conn.execute(update(t.tokens).where(t.tokens.c.role == "admin", t.tokens.c.operator_id.is_(None))
                 .values(operator_id=operator_id))


BACKFILLS: list[Step] = [memberships_from_strings, grants_and_requests_to_org_ids, admin_tokens_to_operators]


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


def record(conn: Connection, added: list[str]) -> None:
    """The audit row of an upgrade that added columns."""
    if added:
        conn.execute(insert(t.audit).values(at=_now(), actor="operator", action="schema.upgrade", target=None,
                                            detail=json.dumps({"added": added}, sort_keys=True)))
