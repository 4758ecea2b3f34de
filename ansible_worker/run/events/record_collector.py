"""Collect one job's events and output as it runs, and build its record when it ends."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from ansible_worker.protocol.live_events import live_event
from ansible_worker.protocol.models import JobStatus
from ansible_worker.protocol.records import EncodedRecord, encode_record, record_document
from ansible_worker.run.process.output_tail import OutputTail

# Events kept in memory per job (about 1 KB each at most): a record compressed to its
# default limit holds fewer, so the oldest beyond this could hardly be published anyway.
MAX_EVENTS = 20_000


class RecordCollector:
    """Every callback event of one job, numbered from 1 without gaps, whatever the live rate limit did."""

    def __init__(self, *, max_events: int = MAX_EVENTS) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self.total = 0
        self.output: OutputTail | None = None
        # The task message as the worker accepted it, for `relaunch`.
        self.request: dict[str, Any] | None = None

    def add(self, raw: Mapping[str, Any]) -> None:
        """Number and keep one callback event."""
        self.total += 1
        event = live_event(raw, self.total)
        if isinstance(raw.get("counter"), int):
            event["counter"] = raw["counter"]
        if raw.get("action") is not None:
            event["action"] = raw["action"]
        if isinstance(raw.get("hosts"), Mapping):
            # The recap's numbers, for the tools that read them (ansible-runner's stats).
            event["hosts"] = raw["hosts"]
        self.events.append(event)

    def build(self, status: JobStatus, limit: int) -> EncodedRecord:
        """The record of the job that ended with `status`, compressed and cut to `limit` bytes."""
        output = self.output.text() if self.output is not None else ""
        document = record_document(
            status.model_dump(mode="json"),
            list(self.events),
            output,
            output_bytes=self.output.total_bytes if self.output is not None else 0,
            events_total=self.total,
            request=self.request,
        )
        return encode_record(document, limit)
