"""Fire each schedule tick on every worker that sees it; the group's claims let one of them run it.

Every worker with templates keeps one task per schedule entry. At a tick each of them puts the
same launch (its task_id derived from the template, the entry and the tick time) into its own
inbox, as if it had come from the tasks topic: the router and the claims then do what they do
for any copy of a job, and one worker of the group runs it. No worker is designated, and
workers may join and leave. A tick that passed while no worker was online is never run late.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import trio

from ansible_worker.mqtt.options import InboundMessage
from ansible_worker.protocol.topics import Topics
from ansible_worker.templates.catalogue import EntryHistory
from ansible_worker.templates.schedules import ScheduledEntry

log = logging.getLogger(__name__)

# A tick is fired only this close to its time: a worker that wakes later (a suspended
# process, a clock stepped forward) reports it missed rather than running it late.
LATE_LIMIT_SECONDS = 60.0


class Clock(Protocol):
    """The wall clock a scheduler reads and sleeps by; tests give one they move themselves."""

    def now(self) -> datetime:
        """The time now, timezone-aware."""

    async def sleep_until(self, moment: datetime) -> None:
        """Return at or after `moment`."""


class WallClock:
    """The system's clock, slept on with Trio's."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, moment: datetime) -> None:
        # Wall time and Trio's clock drift apart (NTP, suspend): sleep in bounded steps and look again.
        while (left := (moment - self.now()).total_seconds()) > 0:  # noqa: ASYNC110 (no event marks wall time)
            await trio.sleep(min(left, 60.0))


class Scheduler:
    """The schedule entries of this worker's templates, each fired at its ticks."""

    def __init__(
        self,
        entries: list[ScheduledEntry],
        topics: Topics,
        inbox: trio.MemorySendChannel[InboundMessage],
        *,
        clock: Clock,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.entries = entries
        self.topics = topics
        self.inbox = inbox
        self.clock = clock
        self.on_change = on_change
        self.history: dict[str, EntryHistory] = {entry.name: EntryHistory() for entry in entries}

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One task per entry, until cancelled; started once each knows its first tick."""
        async with trio.open_nursery() as nursery:
            for entry in self.entries:
                await nursery.start(self._serve_entry, entry, self.clock.now())
            task_status.started()

    async def _serve_entry(self, entry: ScheduledEntry, start: datetime, *, task_status: trio.TaskStatus[None]) -> None:
        after = start
        task_status.started()
        while (tick := entry.next_tick(after)) is not None:
            await self.clock.sleep_until(tick)
            now = self.clock.now()
            # Every tick up to now: only the newest may still run, the rest passed unseen.
            passed = [tick, *entry.ticks_between(tick, now, limit=1000)]
            for missed in passed[:-1]:
                self._missed(entry, missed)
            due = passed[-1]
            if (now - due).total_seconds() > LATE_LIMIT_SECONDS:
                self._missed(entry, due)
            else:
                self._fire(entry, due)
            after = due

    def _fire(self, entry: ScheduledEntry, tick: datetime) -> None:
        task_id = entry.task_id(tick)
        launch = {"task_id": task_id, "template": entry.template, "extra_vars": entry.entry.extra_vars}
        message = InboundMessage(self.topics.tasks, json.dumps(launch).encode(), qos=2, retain=False)
        try:
            self.inbox.send_nowait(message)
        except trio.WouldBlock:
            # The inbox is full of the broker's messages: this worker sits the tick out; another may run it.
            log.warning("%s: tick %s left to the group (this worker's inbox is full)", entry.describe(), task_id)
            return
        log.info("%s: tick %s fired as task %s", entry.describe(), tick.isoformat(), task_id)
        self.history[entry.name].ran(tick, task_id)
        self.on_change()

    def _missed(self, entry: ScheduledEntry, tick: datetime) -> None:
        log.warning(
            "%s: tick %s missed: this worker was not running to fire it; skipped, not run late",
            entry.describe(),
            tick.isoformat(),
        )
        self.history[entry.name].skipped(tick)
        self.on_change()
