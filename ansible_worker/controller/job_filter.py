"""Pick the group's jobs from their statuses by state, playbook and age, newest first; read the times they carry."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

STATES = frozenset({"queued", "running", "success", "failed", "cancelled", "timeout"})
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_EPOCH = datetime.min.replace(tzinfo=UTC)


def parse_time(value: object) -> datetime | None:
    """The moment an ISO 8601 string names (a trailing `Z` allowed), or None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`--since`: an age (`90s`, `15m`, `2h`, `7d`, `1w`) or an ISO 8601 time (UTC unless it says).

    Errors: `ValueError` naming what it accepts.
    """
    match = _AGO.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        try:
            return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
        except OverflowError:
            raise ValueError(f"--since {text[:40]!r}: an age that reaches before year 1") from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: give an age like 30m, 2h or 7d, or a time like 2026-05-01T12:00") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_states(text: str | None) -> frozenset[str] | None:
    """`--state`: one state or a comma-separated list. Errors: `ValueError` naming the valid states."""
    if text is None:
        return None
    wanted = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(wanted - STATES)
    if unknown:
        raise ValueError(f"--state {', '.join(unknown)}: not a state (one of {', '.join(sorted(STATES))})")
    return wanted


def job_time(status: dict[str, Any]) -> datetime | None:
    """When the job began, as far as its status says: created, else started."""
    return parse_time(status.get("created_at")) or parse_time(status.get("started_at"))


def select_jobs(
    statuses: Iterable[dict[str, Any]],
    *,
    state: str | None = None,
    playbook: str | None = None,
    since: datetime | None = None,
) -> list[dict[str, Any]]:
    """The statuses that match every filter given, newest first (then by task id).

    Errors: `ValueError` for an unknown state.
    """
    states = parse_states(state)
    chosen = []
    for status in statuses:
        if not isinstance(status.get("task_id"), str) or status.get("refused"):
            continue
        if states is not None and status.get("state") not in states:
            continue
        name = status.get("playbook")
        if playbook is not None and not (name == playbook or (isinstance(name, str) and fnmatchcase(name, playbook))):
            continue
        began = job_time(status)
        if since is not None and (began is None or began < since):
            continue
        chosen.append(status)
    chosen.sort(key=lambda status: status["task_id"])
    chosen.sort(key=lambda status: job_time(status) or _EPOCH, reverse=True)
    return chosen
