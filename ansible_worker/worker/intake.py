"""Decide what an incoming task or cancel message is: a request to act on, one to refuse, or noise to drop."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ansible_worker.protocol.models import TASK_ID_PATTERN, CancelRequest, TaskRequest
from ansible_worker.protocol.validation import describe_errors
from ansible_worker.templates.expansion import TemplateRefused, expand_request
from ansible_worker.templates.loading import NO_TEMPLATES, Templates

if TYPE_CHECKING:
    # Imported where a check is asked for: a worker that checks no signatures never loads it.
    from ansible_worker.protocol.signing import Verified

# Checks a decoded message's signature: returns who signed it, or raises SignatureRefused.
Verify = Callable[[Mapping[str, Any]], "Verified"]

_TASK_ID = re.compile(TASK_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid job; `signed` says who signed it, and what, when signatures are checked.

    A signed job is read from what its signature covers, not from the text that arrived:
    `payload` is that, as JSON, for the worker to keep and hand back (None: unsigned, keep
    the message as it came).
    """

    request: TaskRequest
    signed: Verified | None = None
    payload: bytes | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that names a usable task_id but cannot run: answer it with a `failed` status."""

    task_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """A message with no usable task_id: nobody can be told, so it is only logged."""

    reason: str


def read_task_message(
    payload: bytes,
    *,
    max_bytes: int,
    verify: Verify | None = None,
    templates: Templates = NO_TEMPLATES,
    templates_only: bool = False,
) -> Accepted | Rejected | Dropped:
    """Classify one payload from the tasks topic. Pure: never raises on any input.

    A payload over `max_bytes` is still decoded, only so that its sender can be told why it
    was refused; the broker's own packet limit bounds that cost. With `verify`, a message
    whose signature it refuses is rejected before its fields are even looked at, and one it
    accepts is read as its signature covers it (`2` where `2.0` arrived). A message that
    names a `template` is expanded into the template's job after that (the signature covers
    the launch as sent); with `templates_only`, one that names none is rejected.
    """
    try:
        document = json.loads(payload)
    except UnicodeDecodeError:
        return Dropped("payload is not UTF-8 text")
    except (json.JSONDecodeError, RecursionError) as exc:
        return Dropped(f"invalid JSON: {exc}")
    if not isinstance(document, dict):
        return Dropped(f"payload is a JSON {_json_kind(document)}, not an object")
    task_id = document.get("task_id")
    if task_id is None:
        return Dropped("no task_id")
    if not isinstance(task_id, str):
        return Dropped(f"task_id is a JSON {_json_kind(task_id)}, not a string")
    if not _TASK_ID.fullmatch(task_id):
        return Dropped(f"task_id {task_id[:140]!r} is not 1-128 characters of A-Z a-z 0-9 . _ -")
    if len(payload) > max_bytes:
        return Rejected(task_id, f"message too large ({len(payload)} bytes, max {max_bytes})")
    signed = None
    if verify is not None:
        from ansible_worker.protocol.signing import SignatureRefused

        try:
            signed = verify(document)
        except SignatureRefused as exc:
            return Rejected(task_id, str(exc))
    kept = None
    if signed is not None:
        document, kept = signed.document, signed.payload()
        if len(kept) > max_bytes:
            # Numbers written out in full (9e15 as 9000000000000000) can make it longer.
            return Rejected(task_id, f"message too large as signed ({len(kept)} bytes, max {max_bytes})")
    try:
        expanded = expand_request(document, templates, templates_only=templates_only)
    except TemplateRefused as exc:
        return Rejected(task_id, str(exc))
    try:
        request = TaskRequest.model_validate(expanded.document)
    except ValidationError as exc:
        return Rejected(task_id, "invalid task: " + "; ".join(describe_errors(exc)))
    if expanded.secrets:
        request = request.with_secrets(expanded.secrets)
    return Accepted(request, signed, kept)


def read_cancel_message(payload: bytes, *, max_bytes: int, verify: Verify | None = None) -> CancelRequest | Dropped:
    """A cancel request: empty, or a JSON object with optional `reason` and `requested_by`.

    A payload over `max_bytes` is dropped before it is decoded. With `verify`, only a
    signed object is a request; the rest are dropped with the reason.
    """
    if len(payload) > max_bytes:
        return Dropped(f"message too large ({len(payload)} bytes, max {max_bytes})")
    if not payload.strip():
        if verify is not None:
            return Dropped("unsigned: this worker requires signed messages (security.require_signed_tasks)")
        return CancelRequest()
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return Dropped(f"invalid JSON: {exc}")
    if not isinstance(document, dict):
        return Dropped(f"payload is a JSON {_json_kind(document)}, not an object")
    if verify is not None:
        from ansible_worker.protocol.signing import SignatureRefused

        try:
            document = verify(document).document
        except SignatureRefused as exc:
            return Dropped(str(exc))
    try:
        return CancelRequest.model_validate(document)
    except ValidationError as exc:
        return Dropped("; ".join(describe_errors(exc)))


def _json_kind(value: object) -> str:
    match value:
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case None:
            return "null"
        case _:
            return "object"
