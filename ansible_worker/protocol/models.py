"""The messages of protocol v1 about jobs: task and cancel requests in; statuses, events and records out."""

from __future__ import annotations

import enum
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, PydanticSerializationError

from ansible_worker.protocol.request_fields import (
    MAX_LOCKS,
    SHA256_PATTERN,
    HostPattern,
    Limit,
    LockName,
    ModuleArgs,
    ModuleName,
    ProjectName,
    Retry,
    Revision,
    TagList,
)
from ansible_worker.protocol.topics import TASK_ID

TASK_ID_PATTERN = rf"^{TASK_ID}$"

TaskId = Annotated[str, StringConstraints(pattern=TASK_ID_PATTERN)]


# Shipped archives travel in parts of this size (the last one shorter), one retained message
# each, so that neither side ever holds a whole large archive in one MQTT message.
CONTENT_PART_BYTES = 4 * 1024 * 1024


class ShippedContent(BaseModel):
    """The tree a job carries: a tar archive retained in parts on `<prefix>/<group>/content/<sha256>/<n>`."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    sha256: Annotated[str, StringConstraints(pattern=SHA256_PATTERN)] = Field(
        description="SHA-256 of the archive, lowercase hex: the topic it is retained on"
    )
    size: int = Field(ge=1, description="the archive's length in bytes")

    @property
    def parts(self) -> int:
        """How many parts the archive travels in: parts 0 to parts - 1."""
        return -(-self.size // CONTENT_PART_BYTES)


# A week: longer than any run a worker should hold, and finite (JSON `Infinity` parses).
MAX_TIMEOUT_SECONDS = 604_800


class Signature(BaseModel):
    """An Ed25519 signature over the topic and the message's canonical JSON (see SECURITY.md)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    key: str | None = Field(None, description="fingerprint of the signing key: a hint")
    value: str = Field(description="the signature, base64")


