"""Whether this worker has heard what the group holds on its current link: its sync rounds, and others'. Pure.

On each link, before it grants anything, a worker asks the group what it holds: a `sync`
message with a fresh `round`. Every other worker answers with a renewal of all its requests
that names the round (`answers`): its requests made before the question are all in that
renewal or heard before it. The round is complete once the sync came back and every worker
the caller names (those that may hold requests: neither lost nor stopped cleanly) has
answered. A renewal that names no rounds at all comes from a worker that predates rounds; it
answers if it came after the sync.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ansible_worker.protocol.claims import new_claim_id
from ansible_worker.protocol.lock_messages import MAX_ANSWERS

__all__ = ["LockSync", "SyncRound"]


@dataclass(slots=True)
class SyncRound:
    """One question to the group, asked on link number `link`."""

    link: int
    id: str
    echoed: bool = False
    answered: set[str] = field(default_factory=set)


class LockSync:
    """This worker's current round, the link whose round is complete, and the others' rounds it has yet to answer."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.round: SyncRound | None = None
        # The link whose round is complete: 0 before the first.
        self.synced_on = 0
        self._asked: list[str] = []
        self.asked_any = False

    def begin(self, link: int) -> SyncRound:
        """A new round for link number `link` (the one before it is given up)."""
        self.round = SyncRound(link, new_claim_id())
        return self.round

    def heard_own(self, round_id: str | None) -> None:
        """This worker's own sync came back."""
        if self.round is not None and round_id == self.round.id:
            self.round.echoed = True

    def heard_renewal(self, worker_id: str, answers: tuple[str, ...] | None) -> None:
        """Another worker's renewal: an answer when it names the current round (or any round, from an older worker)."""
        current = self.round
        if current is None or worker_id == self.worker_id:
            return
        answers_it = current.id in answers if answers is not None else current.echoed
        if answers_it:
            current.answered.add(worker_id)

    def missing(self, peers: Iterable[str]) -> list[str]:
        """Which of `peers` have not answered the current round (all of them when there is none)."""
        answered = self.round.answered if self.round is not None else set()
        return sorted(set(peers) - answered - {self.worker_id})

    def complete(self, peers: Iterable[str]) -> bool:
        """Whether the current round came back and every one of `peers` answered it."""
        return self.round is not None and self.round.echoed and not self.missing(peers)

    def finish(self) -> None:
        """The current round is complete: its link is synced."""
        if self.round is not None:
            self.synced_on = self.round.link
            self.round = None

    def asked(self, round_id: str | None) -> None:
        """Another worker's sync: the next renewal answers it (a sync without a round is answered as well)."""
        self.asked_any = True
        if round_id is not None and round_id not in self._asked:
            self._asked.append(round_id)
            del self._asked[:-MAX_ANSWERS]

    def take_asked(self) -> tuple[list[str], bool]:
        """The rounds to answer now, and whether any sync was heard since the last take."""
        taken, any_taken = self._asked, self.asked_any
        self._asked, self.asked_any = [], False
        return taken, any_taken

    def give_back(self, rounds: list[str], any_asked: bool) -> None:
        """An answer that did not go out: it is owed still."""
        for round_id in rounds:
            self.asked(round_id)
        self.asked_any = self.asked_any or any_asked
