"""This worker's recent releases of lock requests: which the broker has not taken yet, which to say again. Pure.

A release is published once when its job ends, bounded in time. One that did not go out (no
link, the broker slow) is sent again until one does; and every release of the last `keep`
seconds (a request's lifetime: after that it has lapsed everywhere) is said again when another
worker syncs, since a worker whose link was down missed them.
"""

from __future__ import annotations

__all__ = ["Releases"]

# Releases remembered at once; past it, the oldest is forgotten first (it lapses unrenewed).
MAX_KEPT = 10_000


class Releases:
    """This worker's recent releases, by claim, with when each was made (monotonic clock)."""

    def __init__(self, *, keep: float, max_kept: int = MAX_KEPT) -> None:
        self.keep = keep
        self._max = max_kept
        self._made: dict[str, float] = {}
        self.unsent: dict[str, None] = {}

    def add(self, claim: str, *, now: float) -> None:
        """`claim` is given back at `now`; it is unsent until `sent`."""
        self._made.pop(claim, None)
        self._made[claim] = now
        self.unsent[claim] = None
        while len(self._made) > self._max:
            oldest = next(iter(self._made))
            del self._made[oldest]
            self.unsent.pop(oldest, None)

    def sent(self, claims: list[str]) -> None:
        """The broker took these releases."""
        for claim in claims:
            self.unsent.pop(claim, None)

    def to_send(self, *, now: float, all_recent: bool) -> list[str]:
        """The releases to publish now: those unsent, or, with `all_recent`, every one of the last `keep` seconds."""
        while self._made and now - next(iter(self._made.values())) > self.keep:
            oldest = next(iter(self._made))
            del self._made[oldest]
            self.unsent.pop(oldest, None)
        return list(self._made) if all_recent else list(self.unsent)
