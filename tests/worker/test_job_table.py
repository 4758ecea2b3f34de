"""The job table on its own: its moves, the ones it refuses, cancel in every phase, and one journal write per move.

No broker and no Ansible: jobs are moved as the runner and the publisher would move them
(the runner's statuses are posted by hand), and the journal is the real one, counting writes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import trio
import trio.testing

from ansible_worker.protocol.models import CancelRequest, State
from ansible_worker.protocol.statuses import early_status
from ansible_worker.run.job import Job
from ansible_worker.worker.claiming import Claimer
from ansible_worker.worker.job_entry import JobEntry
from ansible_worker.worker.journal import Entry
from ansible_worker.worker.phases import JOURNAL, TRANSITIONS, Move, MoveRefused, Phase, next_phase
from ansible_worker.worker.recovery import settle_journal
from ansible_worker.worker.status_path import UNPUBLISHABLE
from tests.worker.tables import (
    CountingJournal,
    RecordingKeeper,
    finish,
    job_table,
    recorded,
    request,
    start,
    submit,
    submitted,
)


@pytest.fixture
def journal(tmp_path: Path) -> CountingJournal:
    return CountingJournal(tmp_path / "state")


# The table of moves.


def test_every_phase_has_a_row_and_every_move_one_journal_write() -> None:
    """Each phase is a row of the table, and each move has exactly one journal write (maybe none), wherever it starts."""
    assert set(TRANSITIONS) == {None, *Phase}
    assert set(JOURNAL) == set(Move)
    assert {move for row in TRANSITIONS.values() for move in row} == set(Move)


@pytest.mark.parametrize("phase", [None, *Phase], ids=lambda phase: phase.value if phase else "not-held")
def test_a_move_the_table_lacks_is_refused_by_name(phase: Phase | None) -> None:
    """`next_phase` follows the table and raises `MoveRefused`, naming the move and the phase, for the rest."""
    for move in Move:
        if move in TRANSITIONS[phase]:
            assert next_phase(phase, move) is TRANSITIONS[phase][move]
        else:
            with pytest.raises(MoveRefused, match=f"cannot {move.value} a job that is"):
                next_phase(phase, move)


def test_a_refused_move_changes_nothing(journal: CountingJournal) -> None:
    """A move from the wrong phase raises before the journal, the phase or the status path is touched."""
    table = job_table(journal=journal)
    job = submitted(table, request("a"), b'{"task_id": "a"}')
    writes, posted = journal.of("a"), list(recorded(table).posted)
    wrong_moves: list[Callable[[], object]] = [
        lambda: table.place("a", "claim-a", stopping=False),
        lambda: table.move("a", Move.LET_GO),
        lambda: table.accept(request("a"), b"", "c2"),
    ]
    for wrong in wrong_moves:
        with pytest.raises(MoveRefused):
            wrong()
    finish(table, job)
    # A second terminal status for one job is refused: exactly one per job.
    with pytest.raises(MoveRefused, match="cannot end a job that is settling"):
        table.post(job.status())
    assert recorded(table).states("a") == [State.QUEUED, State.SUCCESS]
    assert journal.of("a") == sorted([*writes, "set_status"])
    assert posted == recorded(table).posted[:1]
    assert table.phase("a") is Phase.SETTLING


# One journal write per move.


async def test_each_move_of_a_job_that_runs_is_journaled_once(journal: CountingJournal, tmp_path: Path) -> None:
    """Accepted, queued, started, placed, updated, ended, acknowledged: one write each, the row gone at the end."""
    table = job_table(journal=journal)
    job = submitted(table, request("a"), b'{"task_id": "a"}')
    # Journaled once when it was accepted; queueing records its status, not the job again.
    assert journal.of("a") == ["add", "set_status"]
    [entry] = journal.entries()
    assert (entry.task_id, entry.payload, entry.state, entry.claim_id) == (
        "a",
        b'{"task_id": "a"}',
        "queued",
        "claim-a",
    )
    start(table, job)
    table.started("a", tmp_path / "run")
    job.progress.ok = 1
    table.post_progress("a", lambda: job.status(progress_only=True))
    assert journal.of("a") == ["add", "set_run_dir", "set_status", "set_status"]
    # The update is journaled as it is built for publishing, not when it is posted.
    outbox = recorded(table).outbox
    assert (await outbox.take()).state is State.QUEUED
    assert journal.of("a") == ["add", "set_run_dir", "set_status", "set_status"]
    assert (await outbox.take()).tasks_ok == 1
    assert journal.of("a") == ["add", "set_run_dir", "set_status", "set_status", "set_status"]
    assert [entry.status["tasks_ok"] for entry in journal.entries()] == [1]
    finish(table, job)
    table.sent(job.status())
    assert journal.of("a") == ["add", "forget", "set_run_dir", "set_status", "set_status", "set_status", "set_status"]
    assert journal.entries() == []
    assert table.phase("a") is None
    assert isinstance(table.keeper, RecordingKeeper)
    assert table.keeper.renewed == [("a", "claim-a")]


def test_moves_that_give_a_job_up_write_once_or_leave_the_row(journal: CountingJournal) -> None:
    """A lost claim forgets the row, a refused job too (first); a job kept for the next start leaves it; a reclaim records both claims."""
    table = job_table(journal=journal)
    for task_id in ("lost", "refused", "kept", "back"):
        table.accept(request(task_id), b"{}", f"claim-{task_id}")
    table.move("lost", Move.LET_GO)
    table.move("refused", Move.REFUSE)
    # Still this worker's business while its refusal goes out: a copy is not claimed again.
    assert (table.phase("refused"), table.holds("refused")) == (Phase.REFUSING, True)
    assert journal.of("refused") == ["add", "forget"]
    table.move("refused", Move.REFUSED)
    table.move("kept", Move.KEEP)
    table.claimed("back", "claim-back")
    table.move("back", Move.HAND_BACK)
    table.move("back", Move.RECLAIM, claims="claim-back claim-again")
    assert journal.of("lost") == journal.of("refused") == ["add", "forget"]
    assert journal.of("kept") == ["add"]
    assert journal.of("back") == ["add", "set_claims"]
    assert {entry.task_id: entry.claim_id for entry in journal.entries()} == {
        "kept": "claim-kept",
        "back": "claim-back claim-again",
    }
    assert [table.phase(task_id) for task_id in ("lost", "refused", "kept", "back")] == [
        None,
        None,
        None,
        Phase.HANDING_BACK,
    ]


async def test_a_late_progress_update_does_not_rewind_the_journal(journal: CountingJournal) -> None:
    """An update still waiting when the job ends is published first, but the journal keeps the terminal status.

    Otherwise a worker killed before its terminal status reached the broker would report a
    job that succeeded as interrupted.
    """
    table = job_table(journal=journal)
    job = submitted(table, request("a"), b"{}")
    start(table, job)
    table.post_progress("a", lambda: job.status(progress_only=True))
    finish(table, job)
    outbox = recorded(table).outbox
    published = [(await outbox.take()).state for _ in range(3)]
    assert published == [State.QUEUED, State.RUNNING, State.SUCCESS]
    assert [entry.state for entry in journal.entries()] == ["success"]


def test_a_settling_job_keeps_only_its_claim() -> None:
    """Once its terminal status is posted, a job's request, payload and run (output, record) are let go."""
    table = job_table()
    job = submitted(table, request("a"), b"x" * 4096)
    finish(table, job)
    assert table.entry("a") == JobEntry(Phase.SETTLING, None, claim_id="claim-a")
    assert table.held_claims() == [("a", "claim-a")]


