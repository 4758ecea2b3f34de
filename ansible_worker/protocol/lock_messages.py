"""The messages of the group's locks topic: how a worker writes and reads them, and cuts a renewal to fit. No I/O.

Every message names its worker; `acquire` and `renew` carry requests and the `lifetime` they
live, unheard, from when a reader hears them (on the reader's own monotonic clock: no wall
clock is compared with another's). A `sync` carries a `round`, and a `renew` the rounds it
`answers`, so that a worker that asks the group what it holds knows which renewals came after
its question. A reader takes nothing it cannot bound: ids are names of at most 128 characters
(as `task_id`s are), a message at most `MAX_LOCK_MESSAGE_BYTES`. A request names at most
`MAX_LOCKS` locks and takes at most `MAX_REQUEST_BYTES`, so that it always fits one message;
a renewal of many requests is cut into parts that each fit (`renewal_parts`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from ansible_worker.protocol.json_objects import json_object
from ansible_worker.protocol.request_fields import MAX_LOCKS
from ansible_worker.protocol.timestamps import format_utc, parse_utc
from ansible_worker.protocol.topics import is_task_id

__all__ = [
    "MAX_LOCKS",
    "MAX_LOCK_MESSAGE_BYTES",
    "MAX_REQUEST_BYTES",
    "LockKind",
    "LockMessage",
    "LockRequest",
    "lock_document",
    "read_lock_message",
    "release_parts",
    "renewal_parts",
    "request_bytes",
]

# What a worker reads of one lock message; a renewal is cut into parts of at most
# PART_BYTES (room left for the envelope, the answers and a signature).
MAX_LOCK_MESSAGE_BYTES = 4 * 1024 * 1024
PART_BYTES = MAX_LOCK_MESSAGE_BYTES - 256 * 1024
# One request, alone in a message: MAX_LOCKS names of 256 ASCII characters take about 1.3 MB.
MAX_REQUEST_BYTES = 2 * 1024 * 1024
MAX_LIMITS = 8
# The rounds one renewal answers; claims one release names.
MAX_ANSWERS = 64
MAX_RELEASES = 10_000
# The longest lifetime a request may state: ten times the longest worker.lost_after.
MAX_LIFETIME = 10 * 86_400.0

log = logging.getLogger(__name__)

LockKind = Literal["acquire", "renew", "release", "sync"]
_KINDS = ("acquire", "renew", "release", "sync")


@dataclass(frozen=True, slots=True)
class LockRequest:
    """One job's request for its locks; `limits` caps the requests before it that share a name."""

    claim: str
    task_id: str
    worker_id: str
    locks: frozenset[str]
    limits: tuple[tuple[str, int], ...] = ()

    def document(self) -> dict[str, Any]:
        """The request as it travels in an acquire or a renewal."""
        return {
            "claim": self.claim,
            "task_id": self.task_id,
            "locks": sorted(self.locks),
            "limits": dict(self.limits),
        }


@dataclass(frozen=True, slots=True)
class LockMessage:
    """One message of the locks topic, read.

    `lifetime`: seconds its requests live unheard, from when this worker heard them.
    `round`: a sync's id. `answers`: the rounds a renewal answers; None from a sender that
    does not say (it answers every sync before it). `issued`: when a signed message was
    signed, on its sender's clock (None unsigned).
    """

    kind: LockKind
    worker_id: str
    requests: tuple[LockRequest, ...] = ()
    releases: tuple[str, ...] = ()
    lifetime: float = 0.0
    round: str | None = None
    answers: tuple[str, ...] | None = None
    issued: datetime | None = None


