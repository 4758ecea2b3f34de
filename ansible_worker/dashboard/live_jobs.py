"""The live output lines and pages of the jobs the dashboard hears, kept within their bounds of jobs and bytes."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ansible_worker.dashboard.job_view import JobView
from ansible_worker.dashboard.limits import LIVE_DETAIL_BYTES, LIVE_VIEWS_BYTES, OUTPUT_BYTES, OUTPUT_JOBS, OUTPUT_LINES
from ansible_worker.dashboard.pages import Page, from_live


def _line_size(entry: dict[str, Any]) -> int:
    # What an output line costs, roughly: its text (twice, with colours) and a little for the rest.
    return len(entry["text"]) * (2 if "parts" in entry else 1) + 64


@dataclass
class LiveJobs:
    """Each job's last output lines and its page from live events; the oldest go first past the bounds of `limits`."""

    # Output lines, the dict's order that of the last output (oldest first).
    output: dict[str, deque[dict[str, Any]]] = field(default_factory=dict)
    # Live pages, the dict's order that of the last event (oldest first), and their costs.
    views: dict[str, JobView] = field(default_factory=dict)
    _output_bytes: dict[str, int] = field(default_factory=dict)
    _view_costs: dict[str, int] = field(default_factory=dict)
    _views_bytes: int = 0

    def add_line(self, task_id: str, entry: dict[str, Any]) -> None:
        """Keep an output line of `task_id`, within `OUTPUT_LINES` and `OUTPUT_BYTES` a job and `OUTPUT_JOBS` jobs."""
        lines = self.output.pop(task_id, None)
        if lines is None:
            lines = deque()
        # Reinserted: the dict's order is the order of last output, oldest first.
        self.output[task_id] = lines
        lines.append(entry)
        size = self._output_bytes.pop(task_id, 0) + _line_size(entry)
        while len(lines) > OUTPUT_LINES or (size > OUTPUT_BYTES and len(lines) > 1):
            size -= _line_size(lines.popleft())
        self._output_bytes[task_id] = size
        while len(self.output) > OUTPUT_JOBS:
            oldest = next(iter(self.output))
            del self.output[oldest]
            del self._output_bytes[oldest]

    def add_to_view(self, task_id: str, event: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """Add an event to the live page of `task_id`: the page's change for the browsers, and the host it names."""
        view = self.views.pop(task_id, None)
        if view is None:
            view = JobView(detail_bytes=LIVE_DETAIL_BYTES)
        # Reinserted: the dict's order is the order of the last event, oldest first.
        self.views[task_id] = view
        change = view.add(event)
        host = view.hosts[change.host].name if change.host is not None else None
        cost = view.cost
        self._views_bytes += cost - self._view_costs.get(task_id, 0)
        self._view_costs[task_id] = cost
        # By count too: the events of made-up jobs make pages of next to no cost.
        while (self._views_bytes > LIVE_VIEWS_BYTES or len(self.views) > OUTPUT_JOBS) and len(self.views) > 1:
            self._drop_view(next(iter(self.views)))
        return view.delta(change), host

    def page(self, task_id: str) -> Page:
        """The page of a job from the live events heard of it (empty when none were)."""
        return from_live(self.views.get(task_id), self.output.get(task_id, ()))

    def drop(self, task_id: str) -> None:
        """Forget the lines and the page of `task_id`."""
        self.output.pop(task_id, None)
        self._output_bytes.pop(task_id, None)
        self._drop_view(task_id)

    def _drop_view(self, task_id: str) -> None:
        if self.views.pop(task_id, None) is not None:
            self._views_bytes -= self._view_costs.pop(task_id)
