"""run/ without a broker: a JobRunner wired as the worker wires it, reporting to sinks that keep what they are given.

A job's statuses come back as a controller reads them (the JSON the worker would publish),
its record as `Client.record` decodes it, its live events as the plugin wrote them. A message
the request checks refuse is answered as the worker answers it; a job is cancelled as the
worker's dispatcher cancels one. The warm pool is served for the length of
the block, as in the worker's infrastructure nursery.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from ansible_worker.ops.config import WorkerSettings
from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.protocol.models import CancelRequest, JobStatus, RecordSummary, State, TaskRequest
from ansible_worker.protocol.records import decode_record
from ansible_worker.protocol.statuses import early_status
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.events.event_stream import EventStream
from ansible_worker.run.events.record_collector import RecordCollector
from ansible_worker.run.job import Job
from ansible_worker.run.runner import JobRunner
from ansible_worker.run.sources.job_sources import ContentSource
from ansible_worker.run.wiring import job_runner
from tests.conftest import TERMINAL, worker_values

TOPICS = Topics("ansible", "runs")
RECORD_LIMIT = 1_048_576


class Sinks:
    """A status, event and record sink each, keeping everything a controller would be sent, by task_id."""

    def __init__(self) -> None:
        self.statuses: dict[str, list[dict[str, Any]]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.run_dirs: dict[str, Path] = {}
        self.changed = trio.Event()

    def post(self, status: JobStatus) -> None:
        self.statuses.setdefault(status.task_id, []).append(json.loads(status.to_json()))
        self.changed.set()
        self.changed = trio.Event()

    def post_progress(self, task_id: str, build: Callable[[], JobStatus]) -> None:
        self.post(build())

    def started(self, task_id: str, run_dir: Path) -> None:
        self.run_dirs[task_id] = run_dir

    def offer(self, stream: EventStream, raw: Mapping[str, Any]) -> None:
        # The stream is the job's own topic: `.../tasks/<task_id>/events`.
        self.events.setdefault(stream.topic.split("/")[-2], []).append(dict(raw))

    async def publish_record(self, status: JobStatus, record: RecordCollector) -> RecordSummary | None:
        encoded = record.build(status, RECORD_LIMIT)
        self.records[status.task_id] = decode_record(encoded.payload)
        return RecordSummary(bytes=len(encoded.payload), events=encoded.events, cut=encoded.cut)


class Runs:
    """Jobs run one by one (`run`) or side by side (`start`), and what they reported."""

    def __init__(self, runner: JobRunner, sinks: Sinks, nursery: trio.Nursery) -> None:
        self.runner = runner
        self.sinks = sinks
        self._nursery = nursery

    @property
    def metrics(self) -> WorkerMetrics:
        return self.runner.metrics

    async def submit(self, fields: dict[str, Any], *, within: float = 60) -> dict[str, Any]:
        """A task message as a worker takes it: refused before it is queued (the answer), or run to its end."""
        request = TaskRequest.model_validate(fields)
        refusal = self.runner.checks.admission_error(request)
        if refusal is None:
            return await self.run(fields, within=within)
        answer = early_status(
            request.task_id, State.FAILED, refusal, worker_id="runs", playbook=request.playbook, live_only=True
        )
        self.sinks.post(answer)
        return self.terminal(request.task_id)

    async def run(self, fields: dict[str, Any], *, within: float = 60) -> dict[str, Any]:
        """Run one job (a task message's fields) to its end, as a worker's slot does; its terminal status."""
        job = Job(TaskRequest.model_validate(fields), worker_id="runs")
        with trio.fail_after(within):
            await self.runner.execute(job)
        return self.terminal(job.task_id)

    def start(self, fields: dict[str, Any]) -> Job:
        """Start one job beside the test; `wait_terminal` for its end."""
        job = Job(TaskRequest.model_validate(fields), worker_id="runs")
        self._nursery.start_soon(self.runner.execute, job)
        return job

    def cancel(self, job: Job, *, reason: str | None = None) -> None:
        """What the worker does with a cancel request (with `reason`) for a running job."""
        job.cancel_reason = CancelRequest(reason=reason).describe()
        job.cancel_scope.cancel()

    async def wait_for(self, task_id: str, seen: Callable[[dict[str, Any]], bool], *, within: float = 60) -> None:
        """Until a status of `task_id` is `seen`."""
        with trio.fail_after(within):
            while not any(seen(status) for status in self.sinks.statuses.get(task_id, [])):
                await self.sinks.changed.wait()

    async def wait_terminal(self, job: Job, *, within: float = 60) -> dict[str, Any]:
        with trio.fail_after(within):
            await job.done.wait()
        return self.terminal(job.task_id)

    def terminal(self, task_id: str) -> dict[str, Any]:
        """The one terminal status of `task_id`."""
        [final] = [status for status in self.sinks.statuses.get(task_id, []) if status["state"] in TERMINAL]
        return final


@asynccontextmanager
async def open_runs(
    playbook_dir: Path,
    *,
    content: ContentSource | None = None,
    hidden_values: Collection[str] = (),
    **worker: Any,
) -> AsyncIterator[Runs]:
    """A runner for the playbooks in `playbook_dir`, with the tests' worker settings and `worker`.

    The source cache is prepared first, as the worker does, and a temporary one removed after.
    """
    settings = WorkerSettings.model_validate(worker_values(playbook_dir, "runs", **worker))
    sinks = Sinks()
    runner = job_runner(
        settings,
        sinks,
        topics=TOPICS,
        events=sinks,
        hidden_values=hidden_values,
        metrics=WorkerMetrics(),
        content=content,
        records=sinks,
    )
    runner.sources.prepare()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.warm_pool.serve)
            yield Runs(runner, sinks, nursery)
            nursery.cancel_scope.cancel()
    finally:
        runner.sources.discard_temporary()
