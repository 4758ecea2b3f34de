"""The protocol's one way to read and write moments: UTC, ISO 8601, with a `Z`."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current moment, aware, in UTC."""
    return datetime.now(UTC)


def format_utc(moment: datetime, *, timespec: str = "auto") -> str:
    """`moment` as ISO 8601 in UTC with a `Z`, e.g. `2026-01-02T03:04:05.678Z` for `milliseconds`."""
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def from_epoch(seconds: float) -> str:
    """A POSIX timestamp, as `format_utc` writes it."""
    return format_utc(datetime.fromtimestamp(seconds, UTC))


def parse_utc(text: str) -> datetime:
    """Read what `format_utc` wrote (or any ISO 8601 moment with an offset); ValueError otherwise.

    A moment without an offset is refused: a message's clock must say which it is.
    """
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return moment