def test_a_job_reported_from_the_journal_is_settled_when_its_status_is_out(journal: CountingJournal) -> None:
    """`report` sends the kept status once, writes it once, and forgets the row and renews the claim once it is out."""
    status = Job(request("old"), worker_id="w1").status()
    journal.add("old", b"{}", status)
    table = job_table(journal=journal)
    status = status.model_copy(update={"state": State.FAILED})
    table.report(status, claim_id="claim-old")
    assert recorded(table).posted == [status]
    table.sent(status)
    assert journal.of("old") == ["add", "forget", "set_status"]
    assert isinstance(table.keeper, RecordingKeeper)
    assert table.keeper.renewed == [("old", "claim-old")]


# The queue.


def test_a_full_queue_refuses_at_once_with_a_failed_status() -> None:
    """`queue` never blocks: beyond the queue's size it returns None and publishes `failed`."""
    table = job_table(queue_size=2)
    submitted(table, request("a"))
    submitted(table, request("b"))
    assert table.buffered == table.queue_size
    assert table.buffered == 2
    assert submit(table, request("c")) is None
    assert recorded(table).states("a") == [State.QUEUED]
    refusal = recorded(table).only("c")
    assert (refusal.state, refusal.error_message) == (State.FAILED, "queue full (max 2)")
    assert table.in_phase(Phase.QUEUED, Phase.RUNNING) == ["a", "b"]
    assert (table.count(Phase.QUEUED), table.running_count) == (2, 0)


