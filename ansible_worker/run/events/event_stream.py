"""One job's live event stream: its numbering, its rate limit, and what it dropped."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio


@dataclass
class EventStream:
    """One job's live events: numbering, a token bucket, and what was dropped.

    The bucket allows `rate` events a second on average and bursts of twice that, so a
    playbook that floods events is thinned out instead of slowing Ansible down.
    """

    topic: str
    rate: float
    last_seq: int = 0
    dropped: int = 0
    pending: int = 0
    _tokens: float = field(init=False)
    _refilled_at: float = field(init=False)
    _flushed: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self._tokens = 2 * self.rate
        self._refilled_at = trio.current_time()
        self._flushed.set()

    def take_token(self) -> bool:
        """Whether the rate allows one more event now (and spend it)."""
        now = trio.current_time()
        self._tokens = min(2 * self.rate, self._tokens + (now - self._refilled_at) * self.rate)
        self._refilled_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def wait_flushed(self) -> None:
        """Wait until every event offered so far has left through the publisher.

        Cancellation: nothing changes; the events are still on their way.
        """
        await self._flushed.wait()

    def note_enqueued(self) -> None:
        """One event is queued for the publisher."""
        self.pending += 1
        if self._flushed.is_set():
            self._flushed = trio.Event()

    def note_published(self) -> None:
        """One queued event has left (or was given up)."""
        self.pending -= 1
        if self.pending == 0:
            self._flushed.set()
