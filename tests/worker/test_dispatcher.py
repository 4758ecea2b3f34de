"""The dispatcher with a real JobRunner and real ansible-playbook runs, without a broker.

`Dispatcher` takes a concrete `JobRunner` and `StatusPath` (no interface), so the jobs here
are real runs of a playbook that waits until its test creates a gate file: the test decides
when each job ends. The status path is the real one; its publisher task is not run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest
import trio

from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.ops.config import WorkerSettings
from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.protocol.models import JobStatus, State, TaskRequest
from ansible_worker.protocol.statuses import SHUT_DOWN_BEFORE_START
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.job import Job
from ansible_worker.run.wiring import job_runner
from ansible_worker.worker.dispatcher import Dispatcher
from ansible_worker.worker.journal import Journal
from ansible_worker.worker.status_path import StatusPath
from tests.conftest import ANSIBLE_PLAYBOOK

GATE_PLAYBOOK = """\
- name: Wait for the test to open the gate
  hosts: host1
  gather_facts: false
  tasks:
    - name: Wait for the gate file
      ansible.builtin.wait_for:
        path: "{{ gate }}"
        timeout: 120
"""


class RecordingStatuses(StatusPath):
    """The worker's real status path, also remembering every status posted to it, in order."""

    def __init__(self, journal: Journal | None = None) -> None:
        super().__init__(
            # Only the publisher task, not run here, would use the session.
            cast(BrokerSession, object()),
            Topics("ansible", "g"),
            worker_id="w1",
            interval=0,
            retention=None,
            journal=journal,
            metrics=WorkerMetrics(),
        )
        self.posted: list[JobStatus] = []

    def post(self, status: JobStatus) -> None:
        self.posted.append(status)
        super().post(status)

    def states(self, task_id: str) -> list[State]:
        return [status.state for status in self.posted if status.task_id == task_id]

    def only(self, task_id: str) -> JobStatus:
        [status] = [status for status in self.posted if status.task_id == task_id]
        return status


@pytest.fixture
def settings(playbook_dir: Path) -> WorkerSettings:
    (playbook_dir / "gate.yml").write_text(GATE_PLAYBOOK)
    runs = playbook_dir.parent / "runs"
    runs.mkdir(exist_ok=True)
    return WorkerSettings(
        group_name="g",
        playbook_directory=playbook_dir,
        ansible_playbook_path=ANSIBLE_PLAYBOOK,
        run_directory=runs,
        kill_grace=2,
    )


@pytest.fixture
def statuses() -> RecordingStatuses:
    return RecordingStatuses()


def dispatcher(
    settings: WorkerSettings, statuses: StatusPath, *, queue_size: int = 10, concurrency: int = 1
) -> Dispatcher:
    runner = job_runner(settings, statuses, topics=statuses.topics)
    return Dispatcher(runner, statuses, worker_id="w1", queue_size=queue_size, concurrency=concurrency)


def gated(task_id: str, gates: Path) -> TaskRequest:
    """A job that runs until the file `gates/<task_id>` exists."""
    return TaskRequest(
        task_id=task_id, playbook="gate.yml", inventory="one_host.ini", extra_vars={"gate": str(gates / task_id)}
    )


def submitted(dispatch: Dispatcher, request: TaskRequest) -> Job:
    job = dispatch.submit(request)
    assert job is not None, f"{request.task_id} was refused"
    return job


async def until(condition: Callable[[], bool]) -> None:
    """Until `condition()` holds (bounded by the caller); jobs change state without an event to wait on."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.02)


@asynccontextmanager
async def serving(dispatch: Dispatcher) -> AsyncIterator[None]:
    """`dispatch.serve` in the background; leaving cancels whatever is still running."""
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatch.serve)
        yield
        nursery.cancel_scope.cancel()


def test_a_full_queue_refuses_at_once_with_a_failed_status(
    settings: WorkerSettings, statuses: RecordingStatuses, tmp_path: Path
) -> None:
    """`submit` never blocks: beyond `queue_size` queued jobs it returns None and publishes `failed`."""
    dispatch = dispatcher(settings, statuses, queue_size=2)
    submitted(dispatch, gated("a", tmp_path))
    submitted(dispatch, gated("b", tmp_path))
    assert dispatch.full
    assert dispatch.buffered == 2
    assert dispatch.submit(gated("c", tmp_path)) is None
    assert statuses.states("a") == [State.QUEUED]
    refusal = statuses.only("c")
    assert (refusal.state, refusal.error_message) == (State.FAILED, "queue full (max 2)")
    assert set(dispatch.jobs) == {"a", "b"}
    assert (dispatch.queued_count, dispatch.running_count) == (2, 0)


def test_a_duplicate_task_id_is_ignored(settings: WorkerSettings, statuses: RecordingStatuses, tmp_path: Path) -> None:
    """A task_id the worker holds already is neither queued twice nor answered: its job's status stands."""
    dispatch = dispatcher(settings, statuses)
    job = submitted(dispatch, gated("a", tmp_path))
    assert dispatch.submit(gated("a", tmp_path)) is None
    assert dispatch.jobs == {"a": job}
    assert statuses.states("a") == [State.QUEUED]
    assert dispatch.buffered == 1


