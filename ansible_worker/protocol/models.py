"""The messages of protocol v1: task and cancel requests in; statuses, events, presence and claims out."""

from __future__ import annotations

import enum
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticSerializationError

from ansible_worker.protocol.topics import TASK_ID

TASK_ID_PATTERN = rf"^{TASK_ID}$"

TaskId = Annotated[str, StringConstraints(pattern=TASK_ID_PATTERN)]


def _split_commas(value: object) -> object:
    """Accept `"a,b"` as well as `["a", "b"]`: both forms are common in controllers."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _no_option_like(value: str) -> str:
    # Defence in depth: values are passed as `--opt=VALUE`, but a leading dash still reads
    # as a mistake and `@file` would make Ansible read a file on the worker.
    if value.startswith(("-", "@")):
        raise ValueError("must not start with '-' or '@'")
    return value


def _no_limit_file(value: str) -> str:
    # Ansible splits a limit on commas, or else on colons and whitespace, strips each pattern
    # (Unicode whitespace too) and reads host names from a file for every pattern that then
    # starts with '@' (`split_host_pattern` and `InventoryManager.subset` in
    # ansible/inventory/manager.py): "web, @/etc/shadow" reads /etc/shadow. '@' means nothing
    # else in Ansible's patterns and no valid host name holds it, so any '@' is refused: a rule
    # that needs no copy of Ansible's parsing, and that answers alike whether the file exists.
    if "@" in value:
        raise ValueError("must not contain '@': Ansible reads '@file' patterns from a file on the worker")
    return value


Tag = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_no_option_like)]
TagList = Annotated[list[Tag], BeforeValidator(_split_commas)]
Limit = Annotated[
    str,
    StringConstraints(min_length=1, max_length=65536),
    AfterValidator(_no_option_like),
    AfterValidator(_no_limit_file),
]


MAX_MODULE_ARGS_LENGTH = 65536
# Ansible renders these wherever it templates: the play's host pattern and a task's arguments.
_TEMPLATE_MARKERS = ("{{", "{%", "{#")


def _no_template(value: str) -> str:
    # Ansible templates an ad-hoc command's host pattern and its arguments on the worker, so
    # `{{ lookup('pipe', ...) }}` there would run a command on the worker itself.
    if any(marker in value for marker in _TEMPLATE_MARKERS):
        raise ValueError("must not contain '{{', '{%' or '{#': Ansible would template it on the worker")
    return value


def _plain_module_args(value: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(value, dict):
        return _plain_keys(value)
    # Ansible decodes escapes such as \u007b in `key=value` arguments (before templating) and
    # reads a string in braces as JSON (whose escapes decode too): either could spell '{{'.
    if len(value) > MAX_MODULE_ARGS_LENGTH:
        raise ValueError(f"a string may hold at most {MAX_MODULE_ARGS_LENGTH} characters")
    if "\\" in value:
        raise ValueError("a string must not contain a backslash: give module_args as an object instead")
    if value.lstrip().startswith("{"):
        raise ValueError("a string must not start with '{': give module_args as an object instead")
    return _no_template(value)


def _plain_keys(value: dict[str, Any]) -> dict[str, Any]:
    # The worker marks each string value as data (argv.module_arguments); a key cannot be
    # marked, so it may not look like a template. Ansible's JSON decoder reads `__ansible_vault`
    # and `__ansible_unsafe` objects as tagged data.
    def walk(item: Any) -> None:
        if isinstance(item, dict):
            for key, inner in item.items():
                if key.startswith("__ansible"):
                    raise ValueError(f"must not use the key {key!r}: Ansible reads it as tagged data")
                _no_template(key)
                walk(inner)
        elif isinstance(item, list):
            for inner in item:
                walk(inner)

    walk(value)
    return value


HostPattern = Annotated[
    str,
    StringConstraints(min_length=1, max_length=65536),
    AfterValidator(_no_option_like),
    AfterValidator(_no_limit_file),
    AfterValidator(_no_template),
]
ModuleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,3}$")]
ModuleArgs = Annotated[str | dict[str, Any], AfterValidator(_plain_module_args)]


def _no_dotdot(value: str) -> str:
    # Git reads `a..b` as a range and `@{` as a reflog selector: neither names one commit.
    if ".." in value or "@{" in value or value.endswith((".lock", "/", ".")):
        raise ValueError("must name one commit, tag or branch (no '..', '@{', or a trailing '/', '.' or '.lock')")
    return value


# A commit id (full or abbreviated), a tag or a branch; never an option, range or reflog entry.
Revision = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/+-]{0,254}$"),
    AfterValidator(_no_dotdot),
]
ProjectName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,128}$")]
SHA256_PATTERN = r"^[0-9a-f]{64}$"


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


RetryOn = Literal["unreachable", "failed"]


# A lock is a name: a host of the inventory, or any name a request gives.
LockName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f]+$")]
MAX_LOCKS = 5000


class Retry(BaseModel):
    """Run the hosts that ended in one of the `on` states again, in the same job."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    attempts: int = Field(ge=1, le=10, description="how many times at most the hosts are run again")
    delay: float = Field(0, ge=0, le=3600, allow_inf_nan=False, description="seconds to wait before each new attempt")
    on: Annotated[list[RetryOn], Field(min_length=1)] = Field(
        default_factory=lambda: list[RetryOn](["unreachable"]),
        description="which hosts run again: unreachable, failed or both",
    )


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
    last_event_seq: int = 0
    events_dropped: int = 0
    # What ran: the project (None: the playbook directory), its full commit id, or the
    # digest of the shipped content.
    project: str | None = None
    revision: str | None = None
    content_sha256: str | None = None
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
        None, description="msg, rc, stdout, stderr, long texts cut; a background task's ansible_job_id and finished"
    )
    line: str | None = Field(None, description="the line Ansible's own output shows for this event")


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


class LockRequestDocument(BaseModel):
    """One job's request for its locks, in an acquire or a renewal."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    claim: str = Field(description="unique per request")
    task_id: str
    locks: list[str] = Field(description="the names it holds: hosts, or the request's own locks")
    limits: dict[str, int] = Field(
        default_factory=dict, description="max_concurrent: a name (project/playbook or module) and its cap"
    )


class LockMessage(BaseModel):
    """A message of the group's locks topic, `<prefix>/<group>/locks`, in the one order the broker gives it."""

    # Describes what locks.py writes, for the published schema; built only when asked for.
    # With signed jobs it also carries `issued_at` and `signature`, signed by a worker key.
    model_config = ConfigDict(extra="allow", defer_build=True)

    type: Literal["acquire", "renew", "release", "sync"] = Field(
        description="acquire: a job asks; renew: every request of the worker, kept alive (also the answer to a"
        " sync); release: a job gives its locks back; sync: a worker that has just started asks what is held"
    )
    worker_id: str
    requests: list[LockRequestDocument] | None = Field(None, description="acquire and renew")
    releases: list[str] | None = Field(None, description="release: the claims given back")
    expires_at: datetime | None = Field(None, description="acquire and renew: until when the requests hold")


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
        description="for a release that hands a job back: SHA-256 (hex) of the task message it publishes again;"
        " with signatures, only that message is taken past max_task_age while the release holds",
    )
    expires_at: datetime | None = Field(None, description="until when the claim holds (required with signatures)")
