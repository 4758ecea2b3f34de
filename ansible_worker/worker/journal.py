"""Remember accepted jobs and their newest status on disk, so a restarted worker can settle them."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ansible_worker.protocol.models import JobStatus
from ansible_worker.worker.phases import Write

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    task_id TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    state TEXT NOT NULL,
    status TEXT NOT NULL,
    run_dir TEXT,
    claim_id TEXT
)
"""


class JournalError(Exception):
    """The journal could not record a job."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A job the journal holds: not yet settled when the worker stopped."""

    task_id: str
    payload: bytes
    state: str
    status: dict[str, Any]
    # The private run directory of a job that had started: its processes carry its name.
    run_dir: str | None = None
    # This worker's claim on the job, made (or about to be) before it stopped.
    claim_id: str | None = None


class Journal:
    """One SQLite file (WAL) in `state_dir`; a row per job that is not yet settled.

    A row is written when a job is accepted (before its `queued` status is published),
    updated with each status before that status is published, and deleted once the broker
    has acknowledged the terminal status, or the job was handed back to the group: the
    journal holds only what a restart still has to settle. The job table is its only
    writer: each method here is one kind of write (`phases.Write`), made by one move.

    Writes are synchronous on the event loop: in WAL mode with `synchronous=NORMAL` a
    commit is a write to the operating system's cache, tens of microseconds, and it
    survives the worker process being killed (not the machine losing power).
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / "journal.sqlite3"
        _private_files(directory, self.path)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        # A journal from an older version.
        if "run_dir" not in columns:
            self._db.execute("ALTER TABLE jobs ADD COLUMN run_dir TEXT")
        if "claim_id" not in columns:
            self._db.execute("ALTER TABLE jobs ADD COLUMN claim_id TEXT")

    def add(self, task_id: str, payload: bytes, status: JobStatus, *, claim_id: str | None = None) -> None:
        """Remember a job before it is claimed or announced; `claim_id` is this worker's claim on it.

        A job remembered already keeps its claim id unless a new one is given.

        Errors: `JournalError` when the database cannot take it (the job must be refused:
        accepting it would promise what a restart cannot keep).
        """
        try:
            self._db.execute(
                "INSERT INTO jobs (task_id, payload, state, status, claim_id) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(task_id) DO UPDATE SET payload = excluded.payload, state = excluded.state,"
                " status = excluded.status, claim_id = coalesce(excluded.claim_id, claim_id)",
                (task_id, payload, status.state.value, status.to_json().decode(), claim_id),
            )
        except sqlite3.Error as exc:
            raise JournalError(f"could not journal the job: {exc}") from exc

    def set_claims(self, task_id: str, claim_id: str | None) -> None:
        """Record this worker's claim ids on a job the journal holds (None: it holds none now).

        Errors: `JournalError`, as `add`.
        """
        try:
            self._db.execute("UPDATE jobs SET claim_id = ? WHERE task_id = ?", (claim_id, task_id))
        except sqlite3.Error as exc:
            raise JournalError(f"could not journal the job: {exc}") from exc

    def set_status(self, status: JobStatus) -> None:
        """Record the newest status of a job the journal holds (others are left alone).

        A database error is logged, not raised: the job goes on and its status is still
        published; only a restart in the meantime would report an older state.
        """
        try:
            self._db.execute(
                "UPDATE jobs SET state = ?, status = ? WHERE task_id = ?",
                (status.state.value, status.to_json().decode(), status.task_id),
            )
        except sqlite3.Error as exc:
            log.error("journal: could not record the %s status of task %s: %s", status.state, status.task_id, exc)

    def set_run_dir(self, task_id: str, run_dir: Path) -> None:
        """Record where a job runs, so that a restart can end what it left behind."""
        try:
            self._db.execute("UPDATE jobs SET run_dir = ? WHERE task_id = ?", (str(run_dir), task_id))
        except sqlite3.Error as exc:
            log.error("journal: could not record where task %s runs: %s", task_id, exc)

    def forget(self, task_id: str) -> None:
        """Forget `task_id`: nothing about it is left for a restart to settle (errors are logged)."""
        try:
            self._db.execute("DELETE FROM jobs WHERE task_id = ?", (task_id,))
        except sqlite3.Error as exc:
            log.error("journal: could not forget task %s: %s", task_id, exc)

    def record(
        self,
        write: Write,
        task_id: str,
        *,
        payload: bytes = b"",
        status: JobStatus | None = None,
        claims: str | None = None,
        run_dir: Path | None = None,
    ) -> None:
        """Make `write`, the one write of a move, with what it records. Errors: as the write's method."""
        match write:
            case Write.ADD:
                assert status is not None
                self.add(task_id, payload, status, claim_id=claims)
            case Write.SET_CLAIMS:
                self.set_claims(task_id, claims)
            case Write.SET_STATUS:
                assert status is not None
                self.set_status(status)
            case Write.SET_RUN_DIR:
                assert run_dir is not None
                self.set_run_dir(task_id, run_dir)
            case Write.FORGET:
                self.forget(task_id)
            case Write.NOTHING:
                pass

    def entries(self) -> list[Entry]:
        """The jobs not yet settled, oldest first; unreadable rows are dropped with a warning."""
        rows = self._db.execute(
            "SELECT task_id, payload, state, status, run_dir, claim_id FROM jobs ORDER BY rowid"
        ).fetchall()
        entries = []
        for task_id, payload, state, status, run_dir, claim_id in rows:
            try:
                entries.append(Entry(task_id, bytes(payload), state, json.loads(status), run_dir, claim_id))
            except ValueError:
                log.warning("journal: dropping an unreadable entry for task %s", task_id)
                self.forget(task_id)
        return entries

    def close(self) -> None:
        """Close the database; call it once, when the worker stops."""
        self._db.close()


# SQLite creates the -wal and -shm files with the database file's own mode.
_COMPANIONS = ("", "-wal", "-shm", "-journal")


def _private_files(directory: Path, path: Path) -> None:
    """Make the journal readable by this user only: it holds whole requests, extra_vars included.

    A missing state directory is created 0700; an existing one is left as the operator made
    it (`validate` warns when others may enter it). The database is created 0600 before
    SQLite opens it, and files an older version left with a wider mode are narrowed.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    for suffix in _COMPANIONS:
        companion = path.with_name(path.name + suffix)
        try:
            if companion.stat(follow_symlinks=False).st_mode & 0o077:
                os.chmod(companion, 0o600, follow_symlinks=False)
        except FileNotFoundError:
            pass


def exposure(directory: Path) -> str | None:
    """Why others on this machine could read the journal in `directory`, or None if they cannot."""
    try:
        mode = directory.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & 0o007:
        return f"{directory} is open to every user (mode {mode & 0o777:o}); the journal holds whole requests: chmod 700"
    if mode & 0o070:
        return f"{directory} is open to its group (mode {mode & 0o777:o}); the journal holds whole requests: chmod 700"
    return None
