"""The group's JSON: read a message as a job's record; write only strict JSON."""

from __future__ import annotations

import math
from typing import Any

from ansible_worker.controller.errors import ClientError
from ansible_worker.protocol.records import RecordError, decode_record


def job_record(topic: str, task_id: str, payload: bytes) -> dict[str, Any] | None:
    """The record of job `task_id` retained on `topic`, or None for an empty payload (no record).

    Errors: `ClientError` when the payload is not a readable record, or is not this job's:
    its `task_id` and its status's must both be `task_id`.
    """
    if not payload:
        return None
    try:
        document = decode_record(payload)
    except RecordError as exc:
        raise ClientError(f"{topic}: {exc}") from None
    # A record names its job: one retained under another job's topic is not this job's.
    if document["status"].get("task_id") != task_id:
        raise ClientError(f"{topic}: not a job record of {task_id}: it is the record of another job")
    # Both names, since readers name what they write by one or the other.
    if document.get("task_id") != task_id:
        named = str(document.get("task_id"))[:200]
        raise ClientError(f"{topic}: not a job record of {task_id}: its task ids disagree ({named!r})")
    return document


def finite(value: Any) -> Any:
    """`value` with non-finite floats replaced by None, so it encodes as strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value
