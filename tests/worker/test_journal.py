"""The journal on its own: what it keeps, for how long, with which file modes, and what bad files do."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest

from ansible_worker.protocol.models import JobStatus, State
from ansible_worker.worker.journal import Entry, Journal, JournalError, exposure


def status(task_id: str, state: State = State.QUEUED, **fields: object) -> JobStatus:
    return JobStatus.model_validate({"task_id": task_id, "state": state, **fields})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "state")


def test_an_accepted_job_is_an_entry_with_its_payload_and_status(journal: Journal) -> None:
    """`add` stores the message as it arrived and the status as JSON, and `entries` reads them back."""
    journal.add("j1", b'{"task_id": "j1"}', status("j1"), claim_id="c1")
    [entry] = journal.entries()
    assert entry == Entry("j1", b'{"task_id": "j1"}', "queued", entry.status, None, "c1")
    assert entry.status["task_id"] == "j1"
    assert entry.status["state"] == "queued"


def test_accepting_again_keeps_the_claim_unless_a_new_one_is_given(journal: Journal) -> None:
    """A repeated `add` replaces payload and status; the claim id survives a None and yields to a new one."""
    journal.add("j1", b"one", status("j1"), claim_id="c1")
    journal.add("j1", b"two", status("j1", State.RUNNING))
    [entry] = journal.entries()
    assert (entry.payload, entry.state, entry.claim_id) == (b"two", "running", "c1")
    journal.add("j1", b"three", status("j1"), claim_id="c2")
    [entry] = journal.entries()
    assert (entry.payload, entry.claim_id) == (b"three", "c2")


def test_claimed_sets_and_clears_the_claim_id(journal: Journal) -> None:
    """`set_claims` records a claim on a held job, None removes it, and an unknown job gains no row."""
    journal.add("j1", b"", status("j1"))
    journal.set_claims("j1", "c9")
    assert [e.claim_id for e in journal.entries()] == ["c9"]
    journal.set_claims("j1", None)
    assert [e.claim_id for e in journal.entries()] == [None]
    journal.set_claims("unknown", "c1")
    assert [e.task_id for e in journal.entries()] == ["j1"]


def test_status_updates_a_held_job_and_leaves_others_alone(journal: Journal) -> None:
    """`set_status` rewrites state and status of a job the journal holds, and never creates a row."""
    journal.add("j1", b"", status("j1"))
    journal.set_status(status("j1", State.RUNNING, tasks_total=3))
    journal.set_status(status("stranger", State.SUCCESS))
    [entry] = journal.entries()
    assert (entry.task_id, entry.state, entry.status["tasks_total"]) == ("j1", "running", 3)


def test_started_records_the_run_directory(journal: Journal, tmp_path: Path) -> None:
    """`set_run_dir` stores where a job runs, so that a restart can find its processes."""
    journal.add("j1", b"", status("j1"))
    journal.set_run_dir("j1", tmp_path / "run-j1")
    assert [e.run_dir for e in journal.entries()] == [str(tmp_path / "run-j1")]


def test_settled_removes_only_that_job(journal: Journal) -> None:
    """`forget` deletes the job's row; the others stay, in the order they were accepted."""
    for task_id in ("a", "b", "c"):
        journal.add(task_id, task_id.encode(), status(task_id))
    journal.forget("b")
    journal.forget("never-there")
    assert [e.task_id for e in journal.entries()] == ["a", "c"]


def test_reopening_after_close_keeps_the_entries(tmp_path: Path) -> None:
    """What one worker process journaled is there, unchanged and in order, for the next one."""
    directory = tmp_path / "state"
    first = Journal(directory)
    first.add("b", b"payload-b", status("b"), claim_id="cb")
    first.add("a", b"payload-a", status("a"))
    first.set_status(status("a", State.SUCCESS, return_code=0))
    first.set_run_dir("b", tmp_path / "run")
    before = first.entries()
    first.close()
    second = Journal(directory)
    try:
        after = second.entries()
    finally:
        second.close()
    assert after == before
    assert [(e.task_id, e.state, e.claim_id, e.run_dir) for e in after] == [
        ("b", "queued", "cb", str(tmp_path / "run")),
        ("a", "success", None, None),
    ]


def test_an_unreadable_entry_is_dropped_and_settled(journal: Journal) -> None:
    """A row whose status is not JSON is left out of `entries` and deleted, the others kept."""
    journal.add("good", b"", status("good"))
    journal.add("bad", b"", status("bad"))
    with sqlite3.connect(journal.path) as raw:
        raw.execute("UPDATE jobs SET status = 'not json {' WHERE task_id = 'bad'")
    assert [e.task_id for e in journal.entries()] == ["good"]
    with sqlite3.connect(journal.path) as raw:
        assert raw.execute("SELECT task_id FROM jobs").fetchall() == [("good",)]


def test_accepted_raises_journal_error_when_the_database_cannot_take_it(journal: Journal) -> None:
    """`add` and `set_claims` turn a database failure into `JournalError`, so the job can be refused."""
    journal.close()
    with pytest.raises(JournalError):
        journal.add("j1", b"", status("j1"))
    with pytest.raises(JournalError):
        journal.set_claims("j1", "c1")


