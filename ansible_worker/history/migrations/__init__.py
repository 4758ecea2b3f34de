"""The schema's versions, applied in order by Alembic on every start of the store."""
