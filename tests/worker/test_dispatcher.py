"""The slots with a real JobRunner and real ansible-playbook runs, without a broker.

The jobs here are real runs of a playbook that waits until its test creates a gate file:
the test decides when each job ends. The job table and the status path are the real ones;
the status path's publisher task is not run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from ansible_worker.ops.config import WorkerSettings
from ansible_worker.protocol.models import CancelRequest, State, TaskRequest
from ansible_worker.protocol.statuses import SHUT_DOWN_BEFORE_START
from ansible_worker.run.wiring import job_runner
from ansible_worker.worker.dispatcher import Dispatcher
from ansible_worker.worker.jobs import JobTable
from ansible_worker.worker.phases import Phase
from tests.conftest import ANSIBLE_PLAYBOOK
from tests.worker.tables import TOPICS, RecordingStatuses, job_table, submit, submitted

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


def slots(
    settings: WorkerSettings, statuses: RecordingStatuses, *, concurrency: int = 1
) -> tuple[JobTable, Dispatcher]:
    """A job table and its slots, running jobs with a real runner that posts to the table."""
    table = job_table(statuses, concurrency=concurrency)
    runner = job_runner(settings, table, topics=TOPICS)
    table.announce = runner.announce
    return table, Dispatcher(runner, table.waiting, concurrency=concurrency)


def gated(task_id: str, gates: Path) -> TaskRequest:
    """A job that runs until the file `gates/<task_id>` exists."""
    return TaskRequest(
        task_id=task_id, playbook="gate.yml", inventory="one_host.ini", extra_vars={"gate": str(gates / task_id)}
    )


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


async def test_a_cancelled_queued_job_ends_at_once_and_never_runs(
    settings: WorkerSettings, statuses: RecordingStatuses, tmp_path: Path
) -> None:
    """Cancelling a queued job gives its terminal status now; the slot that later takes it skips it."""
    table, dispatch = slots(settings, statuses)
    job = submitted(table, gated("a", tmp_path))
    assert table.cancel("a", CancelRequest(reason="not wanted", requested_by="alice"))
    assert (job.state, job.error_message, job.cancelled_by) == (
        State.CANCELLED,
        "cancelled by alice: not wanted",
        "alice",
    )
    assert job.done.is_set()
    assert (table.in_phase(Phase.QUEUED, Phase.RUNNING), table.jobs_done) == ([], 1)
    assert not table.cancel("a", CancelRequest(reason="again"))
    assert not table.cancel("unknown", CancelRequest(reason="never here"))
    async with serving(dispatch):
        with trio.fail_after(10):
            await until(lambda: table.buffered == 0)
            await table.wait_idle()
    assert statuses.states("a") == [State.QUEUED, State.CANCELLED]
    assert table.jobs_done == 1


@pytest.mark.slow
async def test_no_more_than_concurrency_jobs_run_at_once(
    settings: WorkerSettings, statuses: RecordingStatuses, tmp_path: Path
) -> None:
    """With concurrency 2, a third job stays queued until one of the two running jobs ends; all succeed."""
    table, dispatch = slots(settings, statuses, concurrency=2)
    a, b, c = (submitted(table, gated(task_id, tmp_path)) for task_id in ("a", "b", "c"))
    async with serving(dispatch):
        with trio.fail_after(60):
            await until(lambda: table.running_count == 2)
            assert (a.state, b.state, c.state) == (State.RUNNING, State.RUNNING, State.QUEUED)
            # While both run, the third must not start.
            with trio.move_on_after(1):
                await until(lambda: c.state != State.QUEUED)
            assert (table.running_count, table.count(Phase.QUEUED), c.state) == (2, 1, State.QUEUED)
            (tmp_path / "a").touch()
            await a.done.wait()
            await until(lambda: c.state == State.RUNNING)
            assert table.running_count == 2
            (tmp_path / "b").touch()
            (tmp_path / "c").touch()
            await table.wait_idle()
    assert [job.state for job in (a, b, c)] == [State.SUCCESS] * 3, [job.error_message for job in (a, b, c)]
    assert table.jobs_done == 3
    assert statuses.states("c") == [State.QUEUED, State.RUNNING, State.SUCCESS]


@pytest.mark.slow
async def test_cancelling_a_running_job_ends_its_playbook(
    settings: WorkerSettings, statuses: RecordingStatuses, tmp_path: Path
) -> None:
    """A running job cancelled by request ends as `cancelled` with the given reason, its Ansible terminated."""
    table, dispatch = slots(settings, statuses)
    job = submitted(table, gated("a", tmp_path))
    async with serving(dispatch):
        with trio.fail_after(60):
            await until(lambda: job.progress.current_task is not None)
            assert table.cancel("a", CancelRequest(reason="stop it", requested_by="bob"))
            await job.done.wait()
            await table.wait_idle()
    assert (job.state, job.error_message, job.cancelled_by) == (State.CANCELLED, "cancelled by bob: stop it", "bob")
    assert job.return_code is not None
    assert job.return_code != 0
    assert statuses.states("a") == [State.QUEUED, State.RUNNING, State.CANCELLED]
    assert not table.cancel("a", CancelRequest(reason="too late"))
    assert (table.in_phase(Phase.QUEUED, Phase.RUNNING), table.jobs_done) == ([], 1)


@pytest.mark.slow
async def test_stop_taking_hands_back_the_queued_and_finishes_the_running(
    settings: WorkerSettings, statuses: RecordingStatuses, tmp_path: Path
) -> None:
    """`stop_taking` hands back the queued jobs (never to start), refuses new ones, and `serve` ends after the running job."""
    table, dispatch = slots(settings, statuses)
    running = submitted(table, gated("a", tmp_path))
    queued = [submitted(table, gated(task_id, tmp_path)) for task_id in ("b", "c")]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(dispatch.serve)
            await until(lambda: running.state == State.RUNNING)
            handed_back = table.stop_taking()
            assert handed_back == [job.task_id for job in queued]
            assert all(job.handed_back and job.state == State.QUEUED for job in queued)
            assert [table.phase(task_id) for task_id in handed_back] == [Phase.HANDING_BACK] * 2
            assert table.in_phase(Phase.QUEUED, Phase.RUNNING) == ["a"]
            assert submit(table, gated("d", tmp_path)) is None
            with trio.move_on_after(0.5):
                await table.wait_idle()
            assert running.state == State.RUNNING
            (tmp_path / "a").touch()
            await table.wait_idle()
            # `serve` returns by itself now: its queue is closed and drained.
    assert statuses.states("a") == [State.QUEUED, State.RUNNING, State.SUCCESS], running.error_message
    assert statuses.states("b") == statuses.states("c") == [State.QUEUED]
    refusal = statuses.only("d")
    assert (refusal.state, refusal.error_message) == (State.CANCELLED, SHUT_DOWN_BEFORE_START)
    assert table.jobs_done == 3
