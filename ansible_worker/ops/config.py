"""Load and check the worker's settings: a YAML file, `${VAR}` expansion, then environment overrides."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, overload

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ansible_worker.ops.config_source import DEFAULT_CONFIG_FILE, ENV_PREFIX
from ansible_worker.ops.connection_settings import HttpSettings, MqttSettings
from ansible_worker.ops.credentials import Credential, CredentialName
from ansible_worker.ops.expand import UnsetVariableError, expand_tree
from ansible_worker.ops.history_settings import HistorySettings
from ansible_worker.ops.history_settings import duration_seconds as duration_seconds
from ansible_worker.ops.names import ENVIRONMENT_NAME_PATTERN, NAME_PATTERN
from ansible_worker.ops.security_settings import ClientSecuritySettings as ClientSecuritySettings
from ansible_worker.ops.security_settings import SecuritySettings
from ansible_worker.ops.template_settings import TemplateSettings
from ansible_worker.protocol.validation import describe_errors

# The shortest gap in its own run a worker takes for a freeze (SIGSTOP, a suspended VM), in
# seconds: its ticks come every second or so, and may be late under load.
MIN_FREEZE = 2.5


def check_topic_prefix(value: str) -> str:
    if not value or value.startswith("/") or value.endswith("/") or "//" in value:
        raise ValueError("must be one or more topic levels without empty levels, e.g. 'ansible'")
    if any(ch in value for ch in "+#$\0"):
        raise ValueError("must not contain '+', '#', '$' or NUL")
    return value


TopicPrefix = Annotated[str, AfterValidator(check_topic_prefix)]


def default_worker_id() -> str:
    """Host name plus a short random suffix: unique per process, readable in a listing."""
    host = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in socket.gethostname())
    return f"{host[:100] or 'worker'}-{secrets.token_hex(3)}"


class ProjectSettings(BaseModel):
    """A git repository that jobs name by `project`; the worker keeps a bare mirror of it."""

    model_config = ConfigDict(extra="forbid")

    # Any URL git fetches from: https://, ssh://, git://, file://, or a path.
    url: str = Field(min_length=1)
    branch: str = Field("main", min_length=1, max_length=255)
    # Seconds a fetch is reused for a job that names a branch or tag (0: fetch for every such job).
    update_interval: float = Field(0, ge=0)
    # Whether a job may name a revision other than `branch`.
    allow_revision: bool = False
    # A private key for ssh:// URLs; the worker's environment (SSH agent, credential helper) otherwise.
    key_file: Path | None = None
    # The host keys that `key_file` connections accept (strict checking); the user's own otherwise.
    known_hosts: Path | None = None
    # Set for git only (a credential helper's token, GIT_SSH_COMMAND, ...): never logged.
    environment: dict[Annotated[str, StringConstraints(pattern=ENVIRONMENT_NAME_PATTERN)], SecretStr] = Field(
        default_factory=dict
    )
    # Seconds a fetch may take; the worker's `git_timeout` when unset.
    fetch_timeout: float | None = Field(None, gt=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        # A URL that starts with '-' would reach git as an option.
        if value.startswith("-") or any(ch in value for ch in "\0\n\r"):
            raise ValueError("must be a git URL or path, not starting with '-'")
        return value

    @field_validator("key_file", "known_hosts")
    @classmethod
    def _check_key_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value.resolve() if value is not None else None


class WorkerSettings(TemplateSettings):
    """What this worker does and how much of it."""

    model_config = ConfigDict(extra="forbid")

    group_name: str = Field(pattern=NAME_PATTERN)
    playbook_directory: Path
    topic_prefix: TopicPrefix = "ansible"
    worker_id: str = Field(default_factory=default_worker_id, pattern=NAME_PATTERN)
    max_queue_size: int = Field(100, ge=1, le=100_000)
    concurrency: int = Field(1, ge=1, le=256)
    task_timeout: float = Field(3600, gt=0)
    kill_grace: float = Field(10, ge=0, le=3600)
    drain_timeout: float = Field(60, ge=0)
    state_dir: Path | None = None
    shared_subscription: bool = True
    ansible_playbook_path: str = Field("ansible-playbook", min_length=1)
    # Start jobs as forks of a parent that has already imported Ansible (same configuration only).
    warm_start: bool = True
    warm_pool_size: int = Field(2, ge=1, le=32)
    warm_max_forks: int = Field(200, ge=1)
    warm_max_rss_mb: int = Field(512, ge=16)
    warm_start_timeout: float = Field(60, gt=0, le=3600)
    git_path: str = Field("git", min_length=1)
    git_timeout: float = Field(300, gt=0)
    max_message_bytes: int = Field(1_048_576, ge=1024)
    status_interval: float = Field(0.25, ge=0, le=60)
    run_directory: Path | None = None
    output_limit_bytes: int = Field(1_048_576, ge=4096)
    allowed_playbooks: list[str] | None = None
    allowed_inventories: list[str] | None = None
    allow_inline_inventory: bool = True
    max_verbosity: int = Field(4, ge=0, le=4)
    max_extra_vars_bytes: int = Field(65536, ge=0)
    max_extra_vars_depth: int = Field(10, ge=1)
    # Modules an ad-hoc command (`module` instead of `playbook`) may run; empty: no ad-hoc
    # commands. `command`, `shell`, `raw` and `script` run anything on the hosts.
    ad_hoc_modules: list[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,3}$")]
    ] = Field(default_factory=list)
    # Jobs hold the hosts their inventory and limit resolve to as group-wide locks: two jobs on
    # one host never run at once on any worker of the group. A request's `locks` names its own.
    host_locks: bool = True
    # extra_vars names that Ansible reads itself (ansible_*, magic, reserved) and that jobs may
    # set anyway, matched exactly; empty refuses them all (see special_vars.py).
    allowed_special_vars: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = Field(
        default_factory=list
    )
    publish_events: bool = True
    events_qos: Literal[0, 1] = 0
    events_per_second: float = Field(200, gt=0)
    heartbeat_interval: float = Field(30, gt=0, le=3600)
    # Seconds of silence (no presence heard while the observer is connected) after which the
    # group takes a worker's unsettled jobs over. None: 3 x heartbeat_interval + mqtt.keepalive.
    lost_after: float | None = Field(None, gt=0, le=86_400)
    # MQTT's message expiry interval is a four-byte integer.
    status_retention: int = Field(604_800, ge=0, le=2**32 - 1)
    # How long the claim of a settled job keeps its task_id from running again, in seconds: as
    # long as a copy of it may still arrive (a controller's retries, a hand-back, a signed
    # job's accepted age). An older task_id is checked against its retained status instead.
    claim_lifetime: int = Field(3600, ge=1, le=2**32 - 1)
    # A finished job's record (events and output, compressed), retained as long as its status.
    publish_records: bool = True
    record_limit_bytes: int = Field(1_048_576, ge=1024, le=268_435_455)
    http: HttpSettings = Field(default_factory=HttpSettings)
    # Where jobs' playbooks may come from besides the playbook directory (see sources.py).
    projects: dict[Annotated[str, StringConstraints(pattern=NAME_PATTERN)], ProjectSettings] = Field(
        default_factory=dict
    )
    # Whether a job may pin a `revision` of the playbook directory when it is a git checkout.
    allow_revision: bool = False
    # Shipped content runs whatever a controller sends: off unless asked for.
    allow_shipped_content: bool = False
    max_content_bytes: int = Field(268_435_456, ge=1024)
    max_content_entries: int = Field(20_000, ge=1)
    content_fetch_timeout: float = Field(30, gt=0)
    # The cache of run trees (commit snapshots, unpacked content) and project mirrors:
    # `state_dir`/sources by default, else a new private directory in the temp directory.
    source_cache: Path | None = None
    # Every process that can reach the worker's directories runs as the worker's user (a pod
    # whose containers all run as one user): directories on the source cache's path that
    # others may write, as Kubernetes makes every emptyDir (0777), are then accepted.
    single_user: bool = False
    source_cache_bytes: int = Field(2_147_483_648, ge=0)
    source_cache_age: float = Field(86_400, ge=0)
    # Values are secrets as far as the worker knows: never logged, summarised by name only.
    environment: dict[Annotated[str, StringConstraints(pattern=ENVIRONMENT_NAME_PATTERN)], SecretStr] = Field(
        default_factory=dict
    )
    # Named credentials a job may ask for by name; values are secrets, masked in what is published.
    credentials: dict[CredentialName, Credential] = Field(default_factory=dict)
    # The known_hosts file SSH checks host keys against (strictly); None leaves SSH's own defaults.
    known_hosts: Path | None = None

    @field_validator("lost_after")
    @classmethod
    def _check_lost_after(cls, value: float | None, info: ValidationInfo) -> float | None:
        heartbeat = info.data.get("heartbeat_interval")
        if value is None or not isinstance(heartbeat, float | int):
            return value
        if value <= heartbeat:
            raise ValueError(
                f"must be longer than worker.heartbeat_interval ({heartbeat:g}s): a worker would be judged lost"
                " between two of its heartbeats"
            )
        # A worker notices its own freeze (and publishes nothing until it has heard the claims
        # again) only after a gap of max(lost_after / 2, MIN_FREEZE); the group may judge it lost
        # after a freeze of lost_after - heartbeat_interval. Every freeze that can be reaped must
        # be noticed.
        least = max(2 * heartbeat, heartbeat + MIN_FREEZE)
        if value < least:
            raise ValueError(
                f"must be at least 2 x worker.heartbeat_interval and worker.heartbeat_interval + {MIN_FREEZE:g}s"
                f" ({least:g}s here): a worker frozen for less than lost_after could be taken over without"
                " noticing it, and publish for jobs no longer its own"
            )
        return value

    @field_validator("known_hosts")
    @classmethod
    def _check_known_hosts(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"not a file: {value}")
        return value.resolve() if value is not None else None

    @field_validator("environment")
    @classmethod
    def _check_environment(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        reserved = sorted(name for name in value if name.startswith(ENV_PREFIX) or name == "ANSIBLE_CALLBACK_PLUGINS")
        if reserved:
            raise ValueError(f"{', '.join(reserved)}: reserved for the worker itself")
        return value

    @field_validator("playbook_directory")
    @classmethod
    def _check_playbook_directory(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"not a directory: {value}")
        return value.resolve()

    @field_validator("run_directory")
    @classmethod
    def _check_run_directory(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"not a directory: {value}")
        return value

    @field_validator("source_cache")
    @classmethod
    def _check_source_cache(cls, value: Path | None) -> Path | None:
        if value is None or value.is_dir() or (not value.exists() and value.parent.is_dir()):
            # Absolute, but links kept: the worker refuses a path through a symbolic link.
            return Path(os.path.abspath(value)) if value is not None else None
        raise ValueError(f"not a directory: {value}")

    @field_validator("state_dir")
    @classmethod
    def _check_state_dir(cls, value: Path | None) -> Path | None:
        # A missing one is created (0700) by the worker, inside a directory that exists.
        if value is None or value.is_dir() or (not value.exists() and value.parent.is_dir()):
            return value
        raise ValueError(f"not a directory: {value}")


class DashboardSettings(BaseModel):
    """The `dashboard` section: where `ansible-worker dashboard` listens and who may use it."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    listen: str = Field("127.0.0.1:8470", description="HOST:PORT the dashboard's web page listens on")
    # Required for a listen address beyond loopback; the page asks for it once.
    token: SecretStr | None = None
    allow_actions: bool = False
    # Where people reach the dashboard (https://...): notifications link a job's page there.
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=2048)] | None = None


