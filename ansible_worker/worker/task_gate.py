"""Let a signed job or cancel request through: a trusted signature, over its topic, not too old."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ansible_worker.protocol.claims import request_digest
from ansible_worker.protocol.signing import Verified, check_age, issued_at
from ansible_worker.protocol.timestamps import utc_now
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker.intake import Verify
from ansible_worker.worker.policies import SignaturePolicy


class SignedTaskGate:
    """The checks a worker that requires signed messages makes before it claims a job.

    A job passes when its signature is made by a trusted key over its topic and body, and
    it is not older than `max_task_age` unless it is the very message a worker of the group
    handed back: `released(task_id)` gives the digest a live release names, and only a
    payload with that digest skips the age check. The cheap checks (a known key, the age)
    come before the signature, whose canonical JSON costs the most. That the group runs it
    once is the claims' business.
    """

    def __init__(self, policy: SignaturePolicy, topics: Topics, *, released: Callable[[str], str | None]) -> None:
        self.trusted = policy.trusted
        self.topics = topics
        self.max_age = policy.max_age
        self.max_skew = policy.max_skew
        self._released = released

    def task_verifier(self, payload: bytes) -> Verify:
        """Checks the job decoded from `payload`: trusted key, age (unless it was handed back as is), signature."""

        def verify(document: Mapping[str, Any]) -> Verified:
            self.trusted.check_key(document)
            if not self._handed_back(document, payload):
                check_age(issued_at(document), now=utc_now(), max_age=self.max_age, max_skew=self.max_skew)
            return self.trusted.verify(self.topics.tasks, document)

        return verify

    def _handed_back(self, document: Mapping[str, Any], payload: bytes) -> bool:
        task_id = document.get("task_id")
        if not isinstance(task_id, str):
            return False
        digest = self._released(task_id)
        # Hashed only for a task a live release names: other messages cost nothing here.
        return digest is not None and request_digest(payload) == digest

    def cancel_verifier(self, task_id: str) -> Verify:
        """Checks a cancel request for `task_id`: signed over its own topic, and not too old."""
        topic = self.topics.cancel(task_id)

        def verify(document: Mapping[str, Any]) -> Verified:
            self.trusted.check_key(document)
            check_age(issued_at(document), now=utc_now(), max_age=self.max_age, max_skew=self.max_skew)
            return self.trusted.verify(topic, document)

        return verify
