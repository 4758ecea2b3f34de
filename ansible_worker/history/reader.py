"""The one interface to the store for Trio code: the archiver's writes, and the reads of the commands and the dashboard.

SQLAlchemy has no Trio support, so each call runs in a worker thread
(`trio.to_thread.run_sync`), at most `THREADS` at once per store: the pool's connections.
A call abandoned by cancellation finishes in its thread; its result is dropped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import trio
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from ansible_worker.history import database, store
from ansible_worker.history.database import HistoryError, shown_url
from ansible_worker.history.messages import Row
from ansible_worker.history.store import JobPage, JobQuery
from ansible_worker.protocol.json_objects import json_object
from ansible_worker.protocol.records import RecordError, decode_record

log = logging.getLogger(__name__)

THREADS = database.POOL_SIZE
T = TypeVar("T")

__all__ = ["History", "HistoryError", "JobPage", "JobQuery", "open_history"]


class History:
    """A history store, open. Every method may raise `HistoryError` naming the database's reason."""

    def __init__(self, engine: Engine, url: str) -> None:
        self._engine = engine
        self.url = url
        self.url_shown = shown_url(url)
        self._threads = trio.CapacityLimiter(THREADS)

    async def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await trio.to_thread.run_sync(
                partial(function, self._engine, *args, **kwargs), limiter=self._threads, abandon_on_cancel=True
            )
        except SQLAlchemyError as exc:
            raise HistoryError(f"history store {shown_url(self.url)}: {database._reason(exc)}") from None

    async def write(self, rows: Sequence[Row], *, now: float | None = None) -> None:
        """Write `rows` in one transaction (idempotent upserts by task_id), as heard at `now` (default: now)."""
        await self._call(store.write_rows, rows, now=now)

    async def jobs(self, query: JobQuery) -> JobPage:
        """One page of the jobs that match `query`, newest first."""
        rows, more = await self._call(store.find_jobs, query)
        statuses = [status for text, _, _ in rows if (status := json_object(text)) is not None]
        last = rows[-1] if rows else None
        return JobPage(statuses, (last[1], last[2]) if more and last is not None else None)

    async def newest(self, query: JobQuery, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """The newest `limit` jobs that match `query`, read a page at a time, and whether more match."""
        found: list[dict[str, Any]] = []
        page_query = query
        while True:
            page_size = min(store.MAX_PAGE, limit - len(found))
            page = await self.jobs(dataclasses.replace(page_query, limit=page_size))
            found.extend(page.statuses)
            if page.next is None:
                return found, False
            if len(found) >= limit:
                return found, True
            page_query = dataclasses.replace(page_query, before=page.next)

    async def status(self, task_id: str) -> dict[str, Any] | None:
        """The newest status the store holds of job `task_id`, or None."""
        text = await self._call(store.find_status, task_id)
        return None if text is None else json_object(text)

    async def record(self, task_id: str) -> dict[str, Any] | None:
        """The record of job `task_id` (final status, events, output), or None if the store holds none.

        Errors: `HistoryError` when the stored record is not a readable record of this job.
        """
        payload = await self._call(store.find_record, task_id)
        if payload is None:
            return None
        try:
            document = decode_record(payload)
        except RecordError as exc:
            raise HistoryError(f"the stored record of {task_id}: {exc}") from None
        if document.get("task_id") != task_id or document["status"].get("task_id") != task_id:
            raise HistoryError(f"the stored record of {task_id} is another job's")
        return document

    async def workers(self) -> list[dict[str, Any]]:
        """The newest presence of each worker the store has seen, by worker id."""
        return [found for text in await self._call(store.find_workers) if (found := json_object(text)) is not None]

    async def count(self) -> int:
        """How many jobs the store holds."""
        return int(await self._call(store.count_jobs))

    async def purge(self, *, before: float, batch: int) -> int:
        """Remove at most `batch` jobs that began before `before` (POSIX seconds); how many."""
        return int(await self._call(store.purge, before=before, batch=batch))


@asynccontextmanager
async def open_history(url: str, *, migrate: bool = False) -> AsyncIterator[History]:
    """Open the store at `url`. With `migrate` (the archiver), create it or bring its schema forward;
    without (a reader), the store must exist at this program's schema version.

    Errors: `HistoryError` when it cannot be opened, migrated, or read.

    Cancellation: while opening, the thread finishes its step and the engine is disposed; after,
    the engine's connections are closed when the block ends, however it ends.
    """
    engine = await trio.to_thread.run_sync(partial(_open, url, migrate=migrate))
    try:
        yield History(engine, url)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(engine.dispose)


def _open(url: str, *, migrate: bool) -> Engine:
    engine = database.open_engine(url, create=migrate)
    try:
        if migrate:
            database.migrate(engine)
        else:
            database.check_version(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine
