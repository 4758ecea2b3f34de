"""The store's queries: idempotent writes by task_id, filtered pages of jobs, a job's record, clean-up in batches.

Blocking (SQLAlchemy Core has no Trio support): `reader.History` runs each call in a worker
thread. Every write is an upsert, so the same message written twice, by one archiver or by
two on one PostgreSQL, leaves one row; a status never replaces one of a higher rank (a late
`running` does not undo `success`), unless it is of a later run of the same task_id.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from ansible_worker.history.messages import PresenceRow, RecordRow, Row, StatusRow
from ansible_worker.history.schema import job_hosts, jobs, records, workers

# The most a page may hold: what a person or a page reads at once.
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Which jobs: every filter given must match. `playbook` may be a shell-style pattern (`deploy/*`).

    `before` continues a listing after the last job of the previous page (`JobPage.next`).
    """

    states: frozenset[str] | None = None
    playbook: str | None = None
    worker: str | None = None
    host: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    before: tuple[float, str] | None = None


@dataclass(frozen=True, slots=True)
class JobPage:
    """Statuses newest first; `next` continues after the last of them, None when there are no more."""

    statuses: list[dict[str, Any]]
    next: tuple[float, str] | None


def write_rows(engine: Engine, rows: Sequence[Row], *, now: float | None = None) -> None:
    """Write `rows` in one transaction: statuses, records (with their final status and hosts), presences."""
    now = time.time() if now is None else now
    statuses: dict[str, StatusRow] = {}
    recorded: dict[str, RecordRow] = {}
    presences: dict[str, PresenceRow] = {}
    for row in rows:
        if isinstance(row, RecordRow):
            recorded[row.task_id] = row
            _keep_newest(statuses, row.status)
        elif isinstance(row, StatusRow):
            _keep_newest(statuses, row)
        else:
            presences[row.worker_id] = row
    with engine.begin() as connection:
        if statuses:
            _upsert_statuses(connection, list(statuses.values()), now)
        if recorded:
            _upsert_records(connection, list(recorded.values()), now)
        if presences:
            _upsert_presences(connection, list(presences.values()), now)


def _keep_newest(found: dict[str, StatusRow], row: StatusRow) -> None:
    # One row per job and statement: PostgreSQL refuses to touch a row twice in one upsert.
    held = found.get(row.task_id)
    if held is None or row.rank >= held.rank:
        found[row.task_id] = row


def _insert(connection: Connection, table: Any) -> Any:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _upsert_statuses(connection: Connection, rows: list[StatusRow], now: float) -> None:
    statement = _insert(connection, jobs)
    new = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=[jobs.c.task_id],
        set_={column: new[column] for column in ("state", "rank", "playbook", "worker_id", "began_at")}
        | {"completed_at": new.completed_at, "status": new.status, "archived_at": new.archived_at},
        # Never back to an earlier phase of the same run; a later run of the task_id starts afresh.
        where=or_(new.rank >= jobs.c.rank, new.began_at > jobs.c.began_at),
    )
    connection.execute(
        statement,
        [
            {
                "task_id": row.task_id,
                "state": row.state,
                "rank": row.rank,
                "playbook": row.playbook,
                "worker_id": row.worker_id,
                "began_at": now if row.began_at is None else row.began_at,
                "completed_at": row.completed_at,
                "status": row.status,
                "archived_at": now,
            }
            for row in rows
        ],
    )


def _upsert_records(connection: Connection, rows: list[RecordRow], now: float) -> None:
    statement = _insert(connection, records)
    statement = statement.on_conflict_do_update(
        index_elements=[records.c.task_id],
        set_={"payload": statement.excluded.payload, "archived_at": statement.excluded.archived_at},
    )
    connection.execute(
        statement, [{"task_id": row.task_id, "payload": row.payload, "archived_at": now} for row in rows]
    )
    hosts = [
        {"task_id": row.task_id, "host": host, "began_at": now if row.status.began_at is None else row.status.began_at}
        for row in rows
        for host in row.hosts
    ]
    if hosts:
        connection.execute(_insert(connection, job_hosts).on_conflict_do_nothing(), hosts)