def test_a_duplicate_task_id_is_refused() -> None:
    """A task_id the table holds already is neither queued twice nor answered: its job's status stands."""
    table = job_table()
    job = submitted(table, request("a"))
    with pytest.raises(MoveRefused):
        submit(table, request("a"))
    entry = table.entry("a")
    assert entry is not None
    assert entry.job is job
    assert recorded(table).states("a") == [State.QUEUED]
    assert table.buffered == 1


def test_a_cancelled_queued_job_holds_its_place_in_the_queue() -> None:
    """As `buffered` says, a cancelled job fills the queue until a slot takes it out: `full` counts it."""
    table = job_table(queue_size=1)
    submitted(table, request("a"))
    assert table.cancel("a", CancelRequest(reason="not wanted"))
    assert table.count(Phase.QUEUED) == 0
    assert table.buffered == table.queue_size
    assert submit(table, request("b")) is None
    assert recorded(table).states("b") == [State.FAILED]


async def test_wait_idle_returns_at_once_without_jobs() -> None:
    """With no jobs queued or running, `wait_idle` does not wait."""
    with trio.fail_after(1):
        await job_table().wait_idle()


def test_end_running_ends_every_job_in_the_queue_or_a_slot() -> None:
    """`end_running` cancels each job queued or running, queued ones at once."""
    table = job_table()
    jobs = [submitted(table, request(task_id)) for task_id in ("a", "b")]
    table.end_running("worker stopped")
    assert [(job.state, job.error_message) for job in jobs] == [(State.CANCELLED, "worker stopped")] * 2
    assert table.in_phase(Phase.QUEUED, Phase.RUNNING) == []


# Cancel, in every phase.


def test_cancel_while_claiming_waits_for_the_queue_then_ends_the_job() -> None:
    table = job_table()
    table.accept(request("a"), b"{}", "claim-a")
    assert table.cancel("a", CancelRequest(reason="too early", requested_by="alice"))
    assert table.pending_cancel("a") == CancelRequest(reason="too early", requested_by="alice")
    assert recorded(table).posted == []
    # The worker stops meanwhile: a job with a cancel request is not handed back, it ends here.
    assert table.place("a", "claim-a", stopping=True) is Phase.SETTLING
    final = recorded(table).posted[-1]
    assert (final.state, final.error_message) == (State.CANCELLED, "cancelled by alice: too early")
    assert recorded(table).states("a") == [State.QUEUED, State.CANCELLED]


def test_cancel_while_queued_ends_the_job_at_once() -> None:
    table = job_table()
    job = submitted(table, request("a"))
    assert table.cancel("a", CancelRequest(requested_by="bob"))
    assert (job.state, job.error_message, job.cancelled_by) == (State.CANCELLED, "cancelled by bob", "bob")
    assert (table.phase("a"), table.jobs_done) == (Phase.SETTLING, 1)


def test_cancel_while_running_cancels_the_run_with_the_reason() -> None:
    table = job_table()
    job = submitted(table, request("a"))
    start(table, job)
    assert table.cancel("a", CancelRequest(reason="enough"))
    assert job.cancel_scope.cancel_called
    assert (job.cancel_reason, job.cancel_state) == ("cancelled: enough", State.CANCELLED)
    # The run ends it: until then it is running.
    assert table.phase("a") is Phase.RUNNING
    finish(table, job, State.CANCELLED)
    assert not table.cancel("a", CancelRequest(reason="again"))


async def test_cancel_while_handing_back_is_kept_and_wakes_the_hand_back() -> None:
    table = job_table()
    table.accept(request("a"), b"{}", "claim-a")
    # Claimed while the worker stops: handed back, not queued.
    assert table.place("a", "claim-a", stopping=True) is Phase.HANDING_BACK
    assert recorded(table).posted == []
    async with trio.open_nursery() as nursery:
        woken = trio.Event()

        async def wait() -> None:
            await table.wait_cancel("a")
            woken.set()

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert table.cancel("a", CancelRequest(reason="not now", requested_by="ops"))
        with trio.fail_after(1):
            await woken.wait()
    # The hand-back ends it here, as the request asks.
    reason = CancelRequest(reason="not now", requested_by="ops").describe()
    table.post(early_status("a", State.CANCELLED, reason, worker_id="w1"))
    assert table.phase("a") is Phase.SETTLING
    final = recorded(table).only("a")
    assert (final.state, final.error_message) == (State.CANCELLED, "cancelled by ops: not now")


