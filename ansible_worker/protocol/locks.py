"""The group's host locks: the messages of the one locks topic, and the book that orders them. No I/O.

Every lock request, renewal and release of a group goes to `<prefix>/<group>/locks`. The
broker delivers the messages of one topic in one order to every worker, so every worker's
book lists the same requests in the same order. A request is granted when no request before
it that is still live wants one of its locks (and fewer than `max_concurrent` before it want
the same limited name): all of its locks at once or none, and the first to ask is the first
served, so that there is neither deadlock nor starvation. Each worker decides only its own
requests, from what it heard before the broker sent its own request back to it.

A request lives until its worker releases it, or until the group takes its job over: a
claim of another worker comes to hold the request's `task_id` (`taken_over`), which every
worker hears on the job's claim topic, the lost worker too, which is then fenced. Neither a
will nor a silence frees a lock by itself: a worker that is only slow, frozen or cut off for
less than the group's `lost_after` keeps its hosts. As a safety net for a request nobody will
ever release or take over (a release lost with its worker), a request also lapses once its
`expires_at` passes without a renewal; its worker sets that far beyond `lost_after`. A
request released or taken over never comes back (a late renewal of it is ignored). A worker
renews all of its requests in one message, and answers a `sync` (a worker that has just
started asks what is held) with one, so that a newcomer learns every live request before it
asks for its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from ansible_worker.protocol.json_objects import json_object
from ansible_worker.protocol.timestamps import format_utc, parse_utc

__all__ = ["MAX_LOCK_MESSAGE_BYTES", "LockBook", "LockMessage", "LockRequest", "lock_document", "read_lock_message"]

# A renewal lists every request of one worker; a request names at most MAX_LOCKS locks.
MAX_LOCK_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_REQUESTS = 100_000
MAX_LIMITS = 8
# Claims released or taken over, remembered so that none comes back; the oldest are forgotten first.
MAX_ENDED = 100_000

log = logging.getLogger(__name__)

LockKind = Literal["acquire", "renew", "release", "sync"]


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
    """One message of the locks topic, read; `expires` is on the reader's clock."""

    kind: LockKind
    worker_id: str
    requests: tuple[LockRequest, ...] = ()
    releases: tuple[str, ...] = ()
    expires: float = 0.0


def lock_document(
    kind: LockKind,
    worker_id: str,
    *,
    requests: Iterable[LockRequest] = (),
    releases: Iterable[str] = (),
    expires_at: datetime | None = None,
) -> dict[str, Any]:
    """The JSON object of a lock message (signed by the caller when signatures are on)."""
    document: dict[str, Any] = {"type": kind, "worker_id": worker_id}
    if kind in ("acquire", "renew"):
        document["requests"] = [request.document() for request in requests]
    if kind == "release":
        document["releases"] = list(releases)
    if expires_at is not None:
        document["expires_at"] = format_utc(expires_at, timespec="milliseconds")
    return document


def read_lock_message(
    payload: bytes,
    *,
    now: float,
    wall_now: datetime,
    verify: Callable[[Mapping[str, Any]], object] | None,
) -> LockMessage | None:
    """The lock message in `payload`, or None for anything else (logged at debug level).

    A request's worker is the message's: no worker can ask, renew or release for another.
    With `verify` (signed jobs) the message must carry a signature it accepts.
    """
    document = json_object(payload, max_bytes=MAX_LOCK_MESSAGE_BYTES)
    if document is None:
        return None
    kind, worker_id = document.get("type"), document.get("worker_id")
    if kind not in ("acquire", "renew", "release", "sync") or not isinstance(worker_id, str):
        return None
    expires = now
    if kind in ("acquire", "renew"):
        try:
            until = parse_utc(str(document.get("expires_at")))
        except ValueError:
            return None
        expires = now + (until - wall_now).total_seconds()
    if verify is not None:
        from ansible_worker.protocol.signing import SignatureRefused

        try:
            verify(document)
        except SignatureRefused as exc:
            log.debug("ignoring a lock message: %s", exc)
            return None
    requests = _requests(document.get("requests"), worker_id) if kind in ("acquire", "renew") else ()
    if requests is None:
        return None
    releases = document.get("releases") if kind == "release" else []
    if not isinstance(releases, list) or not all(isinstance(claim, str) for claim in releases):
        return None
    return LockMessage(kind, worker_id, requests, tuple(releases), expires)


