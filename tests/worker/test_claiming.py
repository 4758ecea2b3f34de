"""The claimer on its own: a job the journal cannot take, a claim the broker refuses for good, a task_id with a past.

No broker: the group's claims and the session are stand-ins that record what the worker
does, and when; the job table and the journal are the real ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import trio

from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.claims import Claim
from ansible_worker.protocol.models import JobStatus, TaskRequest
from ansible_worker.worker.claiming import Claimer
from ansible_worker.worker.group_claims import ClaimFailed, GroupClaims
from ansible_worker.worker.hand_back import HandBack
from ansible_worker.worker.jobs import JobTable
from ansible_worker.worker.journal import Journal
from tests.worker.tables import CountingJournal, RecordingStatuses, job_table


def request(task_id: str) -> TaskRequest:
    return TaskRequest(task_id=task_id, playbook="site.yml", inventory="hosts")


class Witness:
    """What the journal held, and whether the table held the job, at each step the worker took."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.table: JobTable | None = None
        self.steps: list[tuple[str, list[str], bool]] = []

    def saw(self, step: str, task_id: str) -> None:
        assert self.table is not None
        rows = [entry.task_id for entry in self.journal.entries()]
        self.steps.append((step, rows, self.table.holds(task_id)))


class RefusedClaims:
    """Claims the broker refuses for good (its ACL); a release is recorded with what the worker held then."""

    def __init__(self, witness: Witness) -> None:
        self.witness = witness

    async def claim(
        self, task_id: str, claim_id: str, *, also_ours: frozenset[str], request_sha256: str | None = None
    ) -> bool:
        raise ClaimFailed("not authorized", permanent=True)

    def holder(self, task_id: str) -> Claim | None:
        return None

    async def release(self, task_id: str, claim_id: str, **options: Any) -> None:
        self.witness.saw("release", task_id)


class RefusalSession:
    """A session whose publishes (here, the live refusal) are recorded with what the worker held then."""

    def __init__(self, witness: Witness) -> None:
        self.witness = witness

    async def publish(self, topic: str, payload: bytes, **options: Any) -> None:
        self.witness.saw(JobStatus.model_validate_json(payload).state.value, topic.split("/")[-2])


async def test_a_job_the_journal_cannot_take_is_refused(tmp_path: Path) -> None:
    """When the journal fails, the job is refused with the reason and not held: a restart could not settle it."""
    journal = Journal(tmp_path / "state")
    journal.close()
    table = job_table(journal=journal)
    claimer = Claimer(
        cast(BrokerSession, object()), cast(GroupClaims, object()), table, cast(HandBack, object()), trio.Event()
    )
    async with trio.open_nursery() as nursery:
        claimer.nursery = nursery
        refusal = claimer.start(request("a"), b"{}")
    assert refusal is not None
    assert "could not journal" in refusal
    assert table.phase("a") is None
    assert table.buffered == 0
    assert isinstance(table.statuses, RecordingStatuses)
    assert table.statuses.posted == []


async def test_a_claim_refused_for_good_is_forgotten_before_it_is_released_and_answered(tmp_path: Path) -> None:
    """A restart must not run a job that was refused; a copy arriving meanwhile is still not claimed again."""
    journal = CountingJournal(tmp_path / "state")
    witness = Witness(journal)
    table = witness.table = job_table(RecordingStatuses(RefusalSession(witness)), journal=journal)
    claims = cast(GroupClaims, RefusedClaims(witness))
    claimer = Claimer(cast(BrokerSession, object()), claims, table, cast(HandBack, object()), trio.Event())
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            claimer.nursery = nursery
            assert claimer.start(request("a"), b"{}") is None
    # No row by the time the claim is released or the refusal sent; the table held the job until then.
    assert witness.steps == [("release", [], True), ("failed", [], True)]
    assert (table.phase("a"), journal.of("a")) == (None, ["add", "forget"])
    # Live only: the refusal is not a status of a job this worker holds.
    assert isinstance(table.statuses, RecordingStatuses)
    assert table.statuses.posted == []


class UncheckedClaims:
    """Claims that nobody holds: every claim and release this worker would make is recorded, and none is confirmed."""

    def __init__(self) -> None:
        self.made: list[str] = []

    async def claim(
        self, task_id: str, claim_id: str, *, also_ours: frozenset[str], request_sha256: str | None = None
    ) -> bool:
        self.made.append(f"claim {task_id}")
        return True

    def holder(self, task_id: str) -> Claim | None:
        return None

    def released_request(self, task_id: str) -> str | None:
        return None

    async def release(self, task_id: str, claim_id: str, **options: Any) -> None:
        self.made.append(f"release {task_id}")


