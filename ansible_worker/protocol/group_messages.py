"""The messages workers publish for the group: presence, claims, locks and the template catalogue."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ansible_worker.protocol.request_fields import SHA256_PATTERN
from ansible_worker.protocol.survey import SurveyRule
from ansible_worker.protocol.topics import TASK_ID


class Presence(BaseModel):
    """A worker's retained message on `<prefix>/<group>/workers/<worker_id>`; its will says offline."""

    model_config = ConfigDict(extra="allow")

    worker_id: str
    hostname: str
    version: str
    protocol: int
    state: Literal["online", "draining", "offline"]
    started_at: str
    heartbeat_at: str
    heartbeat_interval: float
    capacity: int
    running: int
    queued: int
    jobs_done: int
    warm_starts: int | None = Field(None, description="jobs started as forks of a warm Ansible parent")
    cold_starts: int | None = Field(None, description="jobs started as a fresh ansible-playbook")
    warm_pool_size: int | None = Field(None, description="warm Ansible parents ready for jobs")
    lost_after: float | None = Field(
        None, description="worker.lost_after: the silence after which the group takes this worker's jobs over"
    )
    stopped: Literal["clean", "lost"] | None = Field(
        None,
        description="with state offline: clean after a drained shutdown; lost in the will the broker publishes"
        " when the connection died without one",
    )


# A name a lock message gives (a worker, a task, a claim, a round): as a task_id is.
_ID = Annotated[str, StringConstraints(pattern=rf"^{TASK_ID}$")]


class LockRequestDocument(BaseModel):
    """One job's request for its locks, in an acquire or a renewal."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    claim: _ID = Field(description="unique per request")
    task_id: _ID
    locks: list[str] = Field(description="the names it holds: hosts, or the request's own locks")
    limits: dict[str, int] = Field(
        default_factory=dict, description="max_concurrent: a name (template, project/playbook or module) and its cap"
    )


class LockMessage(BaseModel):
    """A message of the group's locks topic, `<prefix>/<group>/locks`, in the one order the broker gives it."""

    # Describes what locks.py writes, for the published schema; built only when asked for.
    # With signed jobs it also carries `issued_at` and `signature`, signed by a worker key.
    model_config = ConfigDict(extra="allow", defer_build=True)

    type: Literal["acquire", "renew", "release", "sync"] = Field(
        description="acquire: a job asks; renew: every request of the worker, in parts of at most 4 MiB (also the"
        " answer to a sync); release: a job gives its locks back; sync: a worker asks what is held, on each of its"
        " links before it grants a lock. A request holds until released, or until another worker's claim holds its"
        " task_id (a takeover)"
    )
    worker_id: _ID
    requests: list[LockRequestDocument] | None = Field(None, description="acquire and renew")
    releases: list[_ID] | None = Field(None, description="release: the claims given back")
    lifetime: float | None = Field(
        None,
        gt=0,
        description="acquire and renew: seconds its requests live unheard, counted by each reader on its own"
        " monotonic clock while it is connected: a safety net far beyond lost_after, for requests nobody released,"
        " renewed or took over",
    )
    round: _ID | None = Field(None, description="sync: a fresh id of the question, which the answers name")
    answers: list[str] | None = Field(
        None,
        description="renew: the sync rounds this renewal answers (on the last part of a renewal); it holds every"
        " request its worker made before it heard them",
    )
    expires_at: datetime | None = Field(
        None,
        description="acquire and renew: when `lifetime` ends on the sender's clock, for readers that predate"
        " `lifetime`; a reader that finds `lifetime` goes by it",
    )


class ClaimMessage(BaseModel):
    """A worker's retained claim on a job, `<prefix>/<group>/tasks/<task_id>/claim`."""

    # Describes what claims.py writes, for the published schema; built only when asked for.
    # With signed jobs it also carries `issued_at` and `signature`, as task requests do.
    model_config = ConfigDict(extra="allow", defer_build=True)

    state: Literal["claimed", "released"]
    worker_id: str
    claim: str = Field(description="unique per claim; the first claim the broker delivers holds the task_id")
    releases: str | None = Field(None, description="for a release: the claim it releases")
    request_sha256: Annotated[str, StringConstraints(pattern=SHA256_PATTERN)] | None = Field(
        None,
        description="for a claim: SHA-256 (hex) of the request copy retained on the job's request topic; for a"
        " release that hands a job back: of the task message it publishes again; with signatures, only that"
        " message is taken past max_task_age while the release holds",
    )
    accepted_at: datetime | None = Field(
        None, description="when the group first accepted the job; every later claim on it keeps it"
    )
    started_at: datetime | None = Field(
        None, description="set once the job may have started: a job taken over with it is never run again"
    )
    takes_over: str | None = Field(None, description="for a takeover: the lost worker's claim it replaces")
    lost_worker: str | None = Field(None, description="for a takeover: the worker judged lost")
    expires_at: datetime | None = Field(None, description="until when the claim holds (required with signatures)")


class ScheduleView(BaseModel):
    """One schedule entry of a template as the catalogue shows it: when it runs next, when it last ran."""

    model_config = ConfigDict(extra="allow")

    entry: str = Field(description="`template.key`: the entry named by what it says; part of each tick's task_id")
    cron: str | None = None
    timezone: str | None = None
    at: datetime | None = None
    next_runs: list[datetime] = Field(description="the next ticks, UTC, as of `published_at`")
    last_run: datetime | None = Field(None, description="the newest tick the group ran, as far as the publisher knows")
    last_task_id: str | None = None
    missed: list[datetime] = Field(
        default_factory=list, description="ticks skipped because no worker was online (the newest ten)"
    )


class TemplateView(BaseModel):
    """One template of the catalogue: what a launcher needs, never a secret's default."""

    model_config = ConfigDict(extra="allow")

    description: str | None = None
    playbook: str
    survey: dict[str, SurveyRule] = Field(default_factory=dict)
    schedule: list[ScheduleView] = Field(default_factory=list)


class TemplateCatalogue(BaseModel):
    """The group's templates, retained on `<prefix>/<group>/templates` by its workers."""

    model_config = ConfigDict(extra="allow")

    worker_id: str = Field(description="the worker that published this copy")
    published_at: datetime
    templates_only: bool = Field(description="whether the publisher refuses requests that name no template")
    templates: dict[str, TemplateView]
