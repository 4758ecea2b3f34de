"""Which workers of the group are lost: silent for longer than `lost_after` on this worker's own clock. Pure.

A sign of life is a presence saying `online` or `draining` (with signatures, signed by a
trusted worker key and issued after the last one accepted from that worker, so that a replay
of an old heartbeat, or the retained one heard again, is none), heard at a moment of this
worker's monotonic clock. No wall clock is compared with another's: a worker whose clock is
off is judged as any other. Silence counts from the last sign of life, or, for a worker known
only from its claims, from when this worker first knew it. The will (`offline`,
`"stopped": "lost"`) is not one, and neither is a clean `offline`: whatever a presence says,
a worker is lost only when nothing has been heard from it for `lost_after`.

The clock only counts while this worker is connected. At each (re)connection every worker's
silence starts again from that moment: after a broker restart every worker reconnects and
announces itself again, and after this worker's own outage it has heard nothing for reasons
of its own. A gap between two `tick`s longer than `lost_after / 2` (at least 2.5 s; this process frozen:
SIGSTOP, a suspended VM) counts as a reconnection too, since the messages that arrived
meanwhile have not been read yet. So a broker restart, or an observer's outage or freeze,
reaps nobody.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ansible_worker.ops.config import MIN_FREEZE
from ansible_worker.protocol.json_objects import json_object

if TYPE_CHECKING:
    from ansible_worker.protocol.signing import Verified

__all__ = ["WILL_EXPIRY", "Liveness", "PeerSeen", "PresenceHeard", "read_presence", "rendezvous", "will_age"]

# A presence is a few hundred bytes, signed; anything far larger is not one.
MAX_PRESENCE_BYTES = 16_384

# Workers remembered at once: far above a group's size; past it, the one heard longest ago goes.
MAX_WORKERS = 10_000
# A worker's will carries this message expiry (ten years): what the broker says is left of it
# tells how long ago the broker published it, on the broker's own clock.
WILL_EXPIRY = 10 * 365 * 86_400


@dataclass(frozen=True, slots=True)
class PeerSeen:
    """What this worker knows of another: its last sign of life (monotonic and wall clock), how it last stopped.

    `last_issued` is the `issued_at` of the last signed presence taken as a sign of life;
    `known_at` when this worker first knew of it (monotonic); `will_aged` whether its last word
    is a will the broker published more than `lost_after` ago.
    """

    last_sign: float | None
    last_heard_at: datetime | None
    stopped: str | None
    last_issued: datetime | None = None
    known_at: float | None = None
    will_aged: bool = False


@dataclass(frozen=True, slots=True)
class PresenceHeard:
    """What a presence message says of its worker's life: `alive` (online or draining), and how it stopped.

    `issued` is when its worker signed it (signed presences only), on that worker's clock.
    """

    alive: bool
    stopped: str | None
    issued: datetime | None = None


def read_presence(
    payload: bytes, *, verify: Callable[[Mapping[str, Any]], Verified | None] | None
) -> PresenceHeard | None:
    """The sign of life in one presence message, or None for one that says nothing (unreadable, unsigned).

    With `verify` (signed jobs), only a presence it accepts is a sign of life; one it refuses
    (a forgery, an unsigned message) counts as nothing. An empty payload says nothing either.
    """
    document = json_object(payload, max_bytes=MAX_PRESENCE_BYTES)
    if document is None:
        return None
    state, stopped = document.get("state"), document.get("stopped")
    if state not in ("online", "draining", "offline"):
        return None
    issued = None
    if verify is not None:
        from ansible_worker.protocol.signing import SignatureRefused

        try:
            verified = verify(document)
        except SignatureRefused:
            return None
        issued = verified.issued_at if verified is not None else None
    return PresenceHeard(
        state != "offline", stopped if isinstance(stopped, str) and state == "offline" else None, issued
    )


class Liveness:
    """The last sign of life of each worker of the group, and which of them are lost.

    `own_id` is this worker: never lost to itself. Workers known only from their claims are
    remembered through `know`, so that one never heard at all is judged as well.
    """

    def __init__(self, *, own_id: str, lost_after: float, max_workers: int = MAX_WORKERS) -> None:
        self.own_id = own_id
        self.lost_after = lost_after
        # A gap between ticks longer than this is this worker's own freeze; never so short that
        # the ticks' own lateness under load counts as one.
        self.freeze_after = max(lost_after / 2, MIN_FREEZE)
        self._max_workers = max_workers
        self._seen: dict[str, PeerSeen] = {}
        self._since: float | None = None
        self._last_tick: float | None = None

    @property
    def connected(self) -> bool:
        """Whether the clock counts now."""
        return self._since is not None

    def connected_at(self, now: float) -> None:
        """This worker (re)connected at `now`: every worker's silence counts from here."""
        self._since = now
        self._last_tick = now

    def disconnected(self) -> None:
        """This worker lost the broker: nobody's silence counts until it reconnects."""
        self._since = None

    def tick(self, now: float) -> None:
        """Called often (every second or so); a long gap since the last call is this worker's own freeze."""
        if self._last_tick is not None and now - self._last_tick > self.freeze_after and self._since is not None:
            self._since = now
        self._last_tick = now

    def heard(
        self,
        worker_id: str,
        *,
        alive: bool,
        stopped: str | None,
        now: float,
        wall: datetime,
        issued: datetime | None = None,
        will_age: float | None = None,
    ) -> bool:
        """A presence of `worker_id`: a sign of life if `alive`, else (offline) only how it stopped.

        A signed one (`issued`) is a sign of life only when issued after the last one taken
        as such since its last `offline`: the same heartbeat heard again, or an older one
        replayed, changes nothing. `will_age`: how long ago the broker published the will
        this is, if the broker says. Returns whether it was a sign of life.
        """
        if worker_id == self.own_id:
            return False
        before = self._seen.get(worker_id)
        last_issued = before.last_issued if before is not None else None
        known_at = before.known_at if before is not None else now
        if alive and not (issued is not None and last_issued is not None and issued <= last_issued):
            self._seen.pop(worker_id, None)
            self._remember(worker_id, PeerSeen(now, wall, None, issued or last_issued, known_at))
            return True
        if alive:
            return False
        self._seen.pop(worker_id, None)
        last_sign = before.last_sign if before is not None else None
        last_heard_at = before.last_heard_at if before is not None else None
        # Offline: its next process (whose clock may have been set back meanwhile) starts afresh.
        aged = stopped == "lost" and will_age is not None and will_age > self.lost_after
        self._remember(worker_id, PeerSeen(last_sign, last_heard_at, stopped, None, known_at, aged))
        return False

    def know(self, worker_id: str, now: float) -> None:
        """`worker_id` holds something in the group (a claim) at `now`: judge it even if it was never heard.

        Its silence counts from `now` at the earliest: this worker cannot have heard from it before it knew it.
        """
        if worker_id != self.own_id and worker_id not in self._seen:
            self._remember(worker_id, PeerSeen(None, None, None, None, now))

    def seen(self, worker_id: str) -> PeerSeen | None:
        """What is known of `worker_id`, if anything."""
        return self._seen.get(worker_id)

    def silence(self, worker_id: str, now: float) -> float | None:
        """How long `worker_id` has been silent on the counting clock; None while the clock does not count."""
        if self._since is None:
            return None
        if worker_id == self.own_id:
            return 0.0
        seen = self._seen.get(worker_id)
        last = self._since
        if seen is not None:
            for moment in (seen.last_sign, seen.known_at):
                if moment is not None:
                    last = max(last, moment)
        return max(0.0, now - last)

    def is_lost(self, worker_id: str, now: float) -> bool:
        """Whether `worker_id` has been silent for longer than `lost_after` while this worker was connected."""
        silence = self.silence(worker_id, now)
        return silence is not None and silence > self.lost_after

    def lost(self, now: float) -> list[str]:
        """Every known worker that is lost now, sorted."""
        return sorted(worker_id for worker_id in self._seen if self.is_lost(worker_id, now))

    def not_gone(self, now: float) -> list[str]:
        """Every other known worker neither lost now nor stopped cleanly, sorted.

        A will is neither, unless the broker published it more than `lost_after` ago: then
        the worker has been away that long, as a lost one has.
        """
        return sorted(
            worker_id
            for worker_id, seen in self._seen.items()
            if seen.stopped != "clean" and not seen.will_aged and not self.is_lost(worker_id, now)
        )

    def alive(self, now: float) -> list[str]:
        """This worker and every other heard alive within `lost_after` and whose last word was not offline, sorted."""
        found = {self.own_id}
        for worker_id, seen in self._seen.items():
            if seen.stopped is None and seen.last_sign is not None and not self.is_lost(worker_id, now):
                found.add(worker_id)
        return sorted(found)

    def _remember(self, worker_id: str, seen: PeerSeen) -> None:
        if len(self._seen) >= self._max_workers:
            del self._seen[next(iter(self._seen))]
        self._seen[worker_id] = seen


def rendezvous(task_id: str, workers: Iterable[str]) -> list[str]:
    """`workers` in the order in which they should take `task_id` over: the same order on every worker."""

    def weight(worker_id: str) -> bytes:
        return hashlib.sha256(f"{worker_id}\0{task_id}".encode()).digest()

    return sorted(set(workers), key=lambda worker_id: (weight(worker_id), worker_id), reverse=True)


def will_age(expiry: int | None) -> float | None:
    """How long ago the broker published a will with `expiry` seconds of message expiry left; None if unsaid."""
    if expiry is None or not 0 <= expiry <= WILL_EXPIRY:
        return None
    return float(WILL_EXPIRY - expiry)
