"""Native types where the database has them, and append-only enforced on PostgreSQL too.

On PostgreSQL: 64-bit sizes, MAU figures, counts and keys (every real Llama shard is over 2 GiB),
``timestamptz`` times (the ISO-8601 strings converted as they are: each has its UTC offset), and
``jsonb`` for JSON text; a trigger refuses UPDATE, DELETE and TRUNCATE of the append-only tables.
On SQLite nothing changes: its INTEGER is already 64-bit, and times and JSON stay text.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BIGINT = {
    "files": ("id", "size"), "layout_files": ("id", "size"), "profiles": ("mau",),
    "grants": ("max_mau",), "enterprise_requests": ("mau",), "profile_history": ("id",),
    "links": ("expires", "max_downloads"), "audit": ("id",),
}
SEQUENCES = ("files_id_seq", "layout_files_id_seq", "profile_history_id_seq", "audit_id_seq")
TIMES = {
    "users": ("created_at",), "organisations": ("created_at", "verified_at"),
    "memberships": ("created_at", "decided_at"), "invitations": ("created_at", "used_at"),
    "operators": ("created_at",), "tokens": ("created_at", "revoked_at"), "profiles": ("updated_at",),
    "mau_declarations": ("declared_at",), "profile_history": ("changed_at",),
    "acceptances": ("accepted_at",),
    "grants": ("not_before", "expires", "created_at", "revoked_at"),
    "enterprise_requests": ("created_at", "decided_at"), "signing_keys": ("created_at", "revoked_at"),
    "variants": ("imported_at",), "links": ("issued_at", "revoked_at"), "served": ("first_at", "last_at"),
    "audit": ("at",),
}
JSON = {
    "profiles": ("intended_uses", "certifications"), "profile_history": ("profile",),
    "grants": ("families", "variants", "uses"), "enterprise_requests": ("families", "uses", "variants"),
    "links": ("policy", "grant_ids"), "audit": ("detail",),
}
APPEND_ONLY = ("audit", "profile_history")
REFUSE = """
CREATE OR REPLACE FUNCTION llamahub_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END $$
"""


def _alter(table: str, columns: tuple[str, ...], sql_type: str, cast: str) -> None:
    parts = ", ".join(f"ALTER COLUMN {c} TYPE {sql_type} USING {c}::{cast}" for c in columns)
    op.execute(f"ALTER TABLE {table} {parts}")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in BIGINT.items():
        _alter(table, columns, "BIGINT", "bigint")
    for sequence in SEQUENCES:
        op.execute(f"ALTER SEQUENCE {sequence} AS BIGINT")
    for table, columns in TIMES.items():
        _alter(table, columns, "TIMESTAMP WITH TIME ZONE", "timestamptz")
    for table, columns in JSON.items():
        _alter(table, columns, "JSONB", "jsonb")
    op.execute(REFUSE)
    for table in APPEND_ONLY:
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                   "FOR EACH ROW EXECUTE FUNCTION llamahub_append_only()")
        op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION llamahub_append_only()")
