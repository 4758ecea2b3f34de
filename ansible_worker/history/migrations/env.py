"""Alembic's entry: run the migrations on the connection the store hands over (never a URL of its own)."""

from __future__ import annotations

from alembic import context

from ansible_worker.history.schema import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
