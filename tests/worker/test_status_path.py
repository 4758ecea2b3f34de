"""The one status path, against a recording session: order, retain and expiry, retries, what it tells the table, refusals."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import trio
import trio.testing

from ansible_worker.mqtt.options import LinkLost, PublishRefused
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.protocol.models import JobStatus, State, TaskRequest
from ansible_worker.protocol.statuses import early_status
from ansible_worker.protocol.timestamps import utc_now
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.job import Job
from ansible_worker.worker.jobs import JobTable
from ansible_worker.worker.journal import Journal
from ansible_worker.worker.policies import StatusPolicy
from ansible_worker.worker.status_path import MAX_PENDING_ANSWERS, UNPUBLISHABLE, StatusPath
from tests.worker.tables import RecordingKeeper, job_table, submitted

TOPICS = Topics("ansible", "g")


@dataclass
class Published:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    expiry: int | None


@dataclass
class RecordingSession:
    """What the status path uses of a `BrokerSession`; `failures` are raised by the next publishes."""

    published: list[Published] = field(default_factory=list)
    failures: list[Exception] = field(default_factory=list)
    sent: trio.Event = field(default_factory=trio.Event)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool = False, expiry: int | None = None
    ) -> None:
        await trio.lowlevel.checkpoint()
        if self.failures:
            raise self.failures.pop(0)
        self.published.append(Published(topic, payload, qos, retain, expiry))
        self.sent.set()

    async def wait_connected(self) -> None:
        await trio.lowlevel.checkpoint()


def status(task_id: str, state: State) -> JobStatus:
    return JobStatus(task_id=task_id, state=state, created_at=utc_now())


def states(session: RecordingSession) -> list[tuple[str, str]]:
    return [(p.topic.split("/")[-2], JobStatus.model_validate_json(p.payload).state.value) for p in session.published]


def make(session: RecordingSession) -> StatusPath:
    return StatusPath(
        cast(BrokerSession, session),
        TOPICS,
        worker_id="w1",
        policy=StatusPolicy(interval=0.25, retention=3600),
        metrics=WorkerMetrics(),
    )


def table_over(path: StatusPath, journal: Journal | None = None) -> JobTable:
    """A job table that posts through `path`, and hears from its publisher what the broker took."""
    return job_table(path, journal=journal)


async def publish_all(path: StatusPath, table: JobTable) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(path.serve_publisher, table)
        with trio.fail_after(5):
            await path.wait_idle()
        nursery.cancel_scope.cancel()


async def test_statuses_leave_in_order_retained_and_only_terminal_ones_expire(tmp_path: Path) -> None:
    session = RecordingSession()
    journal = Journal(tmp_path)
    path = make(session)
    table = table_over(path, journal)
    table.accept(TaskRequest(task_id="a", playbook="site.yml", inventory="hosts"), b"{}", "claim-a")
    table.claimed("a", "claim-a")
    for state in (State.QUEUED, State.RUNNING, State.SUCCESS):
        table.post(status("a", state))
    await publish_all(path, table)
    assert states(session) == [("a", "queued"), ("a", "running"), ("a", "success")]
    assert all(p.qos == 1 and p.retain for p in session.published)
    assert [p.expiry for p in session.published] == [None, None, 3600]
    assert isinstance(table.keeper, RecordingKeeper)
    assert table.keeper.renewed == [("a", "claim-a")]
    # Acknowledged as terminal: nothing left for a restart to settle.
    assert journal.entries() == []
    journal.close()


async def test_a_lost_link_puts_the_status_back_and_it_is_sent_again_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    session = RecordingSession(failures=[LinkLost("gone")])
    path = make(session)
    path.post(status("a", State.QUEUED))
    path.post(status("a", State.SUCCESS))
    await publish_all(path, table_over(path))
    # A job's statuses keep their order: the terminal one never overtakes the one put back.
    assert states(session) == [("a", "queued"), ("a", "success")]


async def test_a_status_the_broker_refuses_is_dropped_not_retried() -> None:
    session = RecordingSession(failures=[PublishRefused("not authorized")])
    path = make(session)
    path.post(status("a", State.SUCCESS))
    path.post(status("b", State.SUCCESS))
    await publish_all(path, table_over(path))
    assert states(session) == [("b", "success")]


async def test_an_unpublishable_status_ends_its_job_or_is_replaced_by_a_plain_failure() -> None:
    session = RecordingSession()
    path = make(session)
    table = table_over(path)
    running = submitted(table, TaskRequest(task_id="running", playbook="site.yml", inventory="hosts"))
    ended = submitted(table, TaskRequest(task_id="ended", playbook="site.yml", inventory="hosts"))
    # Their `queued` statuses are out; the next two publishes fail.
    await publish_all(path, table)
    session.published.clear()
    session.failures = [ValueError("cannot encode"), ValueError("cannot encode")]
    running.state = State.RUNNING
    table.post(running.status())
    ended.finish(State.SUCCESS)
    table.post(ended.status())
    await publish_all(path, table)
    # The running job is ended through the table; the ended one gets a failure of its own.
    assert (running.cancel_state, running.cancel_reason) == (State.FAILED, f"{UNPUBLISHABLE}: cannot encode")
    assert running.cancel_scope.cancel_called
    [replacement] = session.published
    body = JobStatus.model_validate_json(replacement.payload)
    assert (body.task_id, body.state, body.error_message) == ("ended", State.FAILED, f"{UNPUBLISHABLE}: cannot encode")


async def test_refusals_are_live_only_and_a_flood_is_bounded() -> None:
    session = RecordingSession()
    path = make(session)
    for number in range(MAX_PENDING_ANSWERS + 10):
        path.refuse(f"bad{number}", "no")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(path.serve_answers)
        with trio.fail_after(5):
            while len(session.published) < MAX_PENDING_ANSWERS:
                session.sent = trio.Event()
                await session.sent.wait()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(session.published) == MAX_PENDING_ANSWERS
    first = session.published[0]
    assert not first.retain
    refusal = JobStatus.model_validate_json(first.payload)
    assert refusal.refused
    assert refusal == early_status("bad0", State.FAILED, "no", worker_id="w1", live_only=True).model_copy(
        update={"created_at": refusal.created_at, "completed_at": refusal.completed_at}
    )


async def running_with_an_unpublishable_update(session: RecordingSession) -> tuple[StatusPath, JobTable, Job]:
    """A running job "a" whose `running` is out and whose next update, posted, cannot be encoded."""
    path = make(session)
    table = table_over(path)
    job = submitted(table, TaskRequest(task_id="a", playbook="site.yml", inventory="hosts"))
    job.state = State.RUNNING
    table.post(job.status())
    await publish_all(path, table)
    session.published.clear()
    session.failures = [ValueError("cannot encode")]
    table.post_progress("a", lambda: job.status(progress_only=True))
    return path, table, job


async def test_an_unpublishable_update_of_a_job_that_is_ending_adds_no_terminal_status() -> None:
    """A job whose run has ended (its record still going out) posts its own terminal status: nothing is added.

    A replacement `failed` here would be a second terminal status for the job.
    """
    session = RecordingSession()
    path, table, job = await running_with_an_unpublishable_update(session)
    job.end(State.SUCCESS)
    await publish_all(path, table)
    # The run posts its terminal status once its record is out.
    table.post(job.status())
    await publish_all(path, table)
    assert states(session) == [("a", "success")]
    assert not job.cancel_scope.cancel_called


async def test_an_unpublishable_update_of_a_job_that_has_ended_adds_no_terminal_status() -> None:
    """An update still waiting when its job's terminal status was posted fails: that status goes out alone."""
    session = RecordingSession()
    path, table, job = await running_with_an_unpublishable_update(session)
    job.finish(State.SUCCESS)
    table.post(job.status())
    await publish_all(path, table)
    assert states(session) == [("a", "success")]
