"""This worker's side of the group's claims: claim a task_id, release it, and learn who took it."""

from __future__ import annotations

import json
import logging
import math
import re
from datetime import UTC, datetime, timedelta

import trio

from ansible_worker.mqtt.link import InboundMessage, LinkError, PublishRefused
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.claims import (
    Claim,
    ClaimBook,
    ClaimState,
    claim_document,
    new_claim_id,
    read_claim,
    request_digest,
)
from ansible_worker.protocol.signing import UntrustedKey
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker.policies import ClaimPolicy

__all__ = ["CLAIM_TIMEOUT", "ClaimFailed", "GroupClaims", "UnknownClaimKeys"]

CLAIM_TIMEOUT = 10.0
# The largest MQTT message expiry interval (a four-byte integer).
LONGEST_EXPIRY = 2**32 - 1
# How long a loser's copy of the winner's claim may take; it only restores what is retained.
RESTORE_TIMEOUT = 5.0
# Unknown claim keys remembered (each warned about once); a flood of made-up ones costs no more.
MAX_UNKNOWN_KEYS = 64
_FINGERPRINT = re.compile(r"[0-9a-f]{32}")

log = logging.getLogger(__name__)


class ClaimFailed(Exception):
    """The broker did not confirm this worker's claim; the job cannot safely run yet.

    `permanent` when trying again cannot help (the broker refuses the claim topic).
    """

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


class UnknownClaimKeys:
    """Warn once per key about claims signed by a worker key this worker does not count.

    A group whose workers each have a key of their own, but do not list each other's under
    `security.worker_keys`, hears no claim but its own: a task_id can then run twice. Each
    such key is named once, at WARNING; past `limit` keys, once more for all the rest.
    """

    def __init__(self, *, limit: int = MAX_UNKNOWN_KEYS) -> None:
        self._warned: set[str] = set()
        self._limit = limit
        self._overflowed = False

    def heard(self, task_id: str, fingerprint: str, worker_id: object) -> None:
        """A claim on `task_id` named `fingerprint`, a key this worker does not list, as its signer."""
        if fingerprint in self._warned or not _FINGERPRINT.fullmatch(fingerprint):
            # Not the name of any key: nothing an operator could list.
            return
        if len(self._warned) >= self._limit:
            if not self._overflowed:
                self._overflowed = True
                log.warning(
                    "claims are signed by more than %d worker keys this worker does not list; no longer"
                    " naming each: check security.worker_keys on every worker of the group",
                    self._limit,
                )
            return
        self._warned.add(fingerprint)
        who = repr(worker_id[:128]) if isinstance(worker_id, str) else "(unnamed)"
        log.warning(
            "task %s: a claim from worker %s is signed with key %s, which is neither this worker's worker_key"
            " nor one of security.worker_keys, so it does not count here. If that is a worker of this group,"
            " list its public key under security.worker_keys on every worker (or give the workers one"
            " worker_key): until then the group can run a task_id twice. Warned once per key.",
            task_id,
            who,
            fingerprint,
        )


class GroupClaims:
    """Claims made and heard by one worker, over its broker session, as its `ClaimPolicy` says."""

    def __init__(self, session: BrokerSession, topics: Topics, *, worker_id: str, policy: ClaimPolicy) -> None:
        self.session = session
        self.topics = topics
        self.worker_id = worker_id
        self.lifetime = policy.lifetime
        self.release_lifetime = policy.release_lifetime
        self._signer = policy.signer
        self._trusted = policy.trusted
        self.book = ClaimBook()
        self.unknown_keys = UnknownClaimKeys()
        self._claiming: set[str] = set()
        # Claim ids this worker published and waits to hear back, whether they count or not.
        self._echoes: dict[str, trio.Event] = {}
        self._heard = trio.Event()

    def hear(self, task_id: str, message: InboundMessage) -> None:
        """Record a message from a claim topic, and wake whoever waits on claims."""
        verify = None
        if self._trusted is not None:
            trusted, topic = self._trusted, self.topics.claim(task_id)

            def verify(document: object) -> object:
                assert isinstance(document, dict)
                try:
                    return trusted.verify(topic, document)
                except UntrustedKey as exc:
                    self.unknown_keys.heard(task_id, exc.fingerprint, document.get("worker_id"))
                    raise

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
        self.book.record(task_id, claim, now=trio.current_time())
        echo = self._echoes.get(claim.claim_id)
        if echo is not None:
            echo.set()
        self._heard.set()
        self._heard = trio.Event()

    def holder(self, task_id: str) -> Claim | None:
        """The live claim that holds `task_id` in the group now, if any."""
        return self.book.holder(task_id, now=trio.current_time())

    def released_request(self, task_id: str) -> str | None:
        """The digest of the request a live release of `task_id` hands back, if any."""
        return self.book.released_request(task_id, now=trio.current_time())

    async def claim(self, task_id: str, claim_id: str, *, also_ours: frozenset[str] = frozenset()) -> bool:
        """Claim `task_id` for this worker as `claim_id`; True if the claim that holds it is ours.

        Ours is `claim_id` or one of `also_ours` (a claim this worker made before, which a
        release it sent may not have ended). A claim the book already holds as `claim_id`
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
        self._claiming.add(task_id)
        echo = self._echoes[claim_id] = trio.Event()
        try:
            with trio.move_on_after(CLAIM_TIMEOUT) as bound:
                await self._publish(task_id, claim_id, "claimed", lifetime=self.lifetime)
                # Our own claim comes back through our subscription, in the broker's order.
                await echo.wait()
        except PublishRefused as exc:
            raise ClaimFailed(f"{exc} (check the broker's ACL for this worker)", permanent=True) from exc
        except LinkError as exc:
            raise ClaimFailed(f"the broker link failed: {exc}") from exc
        finally:
            self._claiming.discard(task_id)
            del self._echoes[claim_id]
        if bound.cancelled_caught:
            raise ClaimFailed(f"the broker did not confirm the claim within {CLAIM_TIMEOUT:g}s")
        holder = self.holder(task_id)
        if holder is not None and holder.claim_id in ours:
            return True
        if holder is not None:
            await self._restore(task_id, holder)
        return False

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
        expires_at = None if lifetime is None else datetime.now(UTC) + timedelta(seconds=lifetime)
        document = claim_document(
            self.worker_id, claim_id, state, expires_at=expires_at, releases=releases, request_sha256=request_sha256
        )
        if self._signer is not None:
            document = self._signer.sign(topic, document)
        await self.session.publish(topic, json.dumps(document).encode(), qos=1, retain=True, expiry=_expiry(lifetime))


def _expiry(seconds: float | None) -> int | None:
    """An MQTT message expiry for `seconds` (None: none), within what the property can hold."""
    if seconds is None or math.isinf(seconds):
        return None
    return min(LONGEST_EXPIRY, max(1, math.ceil(seconds)))