async def test_a_cancelled_queued_job_ends_at_once_and_never_runs(
    settings: WorkerSettings, statuses: RecordingStatuses, tmp_path: Path
) -> None:
    """Cancelling a queued job gives its terminal status now; the slot that later takes it skips it."""
    dispatch = dispatcher(settings, statuses)
    job = submitted(dispatch, gated("a", tmp_path))
    assert dispatch.cancel("a", "not wanted", requested_by="alice")
    assert (job.state, job.error_message, job.cancelled_by) == (State.CANCELLED, "not wanted", "alice")
    assert job.done.is_set()
    assert (dispatch.jobs, dispatch.jobs_done) == ({}, 1)
    assert not dispatch.cancel("a", "again")
    assert not dispatch.cancel("unknown", "never here")
    async with serving(dispatch):
        with trio.fail_after(10):
            await until(lambda: dispatch.buffered == 0)
            await dispatch.wait_idle()
    assert statuses.states("a") == [State.QUEUED, State.CANCELLED]
    assert dispatch.jobs_done == 1


def test_a_cancelled_queued_job_holds_its_place_in_the_queue(
    settings: WorkerSettings, statuses: RecordingStatuses, tmp_path: Path
) -> None:
    """As `buffered` says, a cancelled job fills the queue until a slot takes it out: `full` counts it."""
    dispatch = dispatcher(settings, statuses, queue_size=1)
    submitted(dispatch, gated("a", tmp_path))
    assert dispatch.cancel("a", "not wanted")
    assert dispatch.queued_count == 0
    assert dispatch.full
    assert dispatch.submit(gated("b", tmp_path)) is None
    assert statuses.states("b") == [State.FAILED]


def test_fail_ends_a_queued_job_as_failed(
    settings: WorkerSettings, statuses: RecordingStatuses, tmp_path: Path
) -> None:
    """`fail` is a cancel whose terminal state is `failed`, with the reason as error_message."""
    dispatch = dispatcher(settings, statuses)
    job = submitted(dispatch, gated("a", tmp_path))
    assert dispatch.fail("a", "its status cannot be published")
    assert (job.state, job.error_message) == (State.FAILED, "its status cannot be published")
    assert not dispatch.fail("a", "again")


async def test_wait_idle_returns_at_once_without_jobs(settings: WorkerSettings, statuses: RecordingStatuses) -> None:
    """With no jobs held, `wait_idle` does not wait."""
    dispatch = dispatcher(settings, statuses)
    with trio.fail_after(1):
        await dispatch.wait_idle()


def test_cancel_running_ends_every_held_job(
    settings: WorkerSettings, statuses: RecordingStatuses, tmp_path: Path
) -> None:
    """`cancel_running` cancels each job the dispatcher holds, queued ones at once."""
    dispatch = dispatcher(settings, statuses)
    jobs = [submitted(dispatch, gated(task_id, tmp_path)) for task_id in ("a", "b")]
    dispatch.cancel_running("worker stopped")
    assert [(job.state, job.error_message) for job in jobs] == [(State.CANCELLED, "worker stopped")] * 2
    assert dispatch.jobs == {}


@pytest.mark.slow
async def test_no_more_than_concurrency_jobs_run_at_once(
    settings: WorkerSettings, statuses: RecordingStatuses, tmp_path: Path
) -> None:
    """With concurrency 2, a third job stays queued until one of the two running jobs ends; all succeed."""
    dispatch = dispatcher(settings, statuses, concurrency=2)
    a, b, c = (submitted(dispatch, gated(task_id, tmp_path)) for task_id in ("a", "b", "c"))
    async with serving(dispatch):
        with trio.fail_after(60):
            await until(lambda: dispatch.running_count == 2)
            assert (a.state, b.state, c.state) == (State.RUNNING, State.RUNNING, State.QUEUED)
            # While both run, the third must not start.
            with trio.move_on_after(1):
                await until(lambda: c.state != State.QUEUED)
            assert (dispatch.running_count, dispatch.queued_count, c.state) == (2, 1, State.QUEUED)
            (tmp_path / "a").touch()
            await a.done.wait()
            await until(lambda: c.state == State.RUNNING)
            assert dispatch.running_count == 2
            (tmp_path / "b").touch()
            (tmp_path / "c").touch()
            await dispatch.wait_idle()
    assert [job.state for job in (a, b, c)] == [State.SUCCESS] * 3, [job.error_message for job in (a, b, c)]
    assert dispatch.jobs_done == 3
    assert statuses.states("c") == [State.QUEUED, State.RUNNING, State.SUCCESS]


