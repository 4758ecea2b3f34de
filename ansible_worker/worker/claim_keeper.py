"""Keep this worker's claims alive: renewed every half lifetime while jobs run, and once when each ends."""

from __future__ import annotations

import logging
import math

import trio

from ansible_worker.worker.group_claims import GroupClaims

log = logging.getLogger(__name__)

# A renewal is one publish; past this it is given up (the claim holds for its first lifetime).
RENEWAL_TIMEOUT = 5.0


class ClaimKeeper:
    """The claim id of each job this worker holds, queued or running, until its end renews it.

    Entries are bounded by the jobs held; the renewal channel by the jobs that end and the
    half-lifetime rounds, each of which the renewal task drains.
    """

    def __init__(self, claims: GroupClaims) -> None:
        self.claims = claims
        self._ids: dict[str, str] = {}
        self._send, self._receive = trio.open_memory_channel[tuple[str, str]](math.inf)

    def hold(self, task_id: str, claim_id: str) -> None:
        """The job of `task_id` is this worker's, under `claim_id`."""
        self._ids[task_id] = claim_id

    def get(self, task_id: str) -> str | None:
        """The claim id under which this worker holds `task_id`, if it does."""
        return self._ids.get(task_id)

    def forget(self, task_id: str) -> None:
        """The job is another worker's now (handed back, or lost to another claim)."""
        self._ids.pop(task_id, None)

    def ended(self, task_id: str) -> None:
        """The job's terminal status is out: renew its claim so it lasts as long as the status."""
        claim_id = self._ids.pop(task_id, None)
        if claim_id is not None:
            self._send.send_nowait((task_id, claim_id))

    async def serve_renewals(self) -> None:
        """Publish each claim handed to the renewal channel again, one at a time, each bounded.

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

    async def serve_keep_alive(self) -> None:
        """Renew the claims of the jobs held every half lifetime, so that a long job's claim never lapses.

        Returns at once when claims never expire. Cancellation: nothing to clean up.
        """
        lifetime = self.claims.lifetime
        if lifetime is None:
            return
        while True:
            await trio.sleep(lifetime / 2)
            for task_id, claim_id in list(self._ids.items()):
                self._send.send_nowait((task_id, claim_id))
