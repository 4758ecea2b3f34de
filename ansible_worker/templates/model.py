"""The templates file: `templates:`, a mapping from each template's name to its playbook, survey and schedule."""

from __future__ import annotations

import hashlib
import json
import zoneinfo
from datetime import UTC, datetime
from typing import Annotated, Any

from cronsim import CronSim, CronSimError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from ansible_worker.protocol.models import MAX_TIMEOUT_SECONDS
from ansible_worker.protocol.request_fields import MAX_LOCKS, Limit, LockName, ProjectName, Retry, Revision, TagList
from ansible_worker.protocol.survey import Survey, SurveyError, check_answers

TEMPLATE_NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"
TemplateName = Annotated[str, StringConstraints(pattern=TEMPLATE_NAME_PATTERN)]
CredentialName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
# A long-ago `at` or a cron entry that only matches on 30 February is a mistake, not a plan.
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _check_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"not a time zone of the IANA database: {value!r}") from None
    return value


TimeZoneName = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_check_timezone)]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Survey answers for this entry's runs, checked like a launcher's.
    extra_vars: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        """Eight hex digits that name the entry by what it says, not by its place in the list."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:8]


class CronEntry(_Entry):
    """Runs at each time a cron expression matches, read in `timezone`."""

    cron: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    timezone: TimeZoneName = "UTC"

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        # cronsim also reads a leading seconds field; a schedule keeps cron's five.
        if len(value.split()) != 5:
            raise ValueError("must have five fields: minute hour day-of-month month day-of-week")
        try:
            next(CronSim(value, _EPOCH))
        except CronSimError as exc:
            raise ValueError(f"not a cron expression: {exc}") from None
        except StopIteration:
            raise ValueError("the cron expression never matches") from None
        return value


class AtEntry(_Entry):
    """Runs once, at `at` (with its UTC offset: `2026-12-24T20:00:00Z`)."""

    at: datetime

    @field_validator("at", mode="before")
    @classmethod
    def _aware(cls, value: object) -> object:
        # YAML reads an unquoted time as a datetime already, and a naive one as UTC: require the zone.
        if isinstance(value, str):
            value = datetime.fromisoformat(value.replace("Z", "+00:00")) if value else value
        if isinstance(value, datetime) and value.tzinfo is None:
            raise ValueError("must carry its UTC offset or Z, e.g. 2026-12-24T20:00:00Z")
        return value


ScheduleEntry = CronEntry | AtEntry


class Template(BaseModel):
    """One template: a job's fields, fixed `extra_vars`, the `survey` a launcher answers, and a `schedule`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: Annotated[str, StringConstraints(max_length=4096)] | None = None
    playbook: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    # Without one, the job runs on this host alone (`localhost,`, an inline inventory).
    inventory: Annotated[str, StringConstraints(min_length=1, max_length=65536)] = "localhost,"
    limit: Limit | None = None
    tags: TagList = Field(default_factory=list)
    skip_tags: TagList = Field(default_factory=list)
    credentials: Annotated[list[CredentialName], Field(max_length=16)] = Field(default_factory=list)
    forks: int = Field(5, ge=1, le=1000)
    timeout: float | None = Field(None, gt=0, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False)
    verbosity: int = Field(0, ge=0, le=4)
    project: ProjectName | None = None
    revision: Revision | None = None
    # The group-wide locks its jobs hold (default: the hosts of its inventory and limit), at
    # most this many of its jobs at once in the group, and its hosts' retries.
    locks: Annotated[list[LockName], Field(max_length=MAX_LOCKS)] | None = None
    max_concurrent: int | None = Field(None, ge=1, le=10_000)
    retry: Retry | None = None
    extra_vars: dict[str, Any] = Field(default_factory=dict)
    survey: Survey = Field(default_factory=dict)
    schedule: Annotated[list[ScheduleEntry], Field(max_length=100)] = Field(default_factory=list)

    @field_validator("schedule", mode="before")
    @classmethod
    def _pick_entry(cls, value: object) -> object:
        # Say which keys make an entry rather than two unions' worth of errors.
        if isinstance(value, list):
            for index, entry in enumerate(value):
                if isinstance(entry, dict) and ("cron" in entry) == ("at" in entry):
                    raise ValueError(f"entry {index}: needs either `cron` or `at` (one of them)")
        return value

    @model_validator(mode="after")
    def _check_answers(self) -> Template:
        both = sorted(set(self.survey) & set(self.extra_vars))
        if both:
            raise ValueError(f"{', '.join(both)}: both a fixed extra_var and a survey variable")
        for index, entry in enumerate(self.schedule):
            try:
                check_answers(self.survey, entry.extra_vars, template="this")
            except SurveyError as exc:
                raise ValueError(f"schedule entry {index}: extra_vars.{exc}") from None
        return self


class TemplatesFile(BaseModel):
    """The whole file: its top level is `templates:`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    templates: dict[TemplateName, Template]