class PublishedStatuses:
    """A session that only records the statuses published through it."""

    def __init__(self) -> None:
        self.published: list[JobStatus] = []

    async def publish(self, topic: str, payload: bytes, **options: Any) -> None:
        self.published.append(JobStatus.model_validate_json(payload))


async def test_a_task_id_whose_past_the_broker_does_not_tell_is_never_claimed(autojump_clock: object) -> None:
    """Unanswered, the check runs nothing and claims nothing; at shutdown the job is refused saying why."""
    session = PublishedStatuses()
    table = job_table(RecordingStatuses(session))
    claims = UncheckedClaims()
    stopping = trio.Event()
    stopping.set()
    claimer = Claimer(
        cast(BrokerSession, object()), cast(GroupClaims, claims), table, cast(HandBack, object()), stopping
    )

    async def no_answer(task_id: str) -> bytes | None:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    claimer.read_status = no_answer
    async with trio.open_nursery() as nursery:
        claimer.nursery = nursery
        assert claimer.start(request("quiet"), b"{}") is None
    assert claims.made == []
    assert table.phase("quiet") is None
    [refusal] = session.published
    assert refusal.state.value == "failed"
    assert refusal.error_message == (
        "could not claim the job for this worker: the broker did not say within 10s whether it retains a status for it"
    )


async def test_a_task_id_whose_status_is_retained_is_let_go_unclaimed(caplog: pytest.LogCaptureFixture) -> None:
    """Any retained status makes the copy a duplicate: nothing claimed, nothing published, the reason logged."""
    session = PublishedStatuses()
    table = job_table(RecordingStatuses(session))
    claims = UncheckedClaims()
    claimer = Claimer(
        cast(BrokerSession, object()), cast(GroupClaims, claims), table, cast(HandBack, object()), trio.Event()
    )
    asked: list[str] = []

    async def retained(task_id: str) -> bytes | None:
        asked.append(task_id)
        return b'{"task_id": "old", "state": "success", "worker_id": "w9"}'

    claimer.read_status = retained
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            claimer.nursery = nursery
            assert claimer.start(request("old"), b"{}") is None
    assert asked == ["old"]
    assert claims.made == []
    assert session.published == []
    assert table.phase("old") is None
    assert (
        "task old: refused a duplicate: the group already took this task_id (its status is retained: success,"
        " worker w9); the original job's status is left alone"
    ) in caplog.text


@pytest.mark.parametrize(
    ("retained", "kept"),
    [
        # Handed back here, then the worker died before anyone took it: still this worker's job.
        (b'{"task_id": "mine", "state": "queued", "worker_id": null, "handed_back_by": "w1"}', True),
        (b'{"task_id": "mine", "state": "queued", "worker_id": "w1"}', True),
        # Settled, or another worker's: the journal's copy is a duplicate now.
        (b'{"task_id": "mine", "state": "success", "worker_id": "w1"}', False),
        (b'{"task_id": "mine", "state": "running", "worker_id": "w2"}', False),
        (b'{"task_id": "mine", "state": "queued", "worker_id": "w2", "handed_back_by": "w1"}', False),
    ],
)
async def test_a_journal_job_whose_own_unsettled_status_is_retained_is_claimed_again(
    tmp_path: Path, retained: bytes, kept: bool
) -> None:
    """After a restart long after its claim lapsed, the worker's own `queued` status is no sign of a duplicate."""
    table = job_table(RecordingStatuses(PublishedStatuses()), journal=Journal(tmp_path / "state"))
    claims = UncheckedClaims()
    claimer = Claimer(
        cast(BrokerSession, object()), cast(GroupClaims, claims), table, cast(HandBack, object()), trio.Event()
    )

    async def read(task_id: str) -> bytes | None:
        return retained

    claimer.read_status = read
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            claimer.nursery = nursery
            assert (
                claimer.start(request("mine"), b"{}", earlier=frozenset({"0123456789abcdef"}), from_journal=True)
                is None
            )
    assert claims.made == (["claim mine"] if kept else [])
    assert (table.phase("mine") is not None) is kept
