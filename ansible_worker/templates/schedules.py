"""The ticks of a template's schedule entries, and the task id each tick runs as. Pure: the time is given."""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice

from cronsim import CronSim

from ansible_worker.templates.loading import Templates
from ansible_worker.templates.model import AtEntry, CronEntry, ScheduleEntry


@dataclass(frozen=True)
class ScheduledEntry:
    """One entry of one template's schedule."""

    template: str
    index: int
    entry: ScheduleEntry

    @property
    def name(self) -> str:
        """`template.key`: the entry by its template and what it says (its place in the list may change)."""
        return f"{self.template}.{self.entry.key}"

    def ticks_after(self, moment: datetime) -> Iterator[datetime]:
        """The entry's ticks strictly after `moment`, in order, in UTC."""
        entry = self.entry
        if isinstance(entry, AtEntry):
            if entry.at > moment:
                yield entry.at.astimezone(UTC)
            return
        # Read in the entry's zone: cronsim then follows cron across daylight-saving changes
        # (a 02:30 job runs once at 03:00 when the clock skips that hour, and once when it repeats).
        zone = zoneinfo.ZoneInfo(entry.timezone)
        for tick in CronSim(entry.cron, moment.astimezone(zone)):
            yield tick.astimezone(UTC)

    def next_tick(self, moment: datetime) -> datetime | None:
        """The first tick after `moment`, or None when there is none (an `at` in the past)."""
        return next(self.ticks_after(moment), None)

    def upcoming(self, moment: datetime, count: int) -> list[datetime]:
        """The next `count` ticks after `moment` (fewer for an `at`)."""
        return list(islice(self.ticks_after(moment), count))

    def ticks_before(
        self, end: datetime, *, since: datetime, limit: int, including_end: bool = False
    ) -> list[datetime]:
        """The newest ticks after `since` and before `end` (or at it: `including_end`), `limit` at most.

        Oldest first; counted back from `end`, so that when more passed than `limit`, the newest are kept.
        """
        entry = self.entry
        if isinstance(entry, AtEntry):
            at = entry.at.astimezone(UTC)
            return [at] if since < at and (at < end or (including_end and at == end)) else []
        zone = zoneinfo.ZoneInfo(entry.timezone)
        found: list[datetime] = []
        for moment in CronSim(entry.cron, end.astimezone(zone), reverse=True):
            tick = moment.astimezone(UTC)
            if tick > end or (tick == end and not including_end):
                continue
            if tick <= since or len(found) >= limit:
                break
            found.append(tick)
        return found[::-1]

    def task_id(self, tick: datetime) -> str:
        """The same on every worker with the same file: what the group's claims are taken on."""
        return f"{self.name}.{tick.astimezone(UTC):%Y%m%dT%H%M%SZ}"

    def describe(self) -> str:
        """The entry as a person reads it in a log line."""
        entry = self.entry
        if isinstance(entry, CronEntry):
            when = f"cron {entry.cron!r} ({entry.timezone})"
        else:
            when = f"at {entry.at.isoformat()}"
        return f"template {self.template} schedule entry {self.index} ({when})"


def scheduled_entries(templates: Templates) -> list[ScheduledEntry]:
    """Every schedule entry of every template."""
    return [
        ScheduledEntry(name, index, entry)
        for name, template in templates.by_name.items()
        for index, entry in enumerate(template.schedule)
    ]
