"""A job's page data: its view (hosts, tasks, results) and Ansible's output, from its record or its live events."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ansible_worker.dashboard.job_view import JobView
from ansible_worker.dashboard.limits import RECORD_DETAIL_BYTES, RECORD_LINES, RECORD_OUTPUT_CHARS
from ansible_worker.dashboard.output_lines import record_lines, task_anchors


@dataclass
class Page:
    """What the page of one job shows; `source` says where it came from ("record" or "live")."""

    source: str
    view: JobView
    lines: list[dict[str, Any]]
    lines_cut: bool = False
    record_cut: bool = False
    events_total: int | None = None

    def data(self) -> dict[str, Any]:
        """The page as compact JSON data."""
        return {
            "source": self.source,
            **self.view.page(),
            "lines": self.lines,
            "lines_cut": self.lines_cut,
            "record_cut": self.record_cut,
            "events_total": self.events_total,
        }


class RecordReader:
    """Builds a finished job's page from its record (as `protocol.records.decode_record` read it), in steps.

    A record holds up to tens of thousands of events: each of `steps` takes some of them, so
    that a caller can let others run in between. Its tasks link to their headers in Ansible's
    own output instead of to live lines.
    """

    def __init__(self, record: Mapping[str, Any]) -> None:
        self._record = record
        events = record.get("events")
        self._events = events if isinstance(events, list) else []
        self._position = 0
        self.view = JobView(detail_bytes=RECORD_DETAIL_BYTES)

    def steps(self, count: int) -> Iterator[None]:
        """Take the events `count` at a time, yielding after each step but the last."""
        for start in range(0, len(self._events), count):
            if start:
                yield
            for event in self._events[start : start + count]:
                if isinstance(event, Mapping):
                    self.view.add(event)

    def page(self) -> Page:
        """The page, once `steps` has taken every event."""
        output = self._record.get("output")
        lines, lines_cut = record_lines(
            output if isinstance(output, str) else "", max_lines=RECORD_LINES, max_chars=RECORD_OUTPUT_CHARS
        )
        view = self.view
        # Only a task whose start was heard has a header in the output; the others link nowhere.
        started = [task for task in view.tasks if task.anchor is not None]
        names = [task.name for task in started]
        anchors = dict(zip((task.index for task in started), task_anchors(lines, names), strict=True))
        for task in view.tasks:
            task.anchor = anchors.get(task.index)
        total = self._record.get("events_total")
        return Page(
            source="record",
            view=view,
            lines=lines,
            lines_cut=lines_cut,
            record_cut=bool(self._record.get("cut")),
            events_total=total if isinstance(total, int) and not isinstance(total, bool) else None,
        )


def from_record(record: Mapping[str, Any]) -> Page:
    """The page of a finished job from its record, in one go (see `RecordReader`)."""
    reader = RecordReader(record)
    for _ in reader.steps(10_000):
        pass
    return reader.page()


def from_live(view: JobView | None, lines: Iterable[dict[str, Any]]) -> Page:
    """The page of a job from the live events heard of it (its tasks link to their live lines by `seq`)."""
    return Page(source="live", view=view if view is not None else JobView(detail_bytes=0), lines=list(lines))
