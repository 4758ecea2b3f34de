"""One accepted job and everything known about it so far: request, state, progress, and its status now."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import trio

from ansible_worker.protocol.json_objects import json_object
from ansible_worker.protocol.models import Attempt, JobStatus, RecordSummary, State, TaskRequest
from ansible_worker.protocol.timestamps import utc_now
from ansible_worker.run.events.event_stream import EventStream
from ansible_worker.run.events.progress import Progress
from ansible_worker.run.events.record_collector import RecordCollector
from ansible_worker.run.masking import Masker
from ansible_worker.run.sources.job_sources import RunTree


@dataclass(eq=False)
class Job:
    """One accepted job and everything known about it so far."""

    request: TaskRequest
    worker_id: str
    # The message as it arrived, to hand it back to the group unchanged.
    payload: bytes = b""
    created_at: datetime = field(default_factory=utc_now)
    state: State = State.QUEUED
    started_at: datetime | None = None
    completed_at: datetime | None = None
    return_code: int | None = None
    error_message: str | None = None
    progress: Progress = field(default_factory=Progress)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    # The terminal error_message if the job is cancelled, and who asked, if known.
    cancel_reason: str | None = None
    # `failed` when the worker itself ends a job it cannot report (its status would not serialize).
    cancel_state: State = State.CANCELLED
    cancelled_by: str | None = None
    events: EventStream | None = None
    # The job's secrets (its credentials', the worker's environment's), masked in what it reports.
    masker: Masker = field(default_factory=lambda: Masker(()))
    handed_back: bool = False
    # Taken over by another worker while this one was away: nothing is published for it here.
    fenced: bool = False
    # The lost worker this job was taken over from, never started there.
    taken_over_from: str | None = None
    # The tree it runs from, once known: what its status reports as having run.
    tree: RunTree | None = None
    done: trio.Event = field(default_factory=trio.Event)
    # Every event and the output, for the record published when the job ends.
    record: RecordCollector | None = None
    record_summary: RecordSummary | None = None
    # With `retry`: each run of Ansible that has ended.
    attempts: list[Attempt] = field(default_factory=list)
    # Why it does not run Ansible yet (its queue position, its locks, ...); None once it does.
    waiting_for: dict[str, Any] | None = None
    # Set when the job leaves this worker without ending here (handed back, or taken over by another worker).
    left: trio.Event = field(default_factory=trio.Event)
    # A slot took it: it is this worker's to start (its locks may still keep it queued).
    in_slot: bool = False
    # Its `git pull` is done (before its hosts were resolved for its locks).
    pulled: bool = False

    @property
    def task_id(self) -> str:
        """The request's `task_id`."""
        return self.request.task_id

    @property
    def settled(self) -> bool:
        """Nothing more for this worker to do: ended, given back to the group, or taken over by another worker."""
        return self.state.terminal or self.handed_back or self.fenced

    def hand_back(self) -> None:
        """The job goes back to the group: no slot may start it, and whatever waits for it stops."""
        self.handed_back = True
        self.left.set()

    def fence(self) -> None:
        """Another worker took the job over: nothing more is published for it here, and whatever waits for it stops."""
        self.fenced = True
        self.left.set()

    async def wait_left(self) -> None:
        """Until the job has ended or gone back to the group."""
        async with trio.open_nursery() as nursery:
            for event in (self.done, self.left):

                async def wait(event: trio.Event = event) -> None:
                    await event.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(wait)

    def request_document(self) -> dict[str, Any]:
        """The task message as it arrived (a signed one verifies as it was); the request's fields without it."""
        document = json_object(self.payload)
        if document is not None:
            return document
        return self.request.model_dump(mode="json", exclude_defaults=True)

    def status(self, *, progress_only: bool = False) -> JobStatus:
        """The status now; with `progress_only`, a `running` status with the counts so far.

        A progress status may be built after the job has ended (the outbox builds them
        late), so it never takes the state, end or error from a later moment.
        """
        progress = self.progress
        state, completed_at, error = self.state, self.completed_at, self.error_message
        if progress_only:
            state, completed_at, error = State.RUNNING, None, None
        end = completed_at or utc_now()
        duration = (end - self.started_at).total_seconds() if self.started_at else None
        return JobStatus(
            task_id=self.task_id,
            state=state,
            created_at=self.created_at,
            started_at=self.started_at,
            completed_at=completed_at,
            duration_seconds=round(duration, 3) if duration is not None else None,
            tasks_total=progress.total,
            tasks_ok=progress.ok,
            tasks_changed=progress.changed,
            tasks_failed=progress.failed,
            tasks_skipped=progress.skipped,
            tasks_unreachable=progress.unreachable,
            return_code=None if progress_only else self.return_code,
            error_message=error,
            output=progress.output,
            worker_id=self.worker_id,
            playbook=self.request.playbook,
            module=self.request.module,
            template=self.request.template,
            current_play=progress.current_play,
            current_task=progress.current_task if not state.terminal else None,
            tasks_rescued=progress.rescued,
            tasks_ignored=progress.ignored,
            output_per_host=progress.output_per_host,
            cancelled_by=self.cancelled_by,
            last_event_seq=self.events.last_seq if self.events else 0,
            events_dropped=self.events.dropped if self.events else 0,
            project=self.tree.project if self.tree else self.request.project,
            revision=self.tree.revision if self.tree else None,
            content_sha256=self.request.content.sha256 if self.request.content else None,
            record=None if progress_only else self.record_summary,
            attempts=list(self.attempts),
            waiting_for=None if state.terminal else self.waiting_for,
            taken_over_from=self.taken_over_from,
        )

    def finish(self, state: State, error_message: str | None = None) -> None:
        """End the job in `state` with `error_message`: stamp `completed_at` and set `done`."""
        self.end(state, error_message)
        self.done.set()

    def end(self, state: State, error_message: str | None = None) -> None:
        """Put the job in its terminal `state` and stamp `completed_at`, without setting `done` yet."""
        self.state = state
        self.error_message = error_message
        self.completed_at = utc_now()