@pytest.mark.slow
async def test_cancelling_a_running_job_ends_its_playbook(
    settings: WorkerSettings, statuses: RecordingStatuses, tmp_path: Path
) -> None:
    """A running job cancelled by request ends as `cancelled` with the given reason, its Ansible terminated."""
    dispatch = dispatcher(settings, statuses)
    job = submitted(dispatch, gated("a", tmp_path))
    async with serving(dispatch):
        with trio.fail_after(60):
            await until(lambda: job.progress.current_task is not None)
            assert dispatch.cancel("a", "stop it", requested_by="bob")
            await job.done.wait()
            await dispatch.wait_idle()
    assert (job.state, job.error_message, job.cancelled_by) == (State.CANCELLED, "stop it", "bob")
    assert job.return_code is not None
    assert job.return_code != 0
    assert statuses.states("a") == [State.QUEUED, State.RUNNING, State.CANCELLED]
    assert not dispatch.cancel("a", "too late")
    assert (dispatch.jobs, dispatch.jobs_done) == ({}, 1)


@pytest.mark.slow
async def test_stop_taking_hands_back_the_queued_and_finishes_the_running(
    settings: WorkerSettings, statuses: RecordingStatuses, tmp_path: Path
) -> None:
    """`stop_taking` returns the queued jobs (never to start), refuses new ones, and `serve` ends after the running job."""
    dispatch = dispatcher(settings, statuses)
    running = submitted(dispatch, gated("a", tmp_path))
    queued = [submitted(dispatch, gated(task_id, tmp_path)) for task_id in ("b", "c")]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(dispatch.serve)
            await until(lambda: running.state == State.RUNNING)
            handed_back = dispatch.stop_taking()
            assert handed_back == queued
            assert all(job.handed_back and job.state == State.QUEUED for job in handed_back)
            assert list(dispatch.jobs) == ["a"]
            assert dispatch.submit(gated("d", tmp_path)) is None
            with trio.move_on_after(0.5):
                await dispatch.wait_idle()
            assert running.state == State.RUNNING
            (tmp_path / "a").touch()
            await dispatch.wait_idle()
            # `serve` returns by itself now: its queue is closed and drained.
    assert statuses.states("a") == [State.QUEUED, State.RUNNING, State.SUCCESS], running.error_message
    assert statuses.states("b") == statuses.states("c") == [State.QUEUED]
    refusal = statuses.only("d")
    assert (refusal.state, refusal.error_message) == (State.CANCELLED, SHUT_DOWN_BEFORE_START)
    assert dispatch.jobs_done == 3


def test_an_accepted_job_is_journaled(settings: WorkerSettings, tmp_path: Path) -> None:
    """With a journal, `submit` records the job (its payload as it came) with its `queued` status."""
    journal = Journal(tmp_path / "state")
    try:
        statuses = RecordingStatuses(journal)
        dispatch = dispatcher(settings, statuses)
        assert dispatch.submit(gated("a", tmp_path), payload=b'{"task_id": "a"}') is not None
        [entry] = journal.entries()
        assert (entry.task_id, entry.payload, entry.state) == ("a", b'{"task_id": "a"}', "queued")
        assert statuses.states("a") == [State.QUEUED]
    finally:
        journal.close()


def test_a_job_the_journal_cannot_take_is_refused(settings: WorkerSettings, tmp_path: Path) -> None:
    """When the journal fails, the job is answered `failed` and not held: a restart could not settle it."""
    journal = Journal(tmp_path / "state")
    journal.close()
    statuses = RecordingStatuses(journal)
    dispatch = dispatcher(settings, statuses)
    assert dispatch.submit(gated("a", tmp_path)) is None
    assert dispatch.jobs == {}
    assert dispatch.buffered == 1  # the refused job still takes a place in the queue until a slot skips it
    refusal = statuses.only("a")
    assert refusal.state == State.FAILED
    assert refusal.error_message is not None
    assert "could not journal" in refusal.error_message