def _requests(value: object, worker_id: str) -> tuple[LockRequest, ...] | None:
    if not isinstance(value, list):
        return None
    requests = []
    for item in value:
        if not isinstance(item, dict):
            return None
        claim, task_id, locks, limits = item.get("claim"), item.get("task_id"), item.get("locks"), item.get("limits")
        if not isinstance(claim, str) or not isinstance(task_id, str) or not isinstance(locks, list):
            return None
        if not all(isinstance(name, str) for name in locks):
            return None
        limits = limits if isinstance(limits, dict) else {}
        counted = tuple(
            (name, count) for name, count in limits.items() if isinstance(count, int) and not isinstance(count, bool)
        )[:MAX_LIMITS]
        requests.append(LockRequest(claim, task_id, worker_id, frozenset(locks), counted))
    return tuple(requests)


@dataclass(slots=True)
class _Held:
    request: LockRequest
    expires: float


class LockBook:
    """Every live lock request of the group, in the order the broker delivered them."""

    def __init__(self, *, max_requests: int = MAX_REQUESTS) -> None:
        # Insertion order is delivery order: a renewal never moves a request.
        self._requests: dict[str, _Held] = {}
        self._by_task: dict[str, set[str]] = {}
        # Claims that ended (released, taken over), oldest first: never live again.
        self._ended: dict[str, None] = {}
        self._max = max_requests

    def __len__(self) -> int:
        return len(self._requests)

    def hear(self, message: LockMessage, *, now: float) -> None:
        """Apply one message, in delivery order."""
        if message.kind == "release":
            for claim in message.releases:
                held = self._requests.get(claim)
                if held is not None and held.request.worker_id == message.worker_id:
                    self._end(claim)
            return
        for request in message.requests:
            if request.claim in self._ended:
                continue
            held = self._requests.get(request.claim)
            if held is not None:
                if held.request.worker_id == message.worker_id:
                    held.expires = max(held.expires, message.expires)
                continue
            if len(self._requests) >= self._max:
                log.warning("more than %d live lock requests: ignoring task %s's", self._max, request.task_id)
                continue
            self._requests[request.claim] = _Held(request, message.expires)
            self._by_task.setdefault(request.task_id, set()).add(request.claim)

    def taken_over(self, task_id: str, holder: str) -> list[LockRequest]:
        """`holder`'s claim holds `task_id` now: every other worker's request for it ends; those requests."""
        ended = [
            self._requests[claim].request
            for claim in sorted(self._by_task.get(task_id, ()))
            if self._requests[claim].request.worker_id != holder
        ]
        for request in ended:
            self._end(request.claim)
        return ended

    def blockers(self, claim: str, *, now: float) -> list[LockRequest]:
        """The live requests before `claim` that keep it from being granted; [] when it is granted.

        Errors: `KeyError` when `claim` is not (or no longer) in the book.
        """
        self._expire(now)
        mine = self._requests[claim].request
        earlier: list[LockRequest] = []
        for other_claim, held in self._requests.items():
            if other_claim == claim:
                break
            earlier.append(held.request)
        found = [other for other in earlier if not mine.locks.isdisjoint(other.locks)]
        for name, cap in mine.limits:
            sharing = [other for other in earlier if name in dict(other.limits)]
            if len(sharing) >= cap:
                found += [other for other in sharing if other not in found]
        return found

    def holds(self, claim: str, *, now: float) -> bool:
        """Whether `claim` is in the book and live."""
        self._expire(now)
        return claim in self._requests

    def _expire(self, now: float) -> None:
        for claim in [claim for claim, held in self._requests.items() if held.expires <= now]:
            log.warning("task %s: its lock request lapsed, never renewed", self._requests[claim].request.task_id)
            self._end(claim)

    def _end(self, claim: str) -> None:
        held = self._requests.pop(claim, None)
        if held is not None:
            claims = self._by_task.get(held.request.task_id, set())
            claims.discard(claim)
            if not claims:
                self._by_task.pop(held.request.task_id, None)
        self._ended[claim] = None
        if len(self._ended) > MAX_ENDED:
            del self._ended[next(iter(self._ended))]
