"""The job table fences a job another worker took over: nothing more of it is posted, its run ends.

No broker and no Ansible, as in the table's own tests: statuses are posted by hand, and the
journal is the real one, counting writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_worker.protocol.models import State
from ansible_worker.worker.phases import Phase
from tests.worker.tables import CountingJournal, finish, job_table, recorded, request, start, submitted


@pytest.fixture
def journal(tmp_path: Path) -> CountingJournal:
    return CountingJournal(tmp_path / "state")


def test_a_queued_job_taken_over_by_another_worker_is_fenced_at_once(journal: CountingJournal) -> None:
    """Never started here: it leaves the table, the queue (a slot skips it) and the journal; nothing is posted."""
    table = job_table(journal=journal)
    fenced: list[str] = []

    def dropped(task_id: str) -> None:
        # As the worker wires it: the status path drops what it still holds of the job.
        fenced.append(task_id)
        table.statuses.drop(task_id)

    table.on_fenced = dropped
    job = submitted(table, request("a"))
    posted = len(recorded(table).posted)
    assert table.statuses.holds("a")
    assert table.fence("a", "w2")
    assert (table.phase("a"), job.settled, fenced) == (None, True, ["a"])
    assert not table.statuses.holds("a")
    assert journal.of("a") == ["add", "forget", "set_status"]
    assert len(recorded(table).posted) == posted
    # A job being claimed is the claim's business, not a fence's.
    table.accept(request("b"), b"", "claim-b")
    assert not table.fence("b", "w2")
    assert table.phase("b") is Phase.CLAIMING


def test_a_running_job_taken_over_is_ended_and_its_end_never_posted(journal: CountingJournal, tmp_path: Path) -> None:
    """Its run is cancelled (its process group ends); the journal keeps where it runs until then, then forgets it."""
    table = job_table(journal=journal)
    job = submitted(table, request("a"))
    start(table, job)
    posted = len(recorded(table).posted)
    assert table.fence("a", "w2")
    assert job.cancel_scope.cancel_called
    assert (table.phase("a"), job.fenced) == (Phase.FENCED, True)
    assert [entry.task_id for entry in journal.entries()] == ["a"]
    # Whatever the run still says is dropped: an update, its run directory, its end.
    table.post_progress("a", lambda: job.status(progress_only=True))
    table.started("a", tmp_path / "run")
    finish(table, job, State.CANCELLED)
    assert len(recorded(table).posted) == posted
    assert table.phase("a") is None
    assert journal.entries() == []
