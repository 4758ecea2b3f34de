"""Tell a schedule's tick from a forgery: a tick's task_id must carry the launch this worker's schedule makes. Pure.

A tick carries no signature: every worker makes it from its own templates file, which it
trusts as it trusts its playbooks. When a tick's launch comes back from the network (a
hand-back, a lost worker's request copy), a worker that requires signed jobs takes it only
if it can make that very launch itself: the task_id parses back to one of its entries and a
moment that is one of that entry's ticks, and the launch is, as JSON, exactly the one the
scheduler fires then. Nothing else with a tick's task_id can be sent without a signature:
not other answers, not a moment that is no tick.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from cronsim import CronSimError

from ansible_worker.templates.schedules import ScheduledEntry

# How a tick's moment ends its task_id (`ScheduledEntry.task_id`).
STAMP = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class TickCheck:
    """The schedule entries of this worker, by name, and how old a tick taken over may have been.

    With `max_age` (a takeover of a lost worker's copy), a tick must have been at most that
    many seconds old at `accepted_at`, when the group first took it, and not more than
    `max_skew` before its time, as a signed job's signature must have been fresh then.
    """

    entries: Mapping[str, ScheduledEntry] = field(default_factory=dict)
    accepted_at: datetime | None = None
    max_age: float | None = None
    max_skew: float = 0.0

    @classmethod
    def of(cls, entries: list[ScheduledEntry]) -> TickCheck:
        """The check of these entries' ticks."""
        return cls({entry.name: entry for entry in entries})

    def taken_over(self, accepted_at: datetime | None, *, max_age: float, max_skew: float) -> TickCheck:
        """The same check for a copy the group first accepted at `accepted_at` (None: its claim does not say)."""
        return replace(self, accepted_at=accepted_at, max_age=max_age, max_skew=max_skew)

    @cached_property
    def prefixes(self) -> tuple[str, ...]:
        """The task_id prefixes of this worker's entries (`template.key.`)."""
        return tuple(f"{name}." for name in self.entries)

    def is_tick_id(self, task_id: str) -> bool:
        """Whether `task_id` starts as one of this worker's ticks do: only a tick may use it."""
        return task_id.startswith(self.prefixes)

    def refusal(self, document: Mapping[str, Any]) -> str | None:
        """Why `document`, whose task_id is a tick's, may not run unsigned; None when it is the tick itself."""
        judged = self.tick_of(document)
        if isinstance(judged, str):
            return f"not a tick this worker's schedule makes: {judged}"
        if self.max_age is None:
            return None
        if self.accepted_at is None:
            return "its claim does not say when the group accepted it"
        age = (self.accepted_at - judged).total_seconds()
        if age > self.max_age:
            return (
                f"tick {judged.isoformat()} was {age:.0f}s old when the group took it, more than"
                f" security.max_task_age ({self.max_age:g}s)"
            )
        if -age > self.max_skew:
            return (
                f"tick {judged.isoformat()} was taken {-age:.0f}s before its time, more than"
                f" security.max_clock_skew ({self.max_skew:g}s)"
            )
        return None

    def tick_of(self, document: Mapping[str, Any]) -> datetime | str:
        """The moment of the tick `document` is the launch of, or why it is none."""
        task_id = document.get("task_id")
        if not isinstance(task_id, str):
            return "no task_id"
        # Template names may hold dots; an entry's key and the stamp hold none.
        name, _, stamp = task_id.rpartition(".")
        entry = self.entries.get(name)
        if entry is None:
            return f"{task_id} names no schedule entry of this worker"
        try:
            moment = datetime.strptime(stamp, STAMP).replace(tzinfo=UTC)
        except ValueError:
            return f"{stamp!r} is not a moment ({STAMP})"
        try:
            # An `at` may fall within a second: its task_id keeps the whole seconds.
            tick = entry.next_tick(moment - timedelta(seconds=1))
        except (ValueError, OverflowError, CronSimError):
            tick = None
        if tick is None or entry.task_id(tick) != task_id:
            return f"{moment.isoformat()} is not a tick of {entry.describe()}"
        made = _as_json(entry.launch(tick))
        if made is None or _as_json(document) != made:
            return f"its launch is not the one {entry.describe()} fires at {tick.isoformat()}"
        return tick


def _as_json(document: Mapping[str, Any]) -> str | None:
    """`document` written as JSON with sorted keys: `1`, `1.0` and `true` differ, key order does not."""
    try:
        return json.dumps(document, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        return None
