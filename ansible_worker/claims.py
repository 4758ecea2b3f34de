"""The group's shared record of which worker took which signed job, so that a replay runs nowhere.

Before a worker runs a signed job it publishes a claim on `<prefix>/<group>/tasks/<task_id>/claim`
(retained, expiring when the job's signature would expire anyway). Every worker of the group
subscribes to the claims and records them in the order the broker delivers them, which is
the same order for everyone on one broker: the first claim heard for a task_id wins, and a
worker that hears another worker's claim before its own stands back. A request for a claimed
task_id is a replay. A worker that hands a queued job back to the group first publishes a
release, so that the next worker may claim it again.

This module is pure: it records what was heard and answers questions about it.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from typing import Literal

__all__ = ["Claim", "ClaimBook", "claim_payload", "new_claim_id"]

PRUNE_EVERY = 60.0
# Claims of distinct tasks remembered at once. Far above what a group's genuine jobs reach
# within a claim's lifetime; past it, the oldest heard is forgotten first (and logged), so a
# flood of made-up claims costs bounded memory.
MAX_CLAIMS = 100_000

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Claim:
    """One claim or release as heard from the broker; `expires` is on the caller's clock."""

    worker_id: str
    claim_id: str
    state: Literal["claimed", "released"]
    expires: float


def new_claim_id() -> str:
    return secrets.token_hex(8)


def claim_payload(worker_id: str, claim_id: str, state: Literal["claimed", "released"]) -> bytes:
    return json.dumps({"state": state, "worker_id": worker_id, "claim": claim_id}).encode()


class ClaimBook:
    """What the group's claims say, task by task, until they expire."""

    def __init__(self, *, default_lifetime: float, max_claims: int = MAX_CLAIMS) -> None:
        # For a claim that arrives without an expiry (another client's, or a broker that
        # drops the property): keep it as long as a signature stays valid.
        self._default_lifetime = default_lifetime
        self._entries: dict[str, Claim] = {}
        self._next_prune = 0.0
        self._max_claims = max_claims
        self._evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def hear(self, task_id: str, payload: bytes, *, now: float, expiry: int | None) -> Claim | None:
        """Record one message from a claim topic, in delivery order, and return it as a claim.

        Returns None, recording nothing, for a payload that is not a claim; an empty payload
        (a cleared retained claim) forgets the task. Whether the claim now holds the task is
        `holder`'s answer: the first live claim does.
        """
        self._prune(now)
        if not payload:
            self._entries.pop(task_id, None)
            return None
        claim = _parse(payload, expires=now + (expiry if expiry else self._default_lifetime))
        if claim is None:
            return None
        current = self._live(task_id, now)
        if current is None and len(self._entries) >= self._max_claims:
            self._evict_oldest()
        if claim.state == "released" or current is None or current.state == "released":
            self._entries[task_id] = claim
        elif current.claim_id == claim.claim_id:
            # The same claim again (a retained copy after a reconnect): it may carry a new expiry.
            self._entries[task_id] = claim
        return claim

    def holder(self, task_id: str, *, now: float) -> Claim | None:
        """The live claim on `task_id`, if a worker of the group holds it."""
        claim = self._live(task_id, now)
        return claim if claim is not None and claim.state == "claimed" else None

    def released(self, task_id: str, *, now: float) -> bool:
        """Whether a worker handed `task_id` back to the group and nobody has claimed it since."""
        claim = self._live(task_id, now)
        return claim is not None and claim.state == "released"

    def _live(self, task_id: str, now: float) -> Claim | None:
        claim = self._entries.get(task_id)
        if claim is not None and claim.expires <= now:
            del self._entries[task_id]
            return None
        return claim

    def _evict_oldest(self) -> None:
        # Insertion order: the first entry is the claim heard longest ago (expired ones are
        # pruned every PRUNE_EVERY seconds anyway).
        del self._entries[next(iter(self._entries))]
        self._evicted += 1
        if self._evicted == 1 or self._evicted % 10_000 == 0:
            log.warning(
                "more than %d live claims: forgetting the oldest (%d so far); a flood of claim messages?",
                self._max_claims,
                self._evicted,
            )

    def _prune(self, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        for task_id in [task_id for task_id, claim in self._entries.items() if claim.expires <= now]:
            del self._entries[task_id]


def _parse(payload: bytes, *, expires: float) -> Claim | None:
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    state, worker_id, claim_id = document.get("state"), document.get("worker_id"), document.get("claim")
    if state not in ("claimed", "released") or not isinstance(worker_id, str) or not isinstance(claim_id, str):
        return None
    return Claim(worker_id, claim_id, state, expires)
