"""The catalogue a worker publishes: each template's description, survey (never a secret's default) and schedule."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from ansible_worker.protocol.group_messages import ScheduleView, TemplateCatalogue, TemplateView
from ansible_worker.templates.loading import Templates
from ansible_worker.templates.model import AtEntry, CronEntry
from ansible_worker.templates.schedules import ScheduledEntry, scheduled_entries

UPCOMING = 5
MISSED_KEPT = 10


@dataclass
class EntryHistory:
    """What this worker knows of one entry's past: its last run and the ticks nobody ran."""

    last_run: datetime | None = None
    last_task_id: str | None = None
    missed: list[datetime] = field(default_factory=list)

    def ran(self, tick: datetime, task_id: str) -> None:
        """The group ran `tick` as `task_id` (newer ticks only move it)."""
        if self.last_run is None or tick > self.last_run:
            self.last_run, self.last_task_id = tick, task_id

    def skipped(self, tick: datetime) -> None:
        """`tick` passed with no worker online: kept, the newest `MISSED_KEPT`."""
        self.missed = sorted({*self.missed, tick})[-MISSED_KEPT:]


def build_catalogue(
    templates: Templates,
    *,
    worker_id: str,
    now: datetime,
    templates_only: bool,
    history: Mapping[str, EntryHistory] | None = None,
) -> TemplateCatalogue:
    """The catalogue as of `now`; `history` by entry name (`template.key`)."""
    history = history or {}
    views: dict[str, TemplateView] = {}
    entries: dict[str, list[ScheduledEntry]] = {}
    for scheduled in scheduled_entries(templates):
        entries.setdefault(scheduled.template, []).append(scheduled)
    for name, template in templates.by_name.items():
        schedule = []
        for scheduled in entries.get(name, []):
            entry, past = scheduled.entry, history.get(scheduled.name, EntryHistory())
            schedule.append(
                ScheduleView(
                    entry=scheduled.name,
                    cron=entry.cron if isinstance(entry, CronEntry) else None,
                    timezone=entry.timezone if isinstance(entry, CronEntry) else None,
                    at=entry.at if isinstance(entry, AtEntry) else None,
                    next_runs=scheduled.upcoming(now, UPCOMING),
                    last_run=past.last_run,
                    last_task_id=past.last_task_id,
                    missed=list(past.missed),
                )
            )
        views[name] = TemplateView(
            description=template.description,
            playbook=template.playbook,
            survey={variable: rule.public() for variable, rule in template.survey.items()},
            schedule=schedule,
        )
    return TemplateCatalogue(worker_id=worker_id, published_at=now, templates_only=templates_only, templates=views)
