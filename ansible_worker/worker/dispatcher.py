"""Queue accepted jobs on a bounded channel and run up to `concurrency` of them at once."""

from __future__ import annotations

import logging

import trio

from ansible_worker.protocol.models import State, TaskRequest
from ansible_worker.protocol.statuses import SHUT_DOWN_BEFORE_START
from ansible_worker.run.job import Job
from ansible_worker.run.runner import JobRunner
from ansible_worker.worker.journal import JournalError
from ansible_worker.worker.status_path import StatusPath

log = logging.getLogger(__name__)


class Dispatcher:
    """The jobs one worker holds, queued or running, by task_id.

    `submit` never blocks: a full queue is answered at once with a `failed` status, since a
    controller is better told than kept waiting. `stop_taking` is how the worker stops: no
    new jobs, and the queued ones are returned for the worker to hand back or cancel; running
    ones are ended with `cancel_running`. `serve` returns once the queue is closed and the
    last running job has published its terminal status.
    """

    def __init__(
        self, runner: JobRunner, statuses: StatusPath, *, worker_id: str, queue_size: int, concurrency: int
    ) -> None:
        self.runner = runner
        self.statuses = statuses
        self.worker_id = worker_id
        self.queue_size = queue_size
        self.concurrency = concurrency
        self.jobs: dict[str, Job] = {}
        self.jobs_done = 0
        self._send, self._receive = trio.open_memory_channel[Job](queue_size)

    @property
    def running_count(self) -> int:
        """Jobs running now."""
        return sum(1 for job in self.jobs.values() if job.state == State.RUNNING)

    @property
    def queued_count(self) -> int:
        """Jobs waiting for a slot."""
        return sum(1 for job in self.jobs.values() if job.state == State.QUEUED)

    @property
    def buffered(self) -> int:
        """Jobs in the queue's buffer, counting cancelled ones that no slot has taken out yet."""
        return self._send.statistics().current_buffer_used

    @property
    def full(self) -> bool:
        """Whether `submit` would refuse a job now for want of room in the queue."""
        statistics = self._send.statistics()
        return statistics.current_buffer_used >= statistics.max_buffer_size

    def submit(self, request: TaskRequest, payload: bytes = b"") -> Job | None:
        """Queue a job; None if it was refused (queue full, shutting down) or is a duplicate."""
        task_id = request.task_id
        if task_id in self.jobs:
            log.warning(
                "task %s is already %s on this worker; ignoring the duplicate", task_id, self.jobs[task_id].state
            )
            return None
        job = Job(request, worker_id=self.worker_id, payload=payload)
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            self._refuse(job, State.FAILED, f"queue full (max {self.queue_size})")
            return None
        except trio.ClosedResourceError:
            self._refuse(job, State.CANCELLED, SHUT_DOWN_BEFORE_START)
            return None
        try:
            # On disk before anyone is told it was accepted.
            self.statuses.accepted(task_id, payload, job.status())
        except JournalError as exc:
            log.error("task %s: %s", task_id, exc)
            self._refuse(job, State.FAILED, str(exc))
            return None
        self.jobs[task_id] = job
        self.runner.announce(job)
        return job

    def cancel(
        self, task_id: str, description: str, *, requested_by: str | None = None, state: State = State.CANCELLED
    ) -> bool:
        """End a queued or running job as `state`; False if this worker does not hold it.

        `description` becomes the terminal status's `error_message`.
        """
        job = self.jobs.get(task_id)
        if job is None or job.state.terminal:
            return False
        job.cancel_reason = description
        job.cancel_state = state
        job.cancelled_by = requested_by
        if job.state == State.QUEUED:
            # Leaves the queue now; the slot that later receives it skips it.
            del self.jobs[task_id]
            self.jobs_done += 1
            job.finish(state, description)
            self.runner.announce(job)
        else:
            log.info("task %s: cancelling (%s)", task_id, description)
            job.cancel_scope.cancel()
        return True

    def fail(self, task_id: str, reason: str) -> bool:
        """End a job as `failed` with `reason` (its status cannot be published); False if not held."""
        return self.cancel(task_id, reason, state=State.FAILED)

    def stop_taking(self) -> list[Job]:
        """Take no more jobs; return the queued ones, which no slot will start any more.

        The caller hands them back to the group or cancels them. Slots finish the running
        jobs, then `run` returns.
        """
        self._send.close()
        queued = [job for job in self.jobs.values() if job.state == State.QUEUED]
        for job in queued:
            job.handed_back = True  # slots skip it from now on, whatever happens to it next
            del self.jobs[job.task_id]
            self.jobs_done += 1
        self.runner.on_transition()
        return queued

    def cancel_running(self, description: str) -> None:
        """Cancel every job held, with `description` as its error_message."""
        for task_id in list(self.jobs):
            self.cancel(task_id, description)

    async def wait_idle(self) -> None:
        """Wait until this worker holds no job, queued or running.

        Cancellation: the jobs go on.
        """
        while self.jobs:
            await next(iter(self.jobs.values())).done.wait()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run `concurrency` slots that take jobs from the queue, until it is closed and drained.

        Cancellation: each running job ends its process group (within its kill grace) and
        publishes its terminal status before this returns.
        """
        async with trio.open_nursery() as nursery:
            for _ in range(self.concurrency):
                nursery.start_soon(self._serve_slot)
            task_status.started()

    async def _serve_slot(self) -> None:
        async for job in self._receive:
            if job.settled:
                continue
            try:
                await self.runner.execute(job)
            finally:
                self.jobs.pop(job.task_id, None)
                self.jobs_done += 1
                self.runner.on_transition()

    def _refuse(self, job: Job, state: State, reason: str) -> None:
        job.finish(state, reason)
        self.runner.announce(job)
