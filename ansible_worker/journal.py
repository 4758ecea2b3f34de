"""Remember accepted jobs and their newest status on disk, so a restarted worker can settle them."""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ansible_worker.models import JobStatus

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    task_id TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    state TEXT NOT NULL,
    status TEXT NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """A job the journal holds: not yet settled when the worker stopped."""

    task_id: str
    payload: bytes
    state: str
    status: dict[str, Any]


class Journal:
    """One SQLite file (WAL) in `state_dir`; a row per job that is not yet settled.

    A row is written when a job is accepted (before its `queued` status is published),
    updated with each status before that status is published, and deleted once the broker
    has acknowledged the terminal status, or the job was handed back to the group: the
    journal holds only what a restart still has to settle.

    Writes are synchronous on the event loop: in WAL mode with `synchronous=NORMAL` a
    commit is a write to the operating system's cache, tens of microseconds, and it
    survives the worker process being killed (not the machine losing power).
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / "journal.sqlite3"
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def accepted(self, task_id: str, payload: bytes, status: JobStatus) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO jobs (task_id, payload, state, status) VALUES (?, ?, ?, ?)",
            (task_id, payload, status.state.value, status.model_dump_json()),
        )

    def status(self, status: JobStatus) -> None:
        """Record the newest status of a job the journal holds (others are left alone)."""
        self._db.execute(
            "UPDATE jobs SET state = ?, status = ? WHERE task_id = ?",
            (status.state.value, status.model_dump_json(), status.task_id),
        )

    def settled(self, task_id: str) -> None:
        self._db.execute("DELETE FROM jobs WHERE task_id = ?", (task_id,))

    def entries(self) -> list[Entry]:
        rows = self._db.execute("SELECT task_id, payload, state, status FROM jobs ORDER BY rowid").fetchall()
        entries = []
        for task_id, payload, state, status in rows:
            try:
                entries.append(Entry(task_id, bytes(payload), state, json.loads(status)))
            except ValueError:
                log.warning("journal: dropping an unreadable entry for task %s", task_id)
                self.settled(task_id)
        return entries

    def close(self) -> None:
        self._db.close()
