"""Read the group's messages into rows for the store, refusing anything that is not what it claims to be.

Pure: no I/O. Every check here stands between the network and a database shared by the whole
group: a status must name the job of its topic, a record must be that job's record (its
`task_id` and its status's both), and every text that lands in an indexed column is bounded,
valid UTF-8 and free of NUL (PostgreSQL refuses NUL in text; one refused row would fail the
whole batch around it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ansible_worker.protocol.records import RecordError, decode_record
from ansible_worker.protocol.timestamps import parse_utc
from ansible_worker.protocol.topics import Topics, is_task_id

STATES = {"queued": 0, "running": 1, "success": 2, "failed": 2, "cancelled": 2, "timeout": 2}
TERMINAL_RANK = 2
# A status is a few kilobytes; `output` (set_stats data) may make it larger, not this large.
MAX_STATUS_BYTES = 1024 * 1024
# A record is at most what a broker message can carry; the store keeps it as it came.
MAX_RECORD_BYTES = 268_435_455
MAX_PRESENCE_BYTES = 64 * 1024
MAX_PLAYBOOK_CHARS = 4096
MAX_WORKER_ID_CHARS = 256
MAX_HOST_CHARS = 255
# Hosts kept per job: an inventory of thousands is real, an unbounded list from a message is not.
MAX_HOSTS = 10_000


class Malformed(ValueError):
    """A message the store must not keep; the text says why, for the log."""


@dataclass(frozen=True, slots=True)
class StatusRow:
    """A job's status as the store keeps it: the filtered columns and the status itself."""

    task_id: str
    state: str
    rank: int
    playbook: str | None
    worker_id: str | None
    began_at: float | None
    completed_at: float | None
    status: str


@dataclass(frozen=True, slots=True)
class RecordRow:
    """A finished job's record as it was published, its final status, and the hosts it ran on."""

    task_id: str
    payload: bytes
    status: StatusRow
    hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PresenceRow:
    """A worker's newest presence message."""

    worker_id: str
    presence: str


Row = StatusRow | RecordRow | PresenceRow


def read_message(topics: Topics, topic: str, payload: bytes) -> Row | None:
    """The row that a message on one of the group's topics stands for.

    None for a message the store has no use for: an empty payload (a cleared retained
    message: history keeps the job), a live-only refusal, or a topic of no interest.

    Errors: `Malformed` saying why the message cannot be kept.
    """
    if not payload:
        return None
    if (task_id := topics.task_id_of_status(topic)) is not None:
        return read_status(task_id, payload)
    if (task_id := topics.task_id_of_record(topic)) is not None:
        return read_record(task_id, payload)
    if topic.startswith(topics.workers_subscription[:-1]):
        return read_presence(topic.rsplit("/", 1)[-1], payload)
    return None


def read_status(task_id: str, payload: bytes) -> StatusRow | None:
    """The status on job `task_id`'s status topic; None for a live-only refusal. Errors: `Malformed`."""
    if len(payload) > MAX_STATUS_BYTES:
        raise Malformed(f"status of {len(payload)} bytes, more than {MAX_STATUS_BYTES}")
    status = _json_object(payload, "status")
    if status.get("refused") is True:
        # Published without retain for a message that never became a job: nothing to keep.
        return None
    return status_row(task_id, status, payload.decode())


def status_row(task_id: str, status: dict[str, Any], text: str) -> StatusRow:
    """The row of `status`, which must be job `task_id`'s. Errors: `Malformed`."""
    if status.get("task_id") != task_id:
        raise Malformed(f"status names task_id {_shown(status.get('task_id'))}, not {task_id} of its topic")
    state = status.get("state")
    if not isinstance(state, str) or state not in STATES:
        raise Malformed(f"status has no valid state: {_shown(state)}")
    created, started = _moment(status, "created_at"), _moment(status, "started_at")
    completed = _moment(status, "completed_at")
    return StatusRow(
        task_id=task_id,
        state=state,
        rank=STATES[state],
        playbook=_text(status, "playbook", MAX_PLAYBOOK_CHARS),
        worker_id=_text(status, "worker_id", MAX_WORKER_ID_CHARS),
        began_at=created if created is not None else started if started is not None else completed,
        completed_at=completed,
        status=text,
    )


def read_record(task_id: str, payload: bytes) -> RecordRow:
    """The record on job `task_id`'s record topic. Errors: `Malformed`, also when it is another job's."""
    if len(payload) > MAX_RECORD_BYTES:
        raise Malformed(f"record of {len(payload)} bytes, more than {MAX_RECORD_BYTES}")
    try:
        document = decode_record(payload)
    except RecordError as exc:
        raise Malformed(str(exc)) from None
    if document.get("task_id") != task_id:
        raise Malformed(f"record names task_id {_shown(document.get('task_id'))}, not {task_id} of its topic")
    status = document["status"]
    if status.get("state") not in STATES or STATES[status["state"]] != TERMINAL_RANK:
        raise Malformed(f"record's status is not terminal: {_shown(status.get('state'))}")
    try:
        text = json.dumps(status, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError) as exc:
        raise Malformed(f"record's status cannot be stored: {exc}") from None
    return RecordRow(task_id, payload, status_row(task_id, status, text), _hosts(document["events"]))


def hosts_of_record(payload: bytes) -> tuple[str, ...]:
    """The hosts a stored record's events name; none for a record that cannot be read."""
    try:
        return _hosts(decode_record(payload)["events"])
    except RecordError:
        return ()


def read_presence(worker_id: str, payload: bytes) -> PresenceRow:
    """A worker's presence message. Errors: `Malformed`."""
    if not is_task_id(worker_id) or len(worker_id) > MAX_WORKER_ID_CHARS:
        raise Malformed("presence topic does not name a worker")
    if len(payload) > MAX_PRESENCE_BYTES:
        raise Malformed(f"presence of {len(payload)} bytes, more than {MAX_PRESENCE_BYTES}")
    _json_object(payload, "presence")
    return PresenceRow(worker_id, payload.decode())


def _hosts(events: list[Any]) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for event in events:
        host = event.get("host") if isinstance(event, dict) else None
        if isinstance(host, str) and host and len(host) <= MAX_HOST_CHARS and _storable(host):
            found[host] = None
            if len(found) >= MAX_HOSTS:
                break
    return tuple(found)


def _json_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        # Strict UTF-8 first: the store keeps the text as it came.
        data = json.loads(payload.decode())
    except UnicodeDecodeError:
        raise Malformed(f"{what} is not UTF-8") from None
    except RecursionError:
        raise Malformed(f"{what} is nested too deeply") from None
    except ValueError as exc:
        raise Malformed(f"{what} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Malformed(f"{what} is not a JSON object")
    return data


def _moment(status: dict[str, Any], key: str) -> float | None:
    value = status.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise Malformed(f"{key} is not a time: {_shown(value)}")
    try:
        return parse_utc(value).timestamp()
    except (ValueError, OverflowError):
        raise Malformed(f"{key} is not a UTC time: {_shown(value)}") from None


def _text(status: dict[str, Any], key: str, limit: int) -> str | None:
    value = status.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Malformed(f"{key} is not a string: {_shown(value)}")
    if len(value) > limit or not _storable(value):
        raise Malformed(f"{key} is longer than {limit} characters, or holds NUL or an unpaired surrogate")
    return value


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
