"""Job history in a database: the schema and its migrations, the store, the archiver that fills it, and the reader.

The archiver (`archiver`) subscribes to the group's statuses, records and presences and writes
them to SQLite or PostgreSQL (`store`, through SQLAlchemy Core; `schema`, migrated forward by
Alembic from `migrations/`). The controller commands and the dashboard read it through
`reader`, the one interface they call, and only when `history.url` is set: they import this
package lazily, so a command that talks to the broker alone never loads SQLAlchemy.

May import `protocol`, `mqtt`, `lone_errors`, and `ops.config` and `ops.logging_setup` lazily (the
archiver's settings and log lines);
never `worker`, `run`, `controller` or `dashboard`.
"""
