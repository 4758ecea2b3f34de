"""The settings of job templates: `worker.templates`, `templates_only`, and the `notifications` of job events."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, field_validator, model_validator

NotificationEvent = Literal["started", "success", "failed", "timeout", "cancelled", "lost"]
EVENTS: tuple[NotificationEvent, ...] = ("started", "success", "failed", "timeout", "cancelled", "lost")
_Pattern = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class NotificationTarget(BaseModel):
    """One receiver of notifications: a webhook URL, a body format, the events it wants, and a filter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A name for logs and metrics: the URL may hold a token (Slack's and Teams' do).
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")] | None = None
    url: SecretStr
    format: Literal["json", "slack", "teams"] = "json"
    on: Annotated[list[NotificationEvent], Field(min_length=1)] = Field(default_factory=lambda: list(EVENTS[1:]))
    # Shell-style patterns (fnmatch); a job passes when it matches one of each list that is set.
    templates: list[_Pattern] | None = None
    playbooks: list[_Pattern] | None = None
    # The body is signed with HMAC-SHA256 under this key: `X-Ansible-Worker-Signature: sha256=<hex>`.
    secret: SecretStr | None = None
    timeout: float = Field(10, gt=0, le=300)
    # Attempts in all (the first and its retries), with a doubling backoff from `backoff` seconds.
    attempts: int = Field(5, ge=1, le=20)
    backoff: float = Field(1, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        parts = urlsplit(value.get_secret_value())
        try:
            parts.port  # noqa: B018 (read for its check: a port beyond 65535 raises)
        except ValueError:
            raise ValueError("has a port that is not one") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @property
    def label(self) -> str:
        """What logs and metrics call it: its name, or its URL's scheme, host and port (never a path or token)."""
        if self.name is not None:
            return self.name
        parts = urlsplit(self.url.get_secret_value())
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"


class TemplateSettings(BaseModel):
    """The part of the `worker` section about templates and notifications (`WorkerSettings` has it)."""

    # The templates file, relative to the playbook directory (versioned with the playbooks).
    templates: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None
    # Refuse every request that does not name a template: launching, not running anything.
    templates_only: bool = False
    # Where job notifications go (docs/templates.md).
    notifications: list[NotificationTarget] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _templates_only_needs_templates(self) -> TemplateSettings:
        if self.templates_only and self.templates is None:
            raise ValueError("templates_only is true, but templates names no templates file")
        return self