class TaskRequest(BaseModel):
    """A job as a controller publishes it to `<prefix>/<group>/tasks`. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    task_id: TaskId
    # A playbook job names `playbook`; an ad-hoc command names `module` instead.
    playbook: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None
    inventory: Annotated[str, StringConstraints(min_length=1, max_length=65536)]
    extra_vars: dict[str, Any] = Field(default_factory=dict)
    limit: Limit | None = None
    tags: TagList = Field(default_factory=list)
    skip_tags: TagList = Field(default_factory=list)
    verbosity: int = Field(0, ge=0, le=4)
    check_mode: bool = False
    diff_mode: bool = False
    forks: int = Field(5, ge=1, le=1000)
    timeout: float | None = Field(None, gt=0, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False)
    git_pull: bool = False
    credentials: Annotated[
        list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]], Field(max_length=16)
    ] = Field(default_factory=list, description="names of the worker's credentials the job runs with")
    # Where the playbooks come from: a project of `worker.projects` (default: the playbook
    # directory), at a revision, or content shipped with the job.
    project: ProjectName | None = None
    revision: Revision | None = None
    content: ShippedContent | None = None
    # A launch: the worker's template of this name sets every field above but `extra_vars`,
    # which then holds the survey's answers only (see docs/templates.md).
    template: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")] | None = Field(
        None, description="the name of one of the workers' templates to launch, with its survey answers in extra_vars"
    )
    # Required by workers with security.require_signed_tasks; checked before this model.
    # An ad-hoc command (Ansible's `ansible` CLI), allowed by `worker.ad_hoc_modules`.
    module: ModuleName | None = Field(None, description="ad-hoc: the module to run instead of a playbook (-m)")
    module_args: ModuleArgs | None = Field(
        None,
        description="ad-hoc: the module's arguments (-a); a string is Ansible's key=value or free-form text,"
        " an object reaches the module as data, never templated",
    )
    hosts: HostPattern = Field("all", description="ad-hoc: the host pattern to run on")
    background: int | None = Field(
        None, ge=1, le=MAX_TIMEOUT_SECONDS, description="ad-hoc: run asynchronously, for at most this long (-B)"
    )
    poll: int | None = Field(
        None, ge=0, le=MAX_TIMEOUT_SECONDS, description="ad-hoc: with background, poll every N seconds; 0: do not (-P)"
    )
    retry: Retry | None = Field(None, description="run the hosts that failed or were unreachable again")
    locks: Annotated[list[LockName], Field(max_length=MAX_LOCKS)] | None = Field(
        None,
        description="the group-wide locks the job holds while it runs; default: the hosts its inventory and"
        " limit resolve to; []: none",
    )
    max_concurrent: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="at most this many jobs of this playbook (or module) run at once in the group",
    )
    # Required by workers with security.require_signed_tasks; checked before this model.
    issued_at: str | None = Field(None, description="RFC 3339 time the message was signed")
    signature: Signature | None = None
    # Values masked like credentials in all the job reports: a template's secret answers.
    _secrets: tuple[str, ...] = PrivateAttr(())

    @property
    def secrets(self) -> tuple[str, ...]:
        """The request's own secret values (a template's `secret` answers), to mask wherever the job reports."""
        return self._secrets

    def with_secrets(self, values: list[str]) -> TaskRequest:
        """This request, whose `secrets` are `values`."""
        copy = self.model_copy()
        copy._secrets = tuple(str(value) for value in values)
        return copy

    @model_validator(mode="before")
    @classmethod
    def _text_is_unicode(cls, data: Any) -> Any:
        """No string of the request, however deep, holds a lone surrogate (JSON's `\\ud800`).

        Such text cannot reach Ansible: a file, an argument or an environment variable would
        fail to encode, or Ansible would refuse to read it. The job is refused saying where.
        """
        pending: list[tuple[tuple[str | int, ...], Any, bool]] = [((), data, False)]
        while pending:
            where, value, is_key = pending.pop()
            if isinstance(value, str):
                if not value.isascii() and _has_lone_surrogate(value):
                    what = "a key here" if is_key else "it"
                    problem = PydanticCustomError(
                        "lone_surrogate", f"{what} holds a lone surrogate, which is not text Ansible can read"
                    )
                    error = InitErrorDetails(type=problem, loc=where, input=value)
                    raise ValidationError.from_exception_data(cls.__name__, [error])
            elif isinstance(value, dict):
                for key, item in value.items():
                    pending.append((where, key, True))
                    pending.append(((*where, str(key)), item, False))
            elif isinstance(value, list):
                pending.extend(((*where, index), item, False) for index, item in enumerate(value))
        return data

    @model_validator(mode="wrap")
    @classmethod
    def _playbook_unless_module(cls, data: Any, handler: ModelWrapValidatorHandler[TaskRequest]) -> TaskRequest:
        """Without `module`, `playbook` is required, and said to be missing as any required field is."""
        missing = isinstance(data, dict) and "playbook" not in data and "module" not in data
        if not missing:
            return handler(data)
        required = InitErrorDetails(type="missing", loc=("playbook",), input=data)
        try:
            handler(data)
        except ValidationError as exc:
            others = [
                InitErrorDetails(type=error["type"], loc=error["loc"], input=error["input"], ctx=error.get("ctx", {}))
                for error in exc.errors()
            ]
            raise ValidationError.from_exception_data(cls.__name__, [required, *others]) from None
        raise ValidationError.from_exception_data(cls.__name__, [required])

    @model_validator(mode="after")
    def _one_kind(self) -> TaskRequest:
        """A playbook or a module, and each kind's own fields only."""
        if (self.playbook is None) == (self.module is None):
            raise ValueError("name either a playbook or a module (an ad-hoc command), not both")
        if self.playbook is not None:
            ad_hoc = [name for name in ("module_args", "background", "poll") if getattr(self, name) is not None]
            if self.hosts != "all":
                ad_hoc.append("hosts")
            if ad_hoc:
                raise ValueError(f"{', '.join(ad_hoc)} belong to ad-hoc commands (module), not to a playbook")
        else:
            if self.tags or self.skip_tags:
                raise ValueError("tags and skip_tags belong to playbooks, not to ad-hoc commands")
            if self.poll is not None and self.background is None:
                raise ValueError("poll needs background")
        return self

    @property
    def ad_hoc(self) -> bool:
        """Whether this is an ad-hoc command (a module) rather than a playbook."""
        return self.module is not None

    @property
    def what(self) -> str:
        """What runs, for logs: `playbook PATH` or `ad-hoc MODULE`."""
        return f"playbook {self.playbook}" if self.playbook is not None else f"ad-hoc {self.module}"


class CancelRequest(BaseModel):
    """A request on `<prefix>/<group>/tasks/<task_id>/cancel`; an empty payload is a request too."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    reason: Annotated[str, StringConstraints(max_length=1024)] | None = None
    requested_by: Annotated[str, StringConstraints(max_length=128)] | None = None
    issued_at: str | None = Field(None, description="RFC 3339 time the message was signed")
    signature: Signature | None = None

    def describe(self) -> str:
        """How the terminal status explains the cancellation."""
        who = f" by {self.requested_by}" if self.requested_by else ""
        why = f": {self.reason}" if self.reason else ""
        return f"cancelled{who}{why}" if who or why else "cancelled on request"


class State(enum.StrEnum):
    """Where a job is in its life. The last four are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"

    @property
    def terminal(self) -> bool:
        """Whether the job has ended: success, failed, cancelled or timeout."""
        return self not in (State.QUEUED, State.RUNNING)


class RecordSummary(BaseModel):
    """What the terminal status says of the job's record on `<prefix>/<group>/tasks/<task_id>/record`."""

    model_config = ConfigDict(frozen=True)

    bytes: int = Field(description="size of the compressed record as published")
    events: int = Field(description="events the record holds")
    cut: bool = Field(description="whether older events or output were left out to fit the limit")


class Attempt(BaseModel):
    """One run of Ansible within a job that may run hosts again (`retry`): where it ran and how they ended."""

    model_config = ConfigDict(frozen=True)

    attempt: int = Field(description="1 for the first run, then 2, 3…")
    limit: str | None = Field(description="the limit it ran with: the request's, then the hosts run again")
    return_code: int | None = None
    hosts: list[str] = Field(default_factory=list, description="every host of its recap")
    failed: list[str] = Field(default_factory=list, description="hosts with a failed task")
    unreachable: list[str] = Field(default_factory=list, description="hosts that could not be reached")


class JobStatus(BaseModel):
    """What the retained topic `<prefix>/<group>/tasks/<task_id>/status` says about a job.

    The fields of protocol v1 come first and are never removed or renamed; the rest are
    additions a controller may ignore.
    """

    model_config = ConfigDict(frozen=True)

    task_id: str
    state: State
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_seconds: float | None = None
    tasks_total: int = 0
    tasks_ok: int = 0
    tasks_changed: int = 0
    tasks_failed: int = 0
    tasks_skipped: int = 0
    tasks_unreachable: int = 0
    return_code: int | None = None
    error_message: str | None = None
    output: dict[str, Any] = Field(default_factory=dict)
    # Additions to protocol v1.
    worker_id: str | None = None
    playbook: str | None = None
    module: str | None = Field(None, description="an ad-hoc command's module (its playbook is null)")
    current_play: str | None = None
    current_task: str | None = None
    tasks_rescued: int = 0
    tasks_ignored: int = 0
    output_per_host: dict[str, dict[str, Any]] = Field(default_factory=dict)
    cancelled_by: str | None = None
    handed_back_by: str | None = None
    # A job of a lost worker: who it was taken over from (a queued job run again here), or
    # who settled it (a job that had started there, ended `failed`).
    taken_over_from: str | None = None
    taken_over_by: str | None = None
    last_event_seq: int = 0
    events_dropped: int = 0
    # What ran: the project (None: the playbook directory), its full commit id, or the
    # digest of the shipped content.
    project: str | None = None
    revision: str | None = None
    content_sha256: str | None = None
    # The template the job was launched from, if any.
    template: str | None = None
    # The job's record, published before this terminal status; None when there is none.
    record: RecordSummary | None = None
    # A live answer to a message that was refused before anything ran; never retained.
    refused: bool = False
    # With `retry`: each run of Ansible so far; the counts above add up every attempt's.
    attempts: list[Attempt] = Field(default_factory=list)
    # Why a job does not run Ansible yet: {"queue_position": 2, ...}, {"locks": [...], "held_by": ...}.
    waiting_for: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        """The status as UTF-8 JSON, whatever text Ansible put in it.

        An older ansible-core can hand back results with lone surrogates (a `\\ud800`
        escape is valid JSON, its character is not UTF-8): they become U+FFFD rather than
        make the status impossible to send.
        """
        try:
            return self.model_dump_json().encode()
        except PydanticSerializationError:
            text = json.dumps(self.model_dump(mode="json"), ensure_ascii=False)
            return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()


class LiveEvent(BaseModel):
    """One Ansible callback event on `<prefix>/<group>/tasks/<task_id>/events` (not retained)."""

    # Describes what live_events.py writes, for the published schema; built only when asked for.
    model_config = ConfigDict(extra="allow", defer_build=True)

    seq: int = Field(description="1, 2, 3… per job; a gap means events were dropped")
    event: str = Field(description="the callback's name, e.g. runner_on_ok")
    time: str = Field(description="RFC 3339 UTC")
    play: str | None = None
    task: str | None = None
    host: str | None = None
    item: Any = None
    duration: float | None = None
    status: Literal["ok", "changed", "failed", "ignored", "skipped", "unreachable", "retry"] | None = None
    no_log: bool | None = Field(None, description="true: the result is hidden and not sent")
    result: dict[str, Any] | None = Field(
        None,
        description="msg, rc, stdout, stderr, and diff (as Ansible prints it), long texts cut; a background"
        " task's ansible_job_id and finished",
    )
    line: str | None = Field(None, description="the line Ansible's own output shows for this event")
    action: str | None = Field(None, description="the task's module, e.g. ansible.builtin.command")
    play_uuid: str | None = Field(None, description="Ansible's id of the play: plays of one name told apart")
    task_uuid: str | None = Field(
        None, description="Ansible's id of the task, on task starts and results: tasks of one name told apart"
    )
    data: dict[str, Any] | None = Field(
        None,
        description="the rest of the module's result as JSON: no internal `_ansible_` keys, no module arguments"
        " (`invocation`), texts cut; at most about 4 KiB",
    )


class JobRecord(BaseModel):
    """A finished job's record on `<prefix>/<group>/tasks/<task_id>/record`: zlib-compressed JSON, retained.

    Published before the job's terminal status, with the same message expiry. Cut to
    `worker.record_limit_bytes` (compressed) when it would be larger, keeping the newest
    events and output; `cut` then says so.
    """

    # Describes what records.py writes, for the published schema; built only when asked for.
    model_config = ConfigDict(extra="allow", defer_build=True)

    format: Literal["ansible-worker-record/1"]
    task_id: str
    status: JobStatus = Field(description="the job's terminal status (its `record` field is null here)")
    request: dict[str, Any] | None = Field(
        None,
        description="the task message as the worker accepted it, signature and extra_vars included:"
        " what relaunch publishes again",
    )
    events: list[LiveEvent] = Field(
        description="every event of the job, numbered from 1 without gaps (the newest, when cut), with the"
        " callback's `counter`, `action`, and the recap's `hosts` on playbook_on_stats"
    )
    events_total: int = Field(description="how many events the job had")
    output: str = Field(description="Ansible's output, the newest part worker.output_limit_bytes kept (less, when cut)")
    output_bytes: int = Field(description="how many bytes of output Ansible wrote in all")
    cut: bool = Field(description="whether older events or output were left out")


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
