"""The hub's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

Times are :class:`~llamahub.hub.dbtypes.UtcTime` (ISO-8601 strings in Python, ``timestamptz`` on
PostgreSQL), JSON columns :class:`~llamahub.hub.dbtypes.JsonText` (``jsonb`` there); counts, sizes,
MAU figures and link expiry (epoch seconds) are 64-bit. The schema is built by the Alembic revisions
in :mod:`llamahub.hub.migrations`; change both together.

``profile_history`` and ``audit`` are append-only: the store never updates or deletes them, and
triggers refuse it on both databases.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    true,
)

from llamahub.hub.dbtypes import Id64, JsonText, UtcTime

metadata = MetaData()

users = Table(
    "users", metadata,
    Column("id", String(32), primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("organisation", String(200), nullable=False),
    Column("organisation_key", String(200), nullable=False, index=True),
    Column("country", String(2), nullable=False),
    Column("created_at", UtcTime(), nullable=False),
)

organisations = Table(  # an organisation is a record: grants, requests and MAU belong to its id
    "organisations", metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("name_key", String(200), nullable=False, unique=True),  # one record per name (casefolded)
    Column("status", String(16), nullable=False),  # "unverified" (made by its first user) or "verified"
    Column("created_by", String(64), nullable=False),  # "user:<id>" or "operator:<name>"
    Column("created_at", UtcTime(), nullable=False),
    Column("verified_at", UtcTime(), nullable=True),
    Column("verified_by", String(64), nullable=True),
)

memberships = Table(  # a user belongs to at most one organisation; "pending" until approved
    "memberships", metadata,
    Column("user_id", String(32), ForeignKey("users.id"), primary_key=True),
    Column("org_id", String(32), ForeignKey("organisations.id"), nullable=False, index=True),
    Column("role", String(8), nullable=False),  # "admin" or "member"
    Column("status", String(8), nullable=False),  # "active" or "pending"
    Column("created_at", UtcTime(), nullable=False),
    Column("decided_at", UtcTime(), nullable=True),
    Column("decided_by", String(64), nullable=True),
)

invitations = Table(  # issued by an organisation's admin; registering with it joins at once
    "invitations", metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("org_id", String(32), ForeignKey("organisations.id"), nullable=False),
    Column("email", String(320), nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("created_at", UtcTime(), nullable=False),
    Column("used_at", UtcTime(), nullable=True),
)

operators = Table(  # named operator accounts: admin tokens belong to one, and the audit log names them
    "operators", metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("email", String(320), nullable=True),
    Column("created_at", UtcTime(), nullable=False),
)

tokens = Table(
    "tokens", metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("role", String(8), nullable=False),  # "user" or "admin"
    Column("user_id", String(32), ForeignKey("users.id"), nullable=True),
    Column("created_at", UtcTime(), nullable=False),
    Column("revoked_at", UtcTime(), nullable=True),
    Column("operator_id", String(32), nullable=True),  # admin tokens: whose (added after d32997c)
)

profiles = Table(
    "profiles", metadata,
    Column("user_id", String(32), ForeignKey("users.id"), primary_key=True),
    Column("mau", BigInteger, nullable=False),
    Column("intended_uses", JsonText(), nullable=False),  # JSON list
    Column("certifications", JsonText(), nullable=False),  # JSON list
    Column("eu_domiciled", Boolean, nullable=False),
    Column("updated_at", UtcTime(), nullable=False),
    # false while only other fields were set: an undeclared MAU is not 0 (added after d32997c)
    Column("mau_declared", Boolean, nullable=False, server_default=true()),
)

mau_declarations = Table(  # MAU as a license version counts it: the calendar month before its release
    "mau_declarations", metadata,
    Column("owner_id", String(32), primary_key=True),  # the organisation's id (a user's, while pending)
    Column("license_id", String(64), primary_key=True),
    Column("as_of", String(10), nullable=False),  # the release date the figure refers to
    Column("mau", BigInteger, nullable=False),
    Column("declared_at", UtcTime(), nullable=False),
)

profile_history = Table(
    "profile_history", metadata,
    Column("id", Id64, primary_key=True, autoincrement=True),
    Column("user_id", String(32), ForeignKey("users.id"), nullable=False, index=True),
    Column("changed_at", UtcTime(), nullable=False),
    Column("profile", JsonText(), nullable=False),  # JSON: the profile as it became
)

acceptances = Table(
    "acceptances", metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id"), nullable=False),
    Column("license_id", String(64), nullable=False),
    Column("text_sha256", String(64), nullable=False),
    Column("accepted_at", UtcTime(), nullable=False),
    UniqueConstraint("user_id", "license_id", name="uq_acceptance_user_license"),
)

grants = Table(
    "grants", metadata,
    Column("id", String(32), primary_key=True),
    Column("organisation", String(200), nullable=False),
    Column("organisation_key", String(200), nullable=False, index=True),
    Column("families", JsonText(), nullable=False),  # JSON list
    Column("max_mau", BigInteger, nullable=True),
    Column("not_before", UtcTime(), nullable=False),
    Column("expires", UtcTime(), nullable=True),
    Column("created_at", UtcTime(), nullable=False),
    Column("revoked_at", UtcTime(), nullable=True),
    Column("org_id", String(32), nullable=True, index=True),  # the organisation record (added after d32997c)
    Column("variants", JsonText(), nullable=True),  # JSON list: only these variants of the families ([]: all)
    Column("uses", JsonText(), nullable=True),  # JSON list: AUP categories permitted by exception
)

enterprise_requests = Table(
    "enterprise_requests", metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id"), nullable=False, index=True),
    Column("organisation", String(200), nullable=False),
    Column("families", JsonText(), nullable=False),  # JSON list
    Column("mau", BigInteger, nullable=False),
    Column("note", Text, nullable=False),
    Column("status", String(16), nullable=False, index=True),  # pending|approved|denied|withdrawn
    Column("created_at", UtcTime(), nullable=False),
    Column("decided_at", UtcTime(), nullable=True),
    Column("decision_note", Text, nullable=True),
    Column("grant_id", String(32), ForeignKey("grants.id"), nullable=True),
    Column("org_id", String(32), nullable=True, index=True),  # the organisation record (added after d32997c)
    Column("uses", JsonText(), nullable=True),  # JSON list: AUP categories asked for by exception
    Column("variants", JsonText(), nullable=True),  # JSON list
    Column("info_request", Text, nullable=True),  # the reviewer's question (status needs_info)
    Column("info_answer", Text, nullable=True),  # the requester's answer
)

signing_keys = Table(
    "signing_keys", metadata,
    Column("key_id", String(16), primary_key=True),
    Column("public_pem", Text, nullable=False),
    Column("created_at", UtcTime(), nullable=False),
    Column("revoked_at", UtcTime(), nullable=True),
)

variants = Table(
    "variants", metadata,
    Column("name", String(100), primary_key=True),
    Column("family", String(64), nullable=False, index=True),
    Column("license_id", String(64), nullable=False),
    Column("format", String(8), nullable=False),  # "meta" or "hf"
    Column("imported_at", UtcTime(), nullable=False),
)

files = Table(
    "files", metadata,
    Column("id", Id64, primary_key=True, autoincrement=True),
    Column("variant", String(100), ForeignKey("variants.name", ondelete="CASCADE"), nullable=False),
    Column("path", String(500), nullable=False),  # as served under /dl/<family>/
    Column("sha256", String(64), nullable=False),
    Column("md5", String(32), nullable=False),
    Column("size", BigInteger, nullable=False),
    UniqueConstraint("variant", "path", name="uq_file_variant_path"),
    Index("ix_files_path", "path"),
)

# The other layout of each imported variant (Meta → HF, HF → Meta), converted once at import; paths
# follow the same rules as ``files`` of that layout (HF files under ``<variant>/``)
layout_files = Table(
    "layout_files", metadata,
    Column("id", Id64, primary_key=True, autoincrement=True),
    Column("variant", String(100), ForeignKey("variants.name", ondelete="CASCADE"), nullable=False),
    Column("path", String(500), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("md5", String(32), nullable=False),
    Column("size", BigInteger, nullable=False),
    UniqueConstraint("variant", "path", name="uq_layout_variant_path"),
)

links = Table(
    "links", metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id"), nullable=False, index=True),
    Column("family", String(64), nullable=False),
    Column("key_id", String(16), ForeignKey("signing_keys.key_id"), nullable=False),
    Column("policy", JsonText(), nullable=False),  # JSON: the policy as signed
    Column("issued_at", UtcTime(), nullable=False),
    Column("expires", BigInteger, nullable=False),  # epoch seconds
    Column("max_downloads", BigInteger, nullable=False),
    Column("revoked_at", UtcTime(), nullable=True),
    Column("grant_ids", JsonText(), nullable=True),  # JSON list: grants the link relied on
)

served = Table(  # bytes of each file served (or about to be) through each link: the download cap
    "served", metadata,
    Column("link_id", String(32), ForeignKey("links.id"), primary_key=True),
    Column("path", String(500), primary_key=True),
    Column("bytes", BigInteger, nullable=False),
    Column("first_at", UtcTime(), nullable=False),
    Column("last_at", UtcTime(), nullable=False),
)

audit = Table(
    "audit", metadata,
    Column("id", Id64, primary_key=True, autoincrement=True),
    Column("at", UtcTime(), nullable=False),
    Column("actor", String(64), nullable=False),  # "user:<id>", "admin", "operator", "anonymous"
    Column("action", String(64), nullable=False, index=True),
    Column("target", String(200), nullable=True),
    Column("detail", JsonText(), nullable=False),  # JSON object
)

APPEND_ONLY = ("audit", "profile_history")

