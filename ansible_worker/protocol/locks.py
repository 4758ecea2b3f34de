"""The group's host locks: the book that orders the requests of the one locks topic. No I/O.

Every lock request, renewal and release of a group goes to `<prefix>/<group>/locks`
(`lock_messages`). The broker delivers the messages of one topic in one order to every
worker, so every worker's book lists the same requests in the same order. A request is
granted when no request before it that is still live wants one of its locks (and fewer than
`max_concurrent` before it want the same limited name): all of its locks at once or none, and
the first to ask is the first served, so that there is neither deadlock nor starvation. Each
worker decides only its own requests, from what it heard before the broker sent its own
request back to it.

A request lives until its worker releases it, or until the group takes its job over: a
claim of another worker comes to hold the request's `task_id` (`taken_over`), which every
worker hears on the job's claim topic, the lost worker too, which is then fenced. Neither a
will nor a silence frees a lock by itself: a worker that is only slow, frozen or cut off for
less than the group's `lost_after` keeps its hosts. As a safety net for a request nobody will
ever release or take over (a release lost with its worker), a request also lapses when it has
not been heard for the `lifetime` its last message stated, counted on the clock the caller
passes as `now` (the worker's own monotonic clock, while it is connected); its worker sets
that far beyond `lost_after`. A request released or taken over never comes back (a late
renewal of it is ignored). A signed message renews a request only when it was signed after
the last one that did: a captured renewal replayed renews nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from ansible_worker.protocol.lock_messages import LockMessage, LockRequest

__all__ = ["LockBook"]

MAX_REQUESTS = 100_000
# Claims released or taken over, remembered so that none comes back; the oldest are forgotten first.
MAX_ENDED = 100_000

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Held:
    request: LockRequest
    # When it was last heard (the caller's clock), for how long that holds, and when its signed message was signed.
    heard: float
    lifetime: float
    issued: datetime | None = None


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
                if held.request.worker_id == message.worker_id and _newer(message.issued, held.issued):
                    held.heard, held.lifetime = now, message.lifetime
                    held.issued = message.issued or held.issued
                continue
            if len(self._requests) >= self._max:
                log.warning("more than %d live lock requests: ignoring task %s's", self._max, request.task_id)
                continue
            self._requests[request.claim] = _Held(request, now, message.lifetime, message.issued)
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
        for claim in [claim for claim, held in self._requests.items() if now - held.heard >= held.lifetime]:
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


def _newer(issued: datetime | None, before: datetime | None) -> bool:
    """Whether a message signed at `issued` may renew a request last renewed by one signed at `before`."""
    return issued is None or before is None or issued > before
