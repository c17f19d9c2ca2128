"""Alembic's environment: always run by :func:`llamahub.hub.migrations.upgrade` on a connection it gives."""

from __future__ import annotations

from alembic import context

from llamahub.hub import schema

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=schema.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
