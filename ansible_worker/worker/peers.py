"""Which other workers of the group are alive, judged by the heartbeats in their presence messages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ansible_worker.protocol.json_objects import json_object
from ansible_worker.protocol.timestamps import parse_utc, utc_now

# As AWX does: a node is lost after two missed heartbeats; the margin absorbs clock skew.
MISSED_HEARTBEATS = 2
CLOCK_MARGIN = timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class Peer:
    """Another worker as its last presence message described it."""

    state: str
    heartbeat_at: datetime
    interval: float

    def fresh(self, now: datetime) -> bool:
        """Whether its last heartbeat is recent enough for it to be alive."""
        late = timedelta(seconds=self.interval * MISSED_HEARTBEATS) + CLOCK_MARGIN
        return now - self.heartbeat_at <= late


class PeerBook:
    """The newest presence heard from each other worker; pure, fed by the worker's message loop.

    A retained `online` presence proves nothing by itself: a worker that died while the
    broker was away never had its will published. A peer counts as online only while its
    own heartbeat time is fresh.
    """

    def __init__(self) -> None:
        self._peers: dict[str, Peer] = {}

    def hear(self, worker_id: str, payload: bytes) -> None:
        """Record one presence message; an empty payload (a cleared retained one) forgets the worker."""
        if not payload:
            self._peers.pop(worker_id, None)
            return
        peer = _parse(payload)
        if peer is not None:
            self._peers[worker_id] = peer

    def get(self, worker_id: str) -> str | None:
        """The state the worker last announced, fresh or not."""
        peer = self._peers.get(worker_id)
        return peer.state if peer is not None else None

    def online(self, now: datetime | None = None) -> list[str]:
        """The workers that say `online` with a fresh heartbeat, sorted."""
        moment = now or utc_now()
        return sorted(
            worker_id for worker_id, peer in self._peers.items() if peer.state == "online" and peer.fresh(moment)
        )


def _parse(payload: bytes) -> Peer | None:
    document = json_object(payload, max_bytes=16_384)
    if document is None:
        return None
    try:
        state, heartbeat, interval = document["state"], document["heartbeat_at"], document["heartbeat_interval"]
        if not isinstance(state, str) or not isinstance(heartbeat, str):
            return None
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval <= 3600:
            return None
        moment = parse_utc(heartbeat)
    except (ValueError, TypeError, KeyError):
        return None
    return Peer(state, moment, float(interval))