def _upsert_presences(connection: Connection, rows: list[PresenceRow], now: float) -> None:
    statement = _insert(connection, workers)
    statement = statement.on_conflict_do_update(
        index_elements=[workers.c.worker_id],
        set_={"presence": statement.excluded.presence, "seen_at": statement.excluded.seen_at},
    )
    connection.execute(
        statement, [{"worker_id": row.worker_id, "presence": row.presence, "seen_at": now} for row in rows]
    )


def find_jobs(engine: Engine, query: JobQuery) -> tuple[list[tuple[str, float, str]], bool]:
    """Rows (status JSON, began_at, task_id) of one page, newest first, and whether more follow."""
    limit = max(1, min(query.limit, MAX_PAGE))
    began, task_id = jobs.c.began_at, jobs.c.task_id
    statement = select(jobs.c.status, began, task_id)
    conditions = []
    if query.host is not None:
        # The side table's index (host, began_at) gives the newest jobs of a host first.
        statement = statement.join(job_hosts, job_hosts.c.task_id == task_id)
        began = job_hosts.c.began_at
        conditions.append(job_hosts.c.host == query.host)
    if query.states is not None:
        conditions.append(jobs.c.state.in_(sorted(query.states)))
    if query.playbook is not None:
        conditions.append(_matches(jobs.c.playbook, query.playbook))
    if query.worker is not None:
        conditions.append(jobs.c.worker_id == query.worker)
    if query.since is not None:
        conditions.append(began >= query.since)
    if query.until is not None:
        conditions.append(began < query.until)
    if query.before is not None:
        at, after_id = query.before
        conditions.append(or_(began < at, and_(began == at, task_id > after_id)))
    statement = statement.where(*conditions).order_by(began.desc(), task_id).limit(limit + 1)
    with engine.connect() as connection:
        rows = [(str(row[0]), float(row[1]), str(row[2])) for row in connection.execute(statement)]
    return rows[:limit], len(rows) > limit


def _matches(column: Any, pattern: str) -> Any:
    """`pattern` as select_jobs reads it: the exact name, or a shell-style `*`/`?` pattern."""
    if not any(ch in pattern for ch in "*?"):
        return column == pattern
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return or_(column == pattern, column.like(escaped.replace("*", "%").replace("?", "_"), escape="\\"))


def find_status(engine: Engine, task_id: str) -> str | None:
    """The stored status of job `task_id` (JSON text), or None."""
    with engine.connect() as connection:
        value = connection.execute(select(jobs.c.status).where(jobs.c.task_id == task_id)).scalar()
    return None if value is None else str(value)


def find_record(engine: Engine, task_id: str) -> bytes | None:
    """The stored record of job `task_id` (as published), or None."""
    with engine.connect() as connection:
        value = connection.execute(select(records.c.payload).where(records.c.task_id == task_id)).scalar()
    return None if value is None else bytes(value)


def find_workers(engine: Engine) -> list[str]:
    """Every stored presence message (JSON text), by worker id."""
    with engine.connect() as connection:
        rows = connection.execute(select(workers.c.presence).order_by(workers.c.worker_id))
        return [str(row[0]) for row in rows]


def count_jobs(engine: Engine) -> int:
    """How many jobs the store holds."""
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(jobs)).scalar_one())


def purge(engine: Engine, *, before: float, batch: int) -> int:
    """Remove at most `batch` jobs that began before `before`, with their records and hosts; how many.

    Presences last heard before `before` go too.

    One short transaction: the archiver's writes wait for it a moment at most.
    """
    with engine.begin() as connection:
        chosen = [
            str(row[0])
            for row in connection.execute(
                select(jobs.c.task_id).where(jobs.c.began_at < before).order_by(jobs.c.began_at).limit(batch)
            )
        ]
        if chosen:
            connection.execute(delete(job_hosts).where(job_hosts.c.task_id.in_(chosen)))
            connection.execute(delete(records).where(records.c.task_id.in_(chosen)))
            connection.execute(delete(jobs).where(jobs.c.task_id.in_(chosen)))
        # Workers come and go under new names (a pod each): one not heard since `before` is gone.
        connection.execute(delete(workers).where(workers.c.seen_at < before))
    return len(chosen)
