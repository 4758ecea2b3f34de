"""Warn once per key about claims signed by a worker key this worker does not count."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ansible_worker.protocol.signing import UntrustedKey

if TYPE_CHECKING:
    from ansible_worker.protocol.signing import TrustedKeys

__all__ = ["MAX_UNKNOWN_KEYS", "UnknownClaimKeys"]

# Unknown claim keys remembered (each warned about once); a flood of made-up ones costs no more.
MAX_UNKNOWN_KEYS = 64
_FINGERPRINT = re.compile(r"[0-9a-f]{32}")

log = logging.getLogger(__name__)


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

    def verifier(self, trusted: TrustedKeys, topic: str, task_id: str) -> Callable[[Mapping[str, Any]], object]:
        """Check a claim on `task_id`'s claim `topic` against `trusted`, naming a key it does not know."""

        def verify(document: Mapping[str, Any]) -> object:
            try:
                return trusted.verify(topic, document)
            except UntrustedKey as exc:
                self.heard(task_id, exc.fingerprint, document.get("worker_id"))
                raise

        return verify
