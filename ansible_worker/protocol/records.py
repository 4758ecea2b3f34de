"""The job record's wire format: a compressed JSON document, cut to a byte limit keeping the newest part."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

RECORD_FORMAT = "ansible-worker-record/1"
# Each try keeps this share of what the previous one kept: few tries, and a cut that stays close to the limit.
SHRINK = 0.7
MAX_TRIES = 24
# The most a reader unpacks: a record is written to fit a broker message, but anyone allowed
# to publish on its topic could send a small payload that unpacks to gigabytes.
MAX_DECODED_BYTES = 64 * 1024 * 1024
# JSON objects and arrays a reader builds at most: bytes alone do not bound memory ('{},' is
# 3 bytes and a dict of about 64). A real record of 20,000 events holds a few hundred thousand.
MAX_CONTAINERS = 2_000_000


class RecordError(ValueError):
    """A payload on a record topic that is not a readable record."""


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """A record ready to publish: the compressed bytes and what they hold."""

    payload: bytes
    events: int
    cut: bool


def record_document(
    status: dict[str, Any],
    events: list[dict[str, Any]],
    output: str,
    *,
    output_bytes: int,
    events_total: int,
    request: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole record of a job, uncut: its final status, its request, its events, and Ansible's output."""
    return {
        "format": RECORD_FORMAT,
        "task_id": status.get("task_id"),
        "status": status,
        "request": request,
        "events": events,
        "events_total": events_total,
        "output": output,
        "output_bytes": output_bytes,
        "cut": events_total > len(events) or output_bytes > len(output.encode()),
    }


def encode_record(document: dict[str, Any], limit: int) -> EncodedRecord:
    """`document` compressed, at most `limit` bytes unless even the status alone is larger.

    When it is too large, the oldest events and the oldest part of the output go first, in
    the same proportion, and the record says it was cut (`cut`, with `events` and `output`
    starting later than `events_total` and `output_bytes` imply).
    """
    payload = _compress(document)
    if len(payload) <= limit:
        return EncodedRecord(payload, len(document["events"]), bool(document.get("cut")))
    events: list[dict[str, Any]] = document["events"]
    output: str = document["output"]
    share = min(1.0, limit / len(payload)) * 0.95
    for _ in range(MAX_TRIES):
        kept_events = events[len(events) - int(len(events) * share) :] if share < 1 else events
        kept_output = _newest_lines(output, int(len(output) * share)) if share < 1 else output
        cut = {**document, "events": kept_events, "output": kept_output, "cut": True}
        payload = _compress(cut)
        if len(payload) <= limit:
            return EncodedRecord(payload, len(kept_events), True)
        share *= SHRINK
    # The status alone: whatever the limit, a record that says it was cut is worth more than none.
    bare = {**document, "events": [], "output": "", "cut": True}
    return EncodedRecord(_compress(bare), 0, True)


def decode_record(payload: bytes, *, max_bytes: int = MAX_DECODED_BYTES) -> dict[str, Any]:
    """The record document in `payload`, unpacked to at most `max_bytes`.

    Errors: `RecordError` when it is not one, or unpacks to more.
    """
    try:
        unpacker = zlib.decompressobj()
        data = unpacker.decompress(payload, max_bytes)
        if unpacker.unconsumed_tail:
            raise RecordError(f"not a job record: it unpacks to more than {max_bytes} bytes")
        # Counted in the text before parsing (braces inside strings count too: an upper bound).
        if data.count(b"{") + data.count(b"[") > MAX_CONTAINERS:
            raise RecordError(f"not a job record: more than {MAX_CONTAINERS} JSON objects and arrays")
        document = json.loads(data)
    except (zlib.error, ValueError, RecursionError) as exc:
        raise RecordError(f"not a job record: {type(exc).__name__}: {exc}"[:300]) from None
    if not isinstance(document, dict) or document.get("format") != RECORD_FORMAT:
        raise RecordError("not a job record: unknown format")
    if not isinstance(document.get("events"), list) or not isinstance(document.get("output"), str):
        raise RecordError("not a job record: events or output missing")
    if not isinstance(document.get("status"), dict):
        raise RecordError("not a job record: status missing")
    return document


def _newest_lines(text: str, size: int) -> str:
    """The last `size` characters of `text` or fewer, from the start of a line: a half line reads as garbage."""
    if size <= 0:
        return ""
    if size >= len(text):
        return text
    tail = text[-size:]
    if text[-size - 1] == "\n":
        return tail
    newline = tail.find("\n")
    return tail[newline + 1 :] if newline >= 0 else ""


def _compress(document: dict[str, Any]) -> bytes:
    return zlib.compress(json.dumps(document, separators=(",", ":"), default=str).encode(), 6)