def test_cancel_of_a_settling_or_unknown_job_does_nothing() -> None:
    table = job_table()
    job = submitted(table, request("a"))
    finish(table, job)
    assert not table.cancel("a", CancelRequest())
    assert not table.cancel("never-here", CancelRequest())
    assert recorded(table).states("a") == [State.QUEUED, State.SUCCESS]


def test_a_cancel_in_any_phase_journals_only_the_moves_that_end_the_job(journal: CountingJournal) -> None:
    """A cancel writes nothing itself: a queued job's end is one write, a kept request writes when the job ends."""
    table = job_table(journal=journal)
    for task_id in ("claiming", "refusing", "handing-back"):
        table.accept(request(task_id), b"{}", f"claim-{task_id}")
    table.move("refusing", Move.REFUSE)
    table.claimed("handing-back", "claim-handing-back")
    table.move("handing-back", Move.HAND_BACK)
    queued = submitted(table, request("queued"))
    running = submitted(table, request("running"))
    start(table, running)
    finish(table, submitted(table, request("settling")))
    names = ("claiming", "refusing", "handing-back", "queued", "running", "settling")
    before = {task_id: journal.of(task_id) for task_id in names}
    answers = {task_id: table.cancel(task_id, CancelRequest(requested_by="ops")) for task_id in names}
    assert answers == {task_id: task_id not in ("refusing", "settling") for task_id in names}
    assert queued.state is State.CANCELLED
    assert {task_id: journal.of(task_id) for task_id in names} == {
        **before,
        "queued": sorted([*before["queued"], "set_status"]),
    }
    # Each kept or running cancel is written once, by the move that ends its job.
    table.place("claiming", "claim-claiming", stopping=False)
    finish(table, running, State.CANCELLED)
    table.post(early_status("handing-back", State.CANCELLED, "cancelled by ops", worker_id="w1"))
    assert journal.of("claiming") == ["add", "set_status", "set_status"]
    assert journal.of("running") == sorted([*before["running"], "set_status"])
    assert journal.of("handing-back") == sorted([*before["handing-back"], "set_status"])
    assert [table.phase(task_id) for task_id in names] == [Phase.SETTLING, Phase.REFUSING, *[Phase.SETTLING] * 4]


# What the publisher tells the table.


def test_an_unpublishable_status_of_a_queued_job_ends_it_failed() -> None:
    """The reason becomes the job's error_message; the job is then over."""
    table = job_table()
    job = submitted(table, request("a"))
    table.unpublishable(recorded(table).only("a"), "its status cannot be published")
    assert (job.state, job.error_message) == (State.FAILED, "its status cannot be published")
    assert not table.cancel("a", CancelRequest(reason="again"))
    assert job.error_message == "its status cannot be published"


def test_an_unpublishable_replacement_is_given_up(caplog: pytest.LogCaptureFixture) -> None:
    table = job_table()
    job = submitted(table, request("a"))
    finish(table, job)
    table.unpublishable(job.status(), f"{UNPUBLISHABLE}: cannot encode")
    replacement = recorded(table).posted[-1]
    assert (replacement.state, replacement.error_message) == (State.FAILED, f"{UNPUBLISHABLE}: cannot encode")
    table.unpublishable(replacement, f"{UNPUBLISHABLE}: cannot encode")
    assert recorded(table).posted[-1] is replacement
    assert "its replacement status could not be published either; it is lost" in caplog.text


# Who turns the journal's refusal into an answer.


async def test_settling_the_journal_leaves_an_entry_to_a_copy_that_came_first(journal: CountingJournal) -> None:
    """A copy claimed while the journal was read owns the row: an unreadable old entry does not forget it."""
    table = job_table(journal=journal)
    table.accept(request("x"), b"{}", "claim-x")
    ended = Job(request("y"), worker_id="w1")
    ended.finish(State.SUCCESS)
    entries = [
        Entry("x", b"not a task", "queued", {}, None, "claim-old"),
        Entry("y", b"{}", "success", ended.status().model_dump(mode="json"), None, "claim-y"),
    ]
    refused: list[str] = []
    await settle_journal(
        entries,
        jobs=table,
        claimer=cast(Claimer, object()),
        refuse=lambda task_id, reason: refused.append(task_id),
        max_message_bytes=4096,
        kill_grace=1,
    )
    assert (table.phase("x"), journal.of("x")) == (Phase.CLAIMING, ["add"])
    assert table.phase("y") is Phase.SETTLING
    assert recorded(table).states("y") == [State.SUCCESS]
    assert refused == []
