"""Where a run's statuses, live events and record go: the worker's status path and publishers, or a test's fakes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ansible_worker.protocol.models import JobStatus, RecordSummary
from ansible_worker.run.events.event_stream import EventStream
from ansible_worker.run.events.record_collector import RecordCollector


class StatusSink(Protocol):
    """Where a job's statuses go (the worker's one status path)."""

    def post(self, status: JobStatus) -> None:
        """A change of state, or the terminal status; never blocks."""

    def post_progress(self, task_id: str, build: Callable[[], JobStatus]) -> None:
        """A `running` update, built when it is about to be published; never blocks."""

    def started(self, task_id: str, run_dir: Path) -> None:
        """The job's private run directory exists: its processes will carry its name."""


class EventSink(Protocol):
    """Where a job's live events go; `offer` never blocks (an event may be dropped)."""

    def offer(self, stream: EventStream, raw: Mapping[str, Any]) -> None:
        """Send one callback event on `stream`, or count it dropped."""


class RecordSink(Protocol):
    """Where a finished job's record goes, before its terminal status."""

    async def publish_record(self, status: JobStatus, record: RecordCollector) -> RecordSummary | None:
        """Publish the record of the job that ended with `status`; what was published, or None.

        Cancellation: the record may or may not have reached the broker.
        """
