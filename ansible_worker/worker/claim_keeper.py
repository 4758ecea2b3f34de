"""Keep this worker's claims alive: renewed every half lifetime while jobs are held, and once when each ends."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import trio

from ansible_worker.worker.group_claims import GroupClaims

log = logging.getLogger(__name__)

# A renewal is one publish; past this it is given up (the claim holds for its first lifetime).
RENEWAL_TIMEOUT = 5.0


class ClaimKeeper:
    """Publishes this worker's claims again, one at a time; the job table says which and when.

    The renewal channel is bounded by the jobs that end and the half-lifetime rounds, each
    of which the renewal task drains.
    """

    def __init__(self, claims: GroupClaims) -> None:
        self.claims = claims
        self._send, self._receive = trio.open_memory_channel[tuple[str, str]](math.inf)

    def renew(self, task_id: str, claim_id: str) -> None:
        """Publish the claim `claim_id` on `task_id` again soon, so it lasts a full lifetime from then."""
        self._send.send_nowait((task_id, claim_id))

    async def serve_renewals(self) -> None:
        """Publish each claim handed to `renew` again, one at a time, each bounded.

        Cancellation: renewals not yet made are dropped; those claims hold for their first lifetime.
        """
        async with self._receive:
            async for task_id, claim_id in self._receive:
                try:
                    with trio.fail_after(RENEWAL_TIMEOUT):
                        await self.claims.refresh(task_id, claim_id)
                except Exception as exc:
                    # The claim still holds for its first lifetime, from when it was made.
                    log.warning("task %s: could not renew its claim: %s", task_id, exc)

    async def serve_keep_alive(self, held: Callable[[], Iterable[tuple[str, str]]]) -> None:
        """Renew the claims `held()` names (task_id, claim id) every half lifetime, so that a long job's never lapses.

        Returns at once when claims never expire. Cancellation: nothing to clean up.
        """
        lifetime = self.claims.lifetime
        if lifetime is None:
            return
        while True:
            await trio.sleep(lifetime / 2)
            for task_id, claim_id in held():
                self.renew(task_id, claim_id)
