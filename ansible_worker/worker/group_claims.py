"""This worker's side of the group's claims: claim a task_id, release it, take it over, and learn who took it.

Each claim of this worker carries what a survivor needs to take its job over (`ClaimFacts`):
when the group accepted the job, the digest of its request copy while it is unsettled, and
whether it may have started. The facts live here from the claim until the job is settled.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import trio

from ansible_worker.mqtt.link import InboundMessage, LinkError, PublishRefused
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.claims import Claim, ClaimBook, ClaimState, new_claim_id, read_claim, request_digest
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker.claim_facts import ClaimFacts, claim_message
from ansible_worker.worker.policies import ClaimPolicy
from ansible_worker.worker.unknown_claim_keys import UnknownClaimKeys

__all__ = ["CLAIM_TIMEOUT", "ClaimFacts", "ClaimFailed", "GroupClaims"]

CLAIM_TIMEOUT = 10.0
# The largest MQTT message expiry interval (a four-byte integer).
LONGEST_EXPIRY = 2**32 - 1
# How long a loser's copy of the winner's claim may take; it only restores what is retained.
RESTORE_TIMEOUT = 5.0

log = logging.getLogger(__name__)


class ClaimFailed(Exception):
    """The broker did not confirm this worker's claim; the job cannot safely run yet.

    `permanent` when trying again cannot help (the broker refuses the claim topic).
    """

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


class GroupClaims:
    """Claims made and heard by one worker, over its broker session, as its `ClaimPolicy` says."""

    def __init__(self, session: BrokerSession, topics: Topics, *, worker_id: str, policy: ClaimPolicy) -> None:
        self.session, self.topics, self.worker_id = session, topics, worker_id
        self.lifetime, self.release_lifetime = policy.lifetime, policy.release_lifetime
        self.policy = policy
        self.book = ClaimBook(on_forget=lambda task_id: self.unsettled.pop(task_id, None))
        self.unknown_keys = UnknownClaimKeys()
        self._claiming: set[str] = set()
        # Claim ids this worker published and waits to hear back, whether they count or not.
        self._echoes: dict[str, trio.Event] = {}
        self._heard = trio.Event()
        # The facts of each claim this worker holds or makes (and has not lost), by task_id.
        self._facts: dict[str, ClaimFacts] = {}
        # The group's unsettled jobs as the claims tell: the claim (or hand-back release) whose
        # request copy is kept, by task_id; forgotten with the book's entry (expired, evicted).
        self.unsettled: dict[str, Claim] = {}
        # Told of every claim that comes to hold a task_id, this worker's included: when it is
        # another worker's, this worker may hold the job and must let it go at once (taken over).
        self.on_taken: Callable[[str, Claim], None] = lambda task_id, claim: None
        # Waited on before a claim of a job already held is published again (a renewal, the
        # start): after a reconnection or a freeze, what the group decided meanwhile comes first.
        self.gate: Callable[[], Awaitable[None]] | None = None

    def hear(self, task_id: str, message: InboundMessage) -> None:
        """Record a message from a claim topic, and wake whoever waits on claims."""
        verify = None
        if self.policy.trusted is not None:
            verify = self.unknown_keys.verifier(self.policy.trusted, self.topics.claim(task_id), task_id)
        claim = read_claim(
            message.payload,
            now=trio.current_time(),
            wall_now=datetime.now(UTC),
            verify=verify,
            expiry=message.expiry,
            default_lifetime=self.lifetime,
        )
        if claim is None:
            if message.payload:
                log.debug("task %s: ignoring a message on its claim topic that is not a valid claim", task_id)
            return
        counted = self.book.record(task_id, claim, now=trio.current_time())
        self._note_unsettled(task_id)
        echo = self._echoes.get(claim.claim_id)
        if echo is not None:
            echo.set()
        if counted and claim.state == "claimed":
            self.on_taken(task_id, claim)
        self._heard.set()
        self._heard = trio.Event()

    def _note_unsettled(self, task_id: str) -> None:
        now = trio.current_time()
        holder = self.book.holder(task_id, now=now)
        left = holder if holder is not None else self.book.release(task_id, now=now)
        if left is not None and left.request_sha256 is not None:
            self.unsettled[task_id] = left
        else:
            self.unsettled.pop(task_id, None)

    def holder(self, task_id: str) -> Claim | None:
        """The live claim that holds `task_id` in the group now, if any."""
        return self.book.holder(task_id, now=trio.current_time())

    def settle(self, task_id: str) -> None:
        """The job is settled: the next publication of its claim names no request copy, and is its last here."""
        facts = self._facts.get(task_id)
        if facts is not None:
            self._facts[task_id] = replace(facts, request_sha256=None, settled=True)

    def resume_takeover(self, task_id: str, takeover: Claim) -> None:
        """This worker settles again its own `takeover`: its facts, if gone (no journal), are read from the claim."""
        self._facts.setdefault(task_id, ClaimFacts.of(takeover))

    def forget(self, task_id: str) -> None:
        """The job is another worker's (handed back, taken over): nothing more is said of it here."""
        self._facts.pop(task_id, None)

    async def mark_started(self, task_id: str, claim_id: str) -> bool:
        """Publish the claim again with `started_at`, and hear it back; True if it still holds the job then.

        The start fence: a job starts only once the group has heard that it may have started,
        so that a survivor tells a queued job from one that ran. While the broker is away this
        waits (the job waits to start); a job taken over meanwhile is not this worker's any more.

        Cancellation: the claim may or may not be out with `started_at`; the job did not start.
        """
        facts = self._facts.get(task_id) or ClaimFacts(accepted_at=datetime.now(UTC))
        if facts.started_at is None:
            self._facts[task_id] = facts = replace(facts, started_at=datetime.now(UTC))
        while True:
            if self.gate is not None:
                await self.gate()
            holder = self.holder(task_id)
            if holder is not None and holder.claim_id != claim_id:
                return False
            try:
                if await self._heard_back(task_id, claim_id):
                    holder = self.holder(task_id)
                    return holder is not None and holder.claim_id == claim_id
            except LinkError as exc:
                log.debug("task %s: its start claim is not out yet: %s", task_id, exc)
            log.warning("task %s: waiting for the broker to confirm its start", task_id)

    async def take_over(self, task_id: str, lost: Claim, *, lost_worker: str, request_sha256: str | None) -> str | None:
        """Take `task_id` over from `lost_worker`, whose claim (or release) `lost` holds it; the new claim id if won.

        The takeover names the claim it ends, and keeps when the group accepted the job and
        whether it may have started; `request_sha256` names the request copy that stays (None:
        nothing is left to take over once this worker settles it). The first takeover the
        broker delivers wins; a loser stands back (None).

        Errors: `ClaimFailed` when the broker does not confirm it. Cancellation: the takeover
        may be out; whoever it names as holder settles the job.
        """
        claim_id = new_claim_id()
        taken = lost.claim_id if lost.state == "claimed" else lost.releases
        self._facts[task_id] = ClaimFacts.of(
            lost, request_sha256=request_sha256, takes_over=taken, lost_worker=lost_worker
        )
        try:
            heard = await self._heard_back(task_id, claim_id)
        except LinkError as exc:
            self._facts.pop(task_id, None)
            raise ClaimFailed(f"the broker link failed: {exc}") from exc
        holder = self.holder(task_id)
        if not heard or holder is None or holder.claim_id != claim_id:
            self._facts.pop(task_id, None)
            if not heard:
                raise ClaimFailed(f"the broker did not confirm the takeover within {CLAIM_TIMEOUT:g}s")
            return None
        return claim_id

    def released_request(self, task_id: str) -> str | None:
        """The digest of the request a live release of `task_id` hands back, if any."""
        return self.book.released_request(task_id, now=trio.current_time())

    async def claim(
        self,
        task_id: str,
        claim_id: str,
        *,
        also_ours: frozenset[str] = frozenset(),
        request_sha256: str | None = None,
    ) -> bool:
        """Claim `task_id` for this worker as `claim_id`; True if the claim that holds it is ours.

        Ours is `claim_id` or one of `also_ours` (a claim this worker made before, which a
        release it sent may not have ended); `request_sha256` names the request copy the
        winner publishes next. A claim the book already holds as `claim_id`
        (made before a restart, and heard again) is won without a new message. The decision
        waits for the broker to send `claim_id` back: by then everything the broker ordered
        before it has been heard. A loser publishes the winner's claim again, since its own
        replaced the retained one.

        Errors: `ClaimFailed` when the broker does not confirm within `CLAIM_TIMEOUT`.
        Cancellation: the claim may still reach the broker; the caller does not hold it.
        """
        ours = also_ours | {claim_id}
        held = self.holder(task_id)
        if held is not None and held.claim_id == claim_id:
            return True
        if held is not None and held.claim_id not in ours:
            return False
        if task_id in self._claiming:
            # One claim per task at a time: the one in flight decides.
            return False
        if task_id not in self._facts:
            # Kept from a claim made before a restart, when it is heard again; else from now.
            accepted = held.accepted_at if held is not None and held.accepted_at is not None else datetime.now(UTC)
            self._facts[task_id] = ClaimFacts(accepted_at=accepted, request_sha256=request_sha256)
        self._claiming.add(task_id)
        try:
            heard = await self._heard_back(task_id, claim_id)
        except PublishRefused as exc:
            raise ClaimFailed(f"{exc} (check the broker's ACL for this worker)", permanent=True) from exc
        except LinkError as exc:
            raise ClaimFailed(f"the broker link failed: {exc}") from exc
        finally:
            self._claiming.discard(task_id)
        if not heard:
            raise ClaimFailed(f"the broker did not confirm the claim within {CLAIM_TIMEOUT:g}s")
        holder = self.holder(task_id)
        if holder is not None and holder.claim_id in ours:
            return True
        self._facts.pop(task_id, None)
        if holder is not None:
            await self._restore(task_id, holder)
        return False

    async def _heard_back(self, task_id: str, claim_id: str) -> bool:
        """Publish this worker's claim `claim_id` on `task_id` and hear it back; False if not within `CLAIM_TIMEOUT`.

        Errors: `LinkError` (`PublishRefused` among them). Cancellation: the claim may be out.
        """
        echo = self._echoes[claim_id] = trio.Event()
        try:
            with trio.move_on_after(CLAIM_TIMEOUT):
                await self._publish(task_id, claim_id, "claimed", lifetime=self.lifetime)
                # Our own claim comes back through our subscription, in the broker's order.
                await echo.wait()
                return True
            return False
        finally:
            self._echoes.pop(claim_id, None)

    async def _restore(self, task_id: str, winner: Claim) -> None:
        remaining = winner.expires - trio.current_time()
        with trio.move_on_after(RESTORE_TIMEOUT):
            try:
                await self.session.publish(
                    self.topics.claim(task_id), winner.raw, qos=1, retain=True, expiry=_expiry(remaining)
                )
            except Exception as exc:
                # Only what is retained for late workers suffers; the book of everyone who
                # heard the claims is right.
                log.warning("task %s: could not restore worker %s's retained claim: %s", task_id, winner.worker_id, exc)

    async def release(self, task_id: str, claim_id: str, *, request: bytes | None = None) -> None:
        """Tell the group this worker gives back the claim `claim_id` on `task_id`.

        With `request` (a hand-back), the release names that message by its digest: with
        signed jobs, it alone is taken whatever its age while the release is valid.

        Errors: `LinkError` if the link drops first (the release may or may not be out).

        Cancellation: the release may or may not have reached the broker; the claim that holds
        the job then decides who owns it.
        """
        digest = request_digest(request) if request is not None else None
        await self._publish(
            task_id,
            new_claim_id(),
            "released",
            lifetime=self.release_lifetime,
            releases=claim_id,
            request_sha256=digest,
        )

    async def refresh(self, task_id: str, claim_id: str) -> None:
        """Publish this worker's claim again, so that it lives a full lifetime from now.

        Errors: `LinkError` if the link drops first.

        Cancellation: the claim keeps the lifetime it had; safe to retry.
        """
        if self.gate is not None:
            await self.gate()
        holder = self.holder(task_id)
        if holder is not None and holder.claim_id != claim_id:
            # Taken over meanwhile: publishing it again would only hide the takeover from late workers.
            self._facts.pop(task_id, None)
            return
        await self._publish(task_id, claim_id, "claimed", lifetime=self.lifetime)

    async def wait_taken(self, task_id: str, ours: frozenset[str]) -> Claim:
        """Wait until a claim that is not one of `ours` holds `task_id`, and return it.

        Cancellation: the caller bounds the wait.
        """
        while True:
            holder = self.holder(task_id)
            if holder is not None and holder.claim_id not in ours:
                return holder
            await self._heard.wait()

    async def _publish(
        self,
        task_id: str,
        claim_id: str,
        state: ClaimState,
        *,
        lifetime: float | None,
        releases: str | None = None,
        request_sha256: str | None = None,
    ) -> None:
        topic = self.topics.claim(task_id)
        facts = self._facts.get(task_id) if state == "claimed" else None
        lifetime = lifetime if state == "released" or _unsettled(facts) else self.policy.settled_lifetime
        expires_at = None if lifetime is None else datetime.now(UTC) + timedelta(seconds=lifetime)
        # A release keeps when the group accepted the job, for whoever takes it next.
        mine = self._facts.pop(task_id, None) if state == "released" else None
        document = claim_message(
            self.worker_id,
            claim_id,
            state,
            facts=facts,
            expires_at=expires_at,
            releases=releases,
            request_sha256=request_sha256,
            accepted_at=mine.accepted_at if mine is not None else None,
        )
        if facts is not None and facts.settled:
            # Its last word: the job is settled, the claim only guards the task_id now.
            del self._facts[task_id]
        if self.policy.signer is not None:
            document = self.policy.signer.sign(topic, document)
        await self.session.publish(topic, json.dumps(document).encode(), qos=1, retain=True, expiry=_expiry(lifetime))


def _unsettled(facts: ClaimFacts | None) -> bool:
    """Whether a claim with `facts` holds for the unsettled lifetime; else `settled_lifetime`, all a copy needs.

    A job not yet settled, so that a survivor can take it over however long the group is
    away; and a takeover, settled or not, so that the lost worker, should it come back, is
    fenced as long as the job's status is kept (its journal may still hold the job).
    """
    return facts is not None and (not facts.settled or facts.takes_over is not None)


def _expiry(seconds: float | None) -> int | None:
    """An MQTT message expiry for `seconds` (None: none), within what the property can hold."""
    if seconds is None or math.isinf(seconds):
        return None
    return min(LONGEST_EXPIRY, max(1, math.ceil(seconds)))