def lock_document(
    kind: LockKind,
    worker_id: str,
    *,
    requests: Iterable[LockRequest] = (),
    releases: Iterable[str] = (),
    lifetime: float | None = None,
    round_id: str | None = None,
    answers: Iterable[str] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The JSON object of a lock message (signed by the caller when signatures are on).

    An acquire or a renewal also says when its lifetime ends on this worker's clock
    (`expires_at`), for readers that predate `lifetime`.
    """
    document: dict[str, Any] = {"type": kind, "worker_id": worker_id}
    if kind in ("acquire", "renew"):
        document["requests"] = [request.document() for request in requests]
        if lifetime is not None:
            document["lifetime"] = lifetime
            until = (now or datetime.now(UTC)) + timedelta(seconds=lifetime)
            document["expires_at"] = format_utc(until, timespec="milliseconds")
    if kind == "renew" and answers is not None:
        document["answers"] = list(answers)
    if kind == "release":
        document["releases"] = list(releases)
    if kind == "sync" and round_id is not None:
        document["round"] = round_id
    return document


def request_bytes(request: LockRequest) -> int:
    """What `request` takes in a message."""
    return len(json.dumps(request.document()))


def renewal_parts(requests: Sequence[LockRequest], *, budget: int = PART_BYTES) -> list[list[LockRequest]]:
    """`requests`, in order, cut into parts whose documents take at most `budget` bytes each; at least one part."""
    parts: list[list[LockRequest]] = [[]]
    size = 0
    for request in requests:
        cost = request_bytes(request) + 2
        if parts[-1] and size + cost > budget:
            parts.append([])
            size = 0
        parts[-1].append(request)
        size += cost
    return parts


def release_parts(claims: Sequence[str]) -> list[list[str]]:
    """`claims` cut into releases of at most `MAX_RELEASES` each."""
    return [list(claims[start : start + MAX_RELEASES]) for start in range(0, len(claims), MAX_RELEASES)]


def read_lock_message(
    payload: bytes,
    *,
    wall_now: datetime,
    verify: Callable[[Mapping[str, Any]], datetime | None] | None,
) -> LockMessage | None:
    """The lock message in `payload`, or None for anything else (logged at debug level).

    A request's worker is the message's: no worker can ask, renew or release for another.
    With `verify` (signed jobs) the message must carry a signature it accepts; it returns
    when the message was signed. `wall_now` serves only a sender that states no `lifetime`.
    """
    document = json_object(payload, max_bytes=MAX_LOCK_MESSAGE_BYTES)
    if document is None:
        return None
    kind, worker_id = document.get("type"), document.get("worker_id")
    if kind not in _KINDS or not is_task_id(worker_id):
        return None
    lifetime = _lifetime(document, wall_now) if kind in ("acquire", "renew") else 0.0
    if lifetime is None:
        return None
    issued = None
    if verify is not None:
        from ansible_worker.protocol.signing import SignatureRefused

        try:
            issued = verify(document)
        except SignatureRefused as exc:
            log.debug("ignoring a lock message: %s", exc)
            return None
    requests = _requests(document.get("requests"), worker_id) if kind in ("acquire", "renew") else ()
    releases = document.get("releases") if kind == "release" else []
    if requests is None or not isinstance(releases, list) or not all(is_task_id(claim) for claim in releases):
        return None
    round_id = document.get("round") if kind == "sync" else None
    answers = _answers(document) if kind == "renew" else None
    return LockMessage(
        kind,
        worker_id,
        requests,
        tuple(releases),
        lifetime,
        round_id if is_task_id(round_id) else None,
        answers,
        issued,
    )


def _lifetime(document: Mapping[str, Any], wall_now: datetime) -> float | None:
    """The seconds its requests live unheard; None when the message cannot say."""
    value = document.get("lifetime")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value <= 0:
            return None
        return min(float(value), MAX_LIFETIME)
    # A sender that predates `lifetime`: what is left until its `expires_at`, on this worker's clock.
    try:
        until = parse_utc(str(document.get("expires_at")))
    except ValueError:
        return None
    return min((until - wall_now).total_seconds(), MAX_LIFETIME)


def _answers(document: Mapping[str, Any]) -> tuple[str, ...] | None:
    if "answers" not in document:
        return None
    value = document["answers"]
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value[:MAX_ANSWERS] if is_task_id(item))


def _requests(value: object, worker_id: str) -> tuple[LockRequest, ...] | None:
    if not isinstance(value, list):
        return None
    requests = []
    for item in value:
        if not isinstance(item, dict):
            return None
        claim, task_id, locks, limits = item.get("claim"), item.get("task_id"), item.get("locks"), item.get("limits")
        if not is_task_id(claim) or not is_task_id(task_id) or not isinstance(locks, list):
            return None
        if not all(isinstance(name, str) for name in locks):
            return None
        limits = limits if isinstance(limits, dict) else {}
        counted = tuple(
            (name, count) for name, count in limits.items() if isinstance(count, int) and not isinstance(count, bool)
        )[:MAX_LIMITS]
        requests.append(LockRequest(claim, task_id, worker_id, frozenset(locks), counted))
    return tuple(requests)