class _EnvironmentOverFile(BaseSettings):
    """Settings whose environment variables override the values read from the file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init values; listing the environment first makes it win.
        return env_settings, init_settings


class Settings(_EnvironmentOverFile):
    """The whole configuration. Environment variables override the file."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    mqtt: MqttSettings
    worker: WorkerSettings
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    # Read by `ansible-worker dashboard` only; allowed here so one file serves both.
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    # Read by `ansible-worker archive`, the controller commands and the dashboard; never by a worker.
    history: HistorySettings = Field(default_factory=HistorySettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # text for people; json for log collectors: one object per line.
    log_format: Literal["text", "json"] = "text"

    @property
    def lost_after(self) -> float:
        """Seconds of silence after which a worker is lost: `worker.lost_after`, or 3 heartbeats plus the keepalive."""
        worker = self.worker
        if worker.lost_after is not None:
            return worker.lost_after
        return 3 * worker.heartbeat_interval + self.mqtt.keepalive

    def lost_after_warning(self) -> str | None:
        """Why `lost_after` is risky for this configuration, or None."""
        if self.lost_after < 1.5 * self.mqtt.keepalive:
            return (
                f"worker.lost_after ({self.lost_after:g}s) is below 1.5 x mqtt.keepalive"
                f" ({1.5 * self.mqtt.keepalive:g}s): a frozen worker's connection may still be open when its jobs"
                " are taken over"
            )
        return None

    @model_validator(mode="after")
    def _check_claim_lifetime(self) -> Settings:
        security = self.security
        window = security.max_task_age + 2 * security.max_clock_skew
        if security.require_signed_tasks and self.worker.claim_lifetime < window:
            raise ValueError(
                f"worker.claim_lifetime ({self.worker.claim_lifetime}s) is shorter than security.max_task_age"
                f" + 2 x security.max_clock_skew ({window:g}s): a signed job's claim must outlive every moment its"
                " signature is accepted, or a captured copy could run again once its retained status is gone"
            )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class ClientGroupSettings(BaseModel):
    """The part of the `worker` section a controller needs; the rest is the worker's business."""

    # Built on first use: a worker process never needs it.
    model_config = ConfigDict(extra="ignore", defer_build=True)

    group_name: str = Field("default", pattern=NAME_PATTERN)
    topic_prefix: TopicPrefix = "ansible"


class ClientSettings(_EnvironmentOverFile):
    """What a controller reads from the same file and environment as the workers."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", defer_build=True
    )

    mqtt: MqttSettings
    worker: ClientGroupSettings = Field(default_factory=ClientGroupSettings)
    security: ClientSecuritySettings = Field(default_factory=ClientSecuritySettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one readable line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@overload
def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings: ...


@overload
def load_settings(
    path: Path | None, environ: Mapping[str, str] | None = None, *, model: type[SettingsT]
) -> SettingsT: ...


def load_settings(
    path: Path | None, environ: Mapping[str, str] | None = None, *, model: type[BaseSettings] = Settings
) -> BaseSettings:
    """Read `path` (if given and present), expand references, apply the environment, validate.

    With `path` None the default file is read when it exists; otherwise settings come from
    the environment alone, which suits containers.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = path if path is not None else DEFAULT_CONFIG_FILE
    if path is not None or DEFAULT_CONFIG_FILE.exists():
        data = _read_yaml(source)
    try:
        expanded = expand_tree(data, environ)
    except UnsetVariableError as exc:
        raise ConfigError([str(exc)]) from None
    try:
        # Environment overrides are read from os.environ by pydantic-settings itself.
        return model(**expanded)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = describe_errors(exc)
        if not data:
            problems.append(f"(no config file was read: pass -c FILE or set {ENV_PREFIX}* variables)")
        raise ConfigError(problems) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}:{where} invalid YAML: {problem}"]) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of keys, not {type(loaded).__name__}"])
    return loaded
