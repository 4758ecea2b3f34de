"""A job table with the real status path and journal, no broker: what the table's and the slots' tests share.

The status path's publisher task is not run unless a test runs it; the statuses posted to
it are remembered in order, and the journal counts every write it is asked for.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import cast

from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.protocol.models import JobStatus, State, TaskRequest
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.job import Job
from ansible_worker.worker.claim_keeper import ClaimKeeper
from ansible_worker.worker.group_claims import GroupClaims
from ansible_worker.worker.jobs import JobTable
from ansible_worker.worker.journal import Journal
from ansible_worker.worker.phases import Phase
from ansible_worker.worker.policies import QueuePolicy, StatusPolicy
from ansible_worker.worker.status_path import StatusPath

TOPICS = Topics("ansible", "g")


class RecordingStatuses(StatusPath):
    """The worker's real status path, also remembering every status posted to it, in order."""

    def __init__(self, session: object | None = None) -> None:
        super().__init__(
            # Only the publisher task, run by few tests, uses the session.
            cast(BrokerSession, session or object()),
            TOPICS,
            worker_id="w1",
            policy=StatusPolicy(interval=0, retention=None),
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


class CountingJournal(Journal):
    """The real journal, counting each write by its kind (`phases.Write`) and task_id."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.writes: Counter[tuple[str, str]] = Counter()

    def add(self, task_id: str, payload: bytes, status: JobStatus, *, claim_id: str | None = None) -> None:
        self.writes["add", task_id] += 1
        super().add(task_id, payload, status, claim_id=claim_id)

    def set_claims(self, task_id: str, claim_id: str | None) -> None:
        self.writes["set_claims", task_id] += 1
        super().set_claims(task_id, claim_id)

    def set_status(self, status: JobStatus) -> None:
        self.writes["set_status", status.task_id] += 1
        super().set_status(status)

    def set_run_dir(self, task_id: str, run_dir: Path) -> None:
        self.writes["set_run_dir", task_id] += 1
        super().set_run_dir(task_id, run_dir)

    def forget(self, task_id: str) -> None:
        self.writes["forget", task_id] += 1
        super().forget(task_id)

    def of(self, task_id: str) -> list[str]:
        """The kinds of write made for `task_id`, each as often as it was made."""
        return sorted(kind for (kind, task), count in self.writes.items() if task == task_id for _ in range(count))


class RecordingKeeper(ClaimKeeper):
    """A claim keeper whose renewals are remembered instead of published."""

    def __init__(self) -> None:
        super().__init__(cast(GroupClaims, object()))
        self.renewed: list[tuple[str, str]] = []

    def renew(self, task_id: str, claim_id: str) -> None:
        self.renewed.append((task_id, claim_id))


def job_table(
    statuses: StatusPath | None = None, *, journal: Journal | None = None, queue_size: int = 10, concurrency: int = 1
) -> JobTable:
    """A table over `statuses` (a fresh recording one by default), announcing jobs by posting their status."""
    return JobTable(
        statuses or RecordingStatuses(),
        RecordingKeeper(),
        worker_id="w1",
        queue=QueuePolicy(size=queue_size, concurrency=concurrency),
        journal=journal,
    )


def submit(table: JobTable, request: TaskRequest, payload: bytes = b"") -> Job | None:
    """Accept a job, let the group agree it is this worker's, and queue it; None if the queue refused it."""
    claim_id = f"claim-{request.task_id}"
    table.accept(request, payload, claim_id)
    if table.place(request.task_id, claim_id, stopping=False) is not Phase.QUEUED:
        return None
    entry = table.entry(request.task_id)
    assert entry is not None
    return entry.job


def submitted(table: JobTable, request: TaskRequest, payload: bytes = b"") -> Job:
    job = submit(table, request, payload)
    assert job is not None, f"{request.task_id} was refused"
    return job


def request(task_id: str) -> TaskRequest:
    return TaskRequest(task_id=task_id, playbook="site.yml", inventory="hosts")


def recorded(table: JobTable) -> RecordingStatuses:
    assert isinstance(table.statuses, RecordingStatuses)
    return table.statuses


def start(table: JobTable, job: Job) -> None:
    """What the runner does when a slot takes the job: it says `running`."""
    job.state = State.RUNNING
    table.post(job.status())


def finish(table: JobTable, job: Job, state: State = State.SUCCESS) -> None:
    """What the runner does when the job ends: its terminal status."""
    job.finish(state)
    table.post(job.status())
