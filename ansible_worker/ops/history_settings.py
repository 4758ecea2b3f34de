"""The `history` section's settings: where the group's finished jobs are stored, and for how long."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_DURATION = r"^\s*(\d+)\s*([smhdw])\s*$"
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(text: str) -> int:
    """`90d`, `12h`, `2w`, `30m` or `45s` as seconds. Errors: `ValueError` naming the accepted forms."""
    match = re.match(_DURATION, text)
    if match is None:
        raise ValueError("must be a whole number and a unit: s, m, h, d or w (e.g. 90d)")
    return int(match.group(1)) * _DURATION_SECONDS[match.group(2)]


def _check_duration(value: str | None) -> str | None:
    if value is not None and duration_seconds(value) <= 0:
        raise ValueError("must be longer than 0")
    return value


def _check_history_url(value: str | None) -> str | None:
    if value is None:
        return None
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in ("sqlite", "postgresql", "postgres", "postgresql+psycopg"):
        raise ValueError("must be sqlite:///PATH or postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE")
    if scheme == "sqlite" and value in ("sqlite://", "sqlite:///", "sqlite:///:memory:"):
        raise ValueError("must name a file: sqlite:///relative/path.db or sqlite:////absolute/path.db")
    return value


class HistorySettings(BaseModel):
    """The `history` section: the database that holds the group's finished jobs, and how long it keeps them."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    # None: no store; the controller and the dashboard read the broker's retained messages.
    url: Annotated[str | None, AfterValidator(_check_history_url)] = Field(
        None, description="sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DATABASE"
    )
    # None: keep every job. Removed in the background, in batches of `purge_batch`.
    keep: Annotated[str | None, AfterValidator(_check_duration)] = Field(
        None, description="how long the store keeps a job after it began, e.g. 90d"
    )
    purge_every: float = Field(600, gt=0, le=86_400, description="seconds between two clean-ups")
    purge_batch: int = Field(1000, ge=1, le=100_000, description="jobs removed per transaction")

    @property
    def keep_seconds(self) -> int | None:
        """`keep` in seconds, or None to keep every job."""
        return None if self.keep is None else duration_seconds(self.keep)
