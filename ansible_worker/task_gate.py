"""Let a signed job through once per group: its signature, its age, and the group's claim on it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import trio

from ansible_worker.broker_session import BrokerSession
from ansible_worker.claims import ClaimBook, claim_payload, new_claim_id
from ansible_worker.config import SecuritySettings
from ansible_worker.intake import Verify
from ansible_worker.models import utc_now
from ansible_worker.mqtt_link import InboundMessage, LinkError
from ansible_worker.signing import TrustedKeys, Verified, check_age
from ansible_worker.topics import Topics

CLAIM_TIMEOUT = 10.0


class ClaimFailed(Exception):
    """The broker did not confirm this worker's claim in time; the job cannot safely run."""


class SignedTaskGate:
    """The checks a worker that requires signed messages makes before it queues a job.

    A job passes when its signature is made by a trusted key over its topic and body, it is
    not older than `max_task_age` (unless a worker handed it back to the group), no worker
    of the group has claimed its task_id within that time, and this worker's claim is the
    first one the broker delivers.
    """

    def __init__(
        self,
        security: SecuritySettings,
        trusted: TrustedKeys,
        session: BrokerSession,
        topics: Topics,
        *,
        worker_id: str,
    ) -> None:
        self.trusted = trusted
        self.session = session
        self.topics = topics
        self.worker_id = worker_id
        self.max_age = security.max_task_age
        self.max_skew = security.max_clock_skew
        self.book = ClaimBook(default_lifetime=self.max_age + self.max_skew)
        self._waiting: dict[str, trio.Event] = {}
        self._claiming: set[str] = set()

    def verify_task(self, document: Mapping[str, Any]) -> Verified:
        return self.trusted.verify(self.topics.tasks, document)

    def cancel_verifier(self, task_id: str) -> Verify:
        """Checks a cancel request for `task_id`: signed over its own topic, and not too old."""
        topic = self.topics.cancel(task_id)

        def verify(document: Mapping[str, Any]) -> Verified:
            signed = self.trusted.verify(topic, document)
            check_age(signed.issued_at, now=utc_now(), max_age=self.max_age, max_skew=self.max_skew)
            return signed

        return verify

    def hear(self, task_id: str, message: InboundMessage) -> None:
        """Record a message from a claim topic, and wake this worker's claim if it is the one."""
        claim = self.book.hear(task_id, message.payload, now=trio.current_time(), expiry=message.expiry)
        if claim is not None and claim.claim_id in self._waiting:
            self._waiting[claim.claim_id].set()

    def replay_reason(self, task_id: str) -> str | None:
        """Why a request for `task_id` is a replay, or None if the group has not taken it."""
        if task_id in self._claiming:
            return "this worker is claiming the same task_id now"
        holder = self.book.holder(task_id, now=trio.current_time())
        if holder is not None:
            return f"the group already took this task_id (worker {holder.worker_id})"
        return None

    def check_age(self, task_id: str, signed: Verified) -> None:
        """Refuse an expired request, unless a worker of the group handed this very job back."""
        if self.book.released(task_id, now=trio.current_time()):
            return
        check_age(signed.issued_at, now=utc_now(), max_age=self.max_age, max_skew=self.max_skew)

    async def claim(self, task_id: str, signed: Verified) -> bool:
        """Claim `task_id` for this worker; True if ours is the claim the group heard first.

        Errors: `ClaimFailed` when the broker does not confirm within `CLAIM_TIMEOUT`.
        """
        claim_id = new_claim_id()
        # The claim lives as long as the request could still be accepted anywhere.
        valid_until = signed.issued_at + timedelta(seconds=self.max_age + self.max_skew)
        expiry = max(1, math.ceil((valid_until - utc_now()).total_seconds()))
        self._claiming.add(task_id)
        arrived = self._waiting[claim_id] = trio.Event()
        try:
            with trio.move_on_after(CLAIM_TIMEOUT) as bound:
                await self.session.publish(
                    self.topics.claim(task_id),
                    claim_payload(self.worker_id, claim_id, "claimed"),
                    qos=1,
                    retain=True,
                    expiry=expiry,
                )
                # Our own claim comes back through our subscription, in the broker's order.
                await arrived.wait()
        except LinkError as exc:
            raise ClaimFailed(f"the broker link failed: {exc}") from exc
        finally:
            self._claiming.discard(task_id)
            del self._waiting[claim_id]
        if bound.cancelled_caught:
            raise ClaimFailed(f"the broker did not confirm the claim within {CLAIM_TIMEOUT:g}s")
        holder = self.book.holder(task_id, now=trio.current_time())
        return holder is not None and holder.claim_id == claim_id

    async def release(self, task_id: str) -> None:
        """Tell the group this worker gave `task_id` back, so another worker may claim it.

        Errors: `LinkError` if the link drops first.
        """
        await self.session.publish(
            self.topics.claim(task_id),
            claim_payload(self.worker_id, new_claim_id(), "released"),
            qos=1,
            retain=True,
            expiry=math.ceil(self.max_age + self.max_skew),
        )
