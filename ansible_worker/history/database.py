"""Open the store's database from `history.url`, and bring its schema to the newest version.

Blocking: call it in a worker thread (`reader.open_history` does).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from ansible_worker.history.schema import VERSION_TABLE

# Connections kept open: the archiver writes on one, the dashboard reads on a few.
POOL_SIZE = 4
# Waits on a lock held by another writer (SQLite) or the server (PostgreSQL), in seconds.
LOCK_WAIT = 10
# Every process that migrates takes this lock first (PostgreSQL): two archivers starting at
# once would otherwise both create the tables. An arbitrary constant of this application.
MIGRATION_LOCK = 0x616E7369626C6531


class HistoryError(Exception):
    """The store cannot be used: the text says why, without the URL's password."""


def shown_url(url: str) -> str:
    """`url` fit for a log line: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # ValueError: a port that is no number, as when an unquoted password holds an `@`.
        return "<an unreadable history.url>"


def open_engine(url: str, *, create: bool) -> Engine:
    """An engine for `url` (sqlite:///PATH or postgresql://…), through psycopg 3 for PostgreSQL.

    With `create`, a missing SQLite file is made, readable by its owner alone: it holds every
    job's output. Without it, a missing file is an error (a reader must not make an empty store).

    Errors: `HistoryError`.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise HistoryError(f"history.url is not a database URL: {exc}") from None
    except ValueError:
        # Its message would quote part of the URL, which may be part of the password.
        raise HistoryError(
            "history.url is not a database URL (a password holding @, : or / must be percent-encoded)"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "postgresql" or parsed.drivername == "postgres":
        parsed = parsed.set(drivername="postgresql+psycopg")
        options: dict[str, Any] = {"pool_size": POOL_SIZE, "pool_pre_ping": True}
        options["connect_args"] = {"connect_timeout": LOCK_WAIT}
        return create_engine(parsed, **options)
    if backend != "sqlite" or not parsed.database or parsed.database == ":memory:":
        raise HistoryError(f"history.url {shown_url(url)}: give sqlite:///PATH or postgresql://…")
    path = Path(parsed.database)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as exc:
            raise HistoryError(f"history store {path}: {exc.strerror or exc}") from None
    elif not path.is_file():
        raise HistoryError(f"no history store at {path}: `ansible-worker archive` creates it")
    engine = create_engine(parsed.set(drivername="sqlite+pysqlite"), pool_size=POOL_SIZE)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL: readers never wait for the archiver's writes, nor it for them. NORMAL: a power
    # loss may lose the last commits (the broker's retained messages bring them back), never
    # corrupt the file.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={LOCK_WAIT * 1000}")
    cursor.close()


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(files("ansible_worker.history") / "migrations"))
    return config


def head_version() -> str:
    """The newest schema version this code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_version(engine: Engine) -> str | None:
    """The schema version of the database, or None for one without the store's tables."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def migrate(engine: Engine, version: str = "heads") -> None:
    """Bring the schema forward to `version` (the newest by default), in one transaction.

    Errors: `HistoryError` when the database cannot be reached or migrated.
    """
    from alembic import command

    config = _alembic_config()
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, version)
    except SQLAlchemyError as exc:
        raise HistoryError(f"cannot migrate the history store: {_reason(exc)}") from None


def check_version(engine: Engine) -> None:
    """Errors: `HistoryError` unless the schema is the one this code reads (the archiver migrates it)."""
    try:
        found = current_version(engine)
    except SQLAlchemyError as exc:
        raise HistoryError(f"cannot read the history store: {_reason(exc)}") from None
    wanted = head_version()
    if found != wanted:
        raise HistoryError(
            f"the history store's schema is version {found or 'none'}, this program reads {wanted}:"
            " start `ansible-worker archive` of this version, which migrates it"
        )


def _reason(exc: SQLAlchemyError) -> str:
    # The driver's own message, without SQLAlchemy's statement dump and background links.
    original = getattr(exc, "orig", None)
    return str(original or exc).strip().splitlines()[0] if str(original or exc).strip() else type(exc).__name__