def test_status_started_and_settled_only_log_a_database_failure(
    journal: Journal, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The calls a running job makes never raise on a database failure; each logs an error."""
    journal.close()
    journal.set_status(status("j1", State.RUNNING))
    journal.set_run_dir("j1", tmp_path)
    journal.forget("j1")
    errors = [r for r in caplog.records if r.levelname == "ERROR" and r.name == "ansible_worker.worker.journal"]
    assert len(errors) == 3


def test_a_missing_state_directory_is_created_private(tmp_path: Path) -> None:
    """A new state directory is 0700 and the database file 0600, also its WAL companions."""
    directory = tmp_path / "a" / "state"
    journal = Journal(directory)
    journal.add("j1", b"secret", status("j1"))
    try:
        assert mode(directory) == 0o700
        assert mode(journal.path) == 0o600
        for suffix in ("-wal", "-shm"):
            companion = journal.path.with_name(journal.path.name + suffix)
            assert companion.exists()
            assert mode(companion) == 0o600
    finally:
        journal.close()


def test_an_existing_directory_keeps_its_mode_and_wide_files_are_narrowed(tmp_path: Path) -> None:
    """The operator's directory is left as it is; a database file others could read becomes 0600."""
    directory = tmp_path / "state"
    directory.mkdir()
    directory.chmod(0o750)
    path = directory / "journal.sqlite3"
    Journal(directory).close()
    path.chmod(0o644)
    Journal(directory).close()
    assert mode(directory) == 0o750
    assert mode(path) == 0o600


def test_a_symlink_in_place_of_the_database_is_not_followed(tmp_path: Path) -> None:
    """A link planted where the journal goes is refused (O_NOFOLLOW), and its target stays untouched."""
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    target.chmod(0o644)
    (directory / "journal.sqlite3").symlink_to(target)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        Journal(directory)
    assert target.read_bytes() == b"precious"
    assert mode(target) == 0o644


def test_a_corrupt_file_is_refused_when_opening(tmp_path: Path) -> None:
    """A journal file that is not SQLite makes the constructor fail, and the file is left as it was.

    The error is sqlite3's own `DatabaseError`, not `JournalError`: a worker with a corrupt
    journal does not start rather than start and forget what it held.
    """
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    garbage = b"this is not a database, just some bytes\n" * 200
    (directory / "journal.sqlite3").write_bytes(garbage)
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        Journal(directory)
    assert (directory / "journal.sqlite3").read_bytes() == garbage


def test_a_journal_from_an_older_version_gains_the_new_columns(tmp_path: Path) -> None:
    """A `jobs` table without run_dir and claim_id keeps its rows and gets both columns."""
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    with sqlite3.connect(directory / "journal.sqlite3") as raw:
        raw.execute(
            "CREATE TABLE jobs (task_id TEXT PRIMARY KEY, payload BLOB NOT NULL, state TEXT NOT NULL, status TEXT NOT NULL)"
        )
        raw.execute("INSERT INTO jobs VALUES ('old', x'7b7d', 'running', ?)", (json.dumps({"task_id": "old"}),))
    journal = Journal(directory)
    try:
        assert journal.entries() == [Entry("old", b"{}", "running", {"task_id": "old"}, None, None)]
        journal.set_claims("old", "c1")
        journal.set_run_dir("old", tmp_path)
        [entry] = journal.entries()
        assert (entry.claim_id, entry.run_dir) == ("c1", str(tmp_path))
    finally:
        journal.close()


def test_a_foreign_database_refuses_jobs(tmp_path: Path) -> None:
    """An SQLite file of some other program with its own `jobs` table: `add` raises `JournalError`."""
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    with sqlite3.connect(directory / "journal.sqlite3") as raw:
        raw.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, command TEXT)")
        raw.execute("INSERT INTO jobs (command) VALUES ('backup')")
    journal = Journal(directory)
    try:
        with pytest.raises(JournalError):
            journal.add("j1", b"", status("j1"))
    finally:
        journal.close()
    with sqlite3.connect(directory / "journal.sqlite3") as raw:
        assert raw.execute("SELECT command FROM jobs").fetchall() == [("backup",)]


@pytest.mark.parametrize(
    ("directory_mode", "expected"),
    [
        (0o700, None),
        (0o500, None),
        (0o750, "open to its group (mode 750)"),
        (0o770, "open to its group (mode 770)"),
        (0o705, "open to every user (mode 705)"),
        (0o755, "open to every user (mode 755)"),
    ],
)
def test_exposure_names_who_else_could_read_the_journal(
    tmp_path: Path, directory_mode: int, expected: str | None
) -> None:
    """`exposure` is None for a private directory, otherwise says whether the group or everyone may enter."""
    directory = tmp_path / "state"
    directory.mkdir()
    directory.chmod(directory_mode)
    try:
        reason = exposure(directory)
    finally:
        directory.chmod(0o700)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None
        assert expected in reason
        assert "chmod 700" in reason


def test_exposure_of_a_missing_directory_is_none(tmp_path: Path) -> None:
    """Nothing exposed where there is no directory yet (the journal will create it 0700)."""
    assert exposure(tmp_path / "absent") is None
