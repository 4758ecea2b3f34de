"""Fire each schedule tick on every worker that sees it; the group's claims let one of them run it.

Every worker with templates keeps one task per schedule entry. At a tick each of them routes
the same launch (its task_id derived from the template, the entry and the tick time) as if it
had come from the tasks topic: the router and the claims then do what they do for any copy of
a job, and one worker of the group runs it. No worker is designated, and
workers may join and leave. A tick that passed while no worker was online is never run late.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

import trio

from ansible_worker.protocol.group_messages import TemplateCatalogue
from ansible_worker.templates.catalogue import EntryHistory
from ansible_worker.templates.schedules import ScheduledEntry

log = logging.getLogger(__name__)

# A tick is fired only this close to its time: a worker that wakes later (a suspended
# process, a clock stepped forward) reports it missed rather than running it late.
LATE_LIMIT_SECONDS = 60.0
# How far back a starting worker looks for missed ticks, and how many it counts at most: each
# is a step of cron arithmetic on the event loop, and the catalogue that says when the group
# last spoke comes from the broker.
MISSED_LOOKBACK = timedelta(days=7)
MISSED_COUNTED = 1_000


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
    """The schedule entries of this worker's templates, each fired at its ticks.

    `read_catalogue` gives the catalogue the broker holds (None: there is none): the group's
    history of each entry, from which this worker starts its own, and the moment the group
    last said anything. The ticks between that moment and this worker's start passed with no
    worker online to fire them (each fired tick republishes the catalogue): they are logged
    `missed` and listed in the catalogue, never run.
    """

    def __init__(
        self,
        entries: list[ScheduledEntry],
        launch: Callable[[bytes], None],
        *,
        clock: Clock,
        read_catalogue: Callable[[], Awaitable[TemplateCatalogue | None]] | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.entries = entries
        self.launch = launch
        self.clock = clock
        self.read_catalogue = read_catalogue
        self.on_change = on_change
        self.history: dict[str, EntryHistory] = {entry.name: EntryHistory() for entry in entries}
        # Set once every entry waits for its first tick.
        self.ready = trio.Event()

    async def serve(self) -> None:
        """Learn the group's history, then fire each entry's ticks until cancelled."""
        start = self.clock.now()
        if self.read_catalogue is not None:
            try:
                seen = await self.read_catalogue()
            except trio.TooSlowError:
                log.warning("the broker did not send the template catalogue in time: no missed ticks are reported")
                seen = None
            if seen is not None:
                self._learn(seen, start)
        self.on_change()
        async with trio.open_nursery() as nursery:
            for entry in self.entries:
                await nursery.start(self._serve_entry, entry, start)
            self.ready.set()

    def _learn(self, catalogue: TemplateCatalogue, start: datetime) -> None:
        """Take the group's history of each entry, and report the ticks nobody was online for."""
        for view in catalogue.templates.values():
            for shown in view.schedule:
                history = self.history.get(shown.entry)
                if history is None:
                    continue
                if shown.last_run is not None:
                    history.ran(shown.last_run, shown.last_task_id or "")
                for tick in shown.missed:
                    history.skipped(tick)
        for entry in self.entries:
            since = max(catalogue.published_at, start - MISSED_LOOKBACK)
            passed = entry.ticks_before(start, since=since, limit=MISSED_COUNTED)
            if passed:
                self._missed(entry, passed, why="no worker of the group was online")

    async def _serve_entry(self, entry: ScheduledEntry, start: datetime, *, task_status: trio.TaskStatus[None]) -> None:
        after = start
        task_status.started()
        while (tick := entry.next_tick(after)) is not None:
            await self.clock.sleep_until(tick)
            now = self.clock.now()
            # Every tick up to now: only the newest may still run, the rest passed unseen.
            later = entry.ticks_before(
                now, since=max(tick, now - MISSED_LOOKBACK), limit=MISSED_COUNTED, including_end=True
            )
            passed = [tick, *later]
            due = passed[-1]
            late = (now - due).total_seconds() > LATE_LIMIT_SECONDS
            skipped = passed if late else passed[:-1]
            if skipped:
                self._missed(
                    entry, skipped, why="this worker woke too late to fire them (suspended, or its clock jumped)"
                )
            if not late:
                self._fire(entry, due)
            after = due

    def _fire(self, entry: ScheduledEntry, tick: datetime) -> None:
        launch = entry.launch(tick)
        task_id = launch["task_id"]
        log.info("%s: tick %s fired as task %s", entry.describe(), tick.isoformat(), task_id)
        # Routed as a message would be: the group's claims decide which worker runs it.
        self.launch(json.dumps(launch).encode())
        self.history[entry.name].ran(tick, task_id)
        self.on_change()

    def _missed(self, entry: ScheduledEntry, ticks: list[datetime], *, why: str) -> None:
        if len(ticks) == 1:
            what = f"tick {ticks[0].isoformat()}"
        else:
            count = f"{len(ticks)} or more" if len(ticks) >= MISSED_COUNTED else str(len(ticks))
            what = f"{count} ticks, {ticks[0].isoformat()} to {ticks[-1].isoformat()}"
        log.warning("%s: missed %s: %s; skipped, not run late", entry.describe(), what, why)
        for tick in ticks:
            self.history[entry.name].skipped(tick)
        self.on_change()
