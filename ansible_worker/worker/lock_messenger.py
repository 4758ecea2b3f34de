"""Write and publish this worker's lock messages: signed when signatures are on, a renewal cut into parts that fit."""

from __future__ import annotations

import json
from collections.abc import Callable

from ansible_worker.mqtt.link import MqttLink
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.lock_messages import LockRequest, lock_document, release_parts, renewal_parts
from ansible_worker.protocol.signing import Signer
from ansible_worker.protocol.topics import Topics

__all__ = ["LockMessenger"]


class LockMessenger:
    """What one worker says on its group's locks topic; every request it makes states `lifetime`."""

    def __init__(
        self, session: BrokerSession, topics: Topics, *, worker_id: str, lifetime: float, signer: Signer | None
    ) -> None:
        self.session = session
        self.topic = topics.locks
        self.worker_id = worker_id
        self.lifetime = lifetime
        self.signer = signer

    async def acquire(self, request: LockRequest) -> None:
        """Ask for `request`, on the current link (waiting for one). Errors: `LinkError`."""
        await self.session.publish(
            self.topic,
            self._payload(lock_document("acquire", self.worker_id, requests=[request], lifetime=self.lifetime)),
            qos=1,
        )

    async def release(self, claims: list[str]) -> None:
        """Give back `claims`, on the current link (waiting for one). Errors: `LinkError`."""
        await self.session.publish(
            self.topic, self._payload(lock_document("release", self.worker_id, releases=claims)), qos=1
        )

    async def sync(self, round_id: str) -> None:
        """Ask the group what it holds, in round `round_id`. Errors: `LinkError`."""
        await self.session.publish(
            self.topic, self._payload(lock_document("sync", self.worker_id, round_id=round_id)), qos=1
        )

    async def say_all(
        self,
        link: MqttLink,
        releases: list[str],
        requests: list[LockRequest],
        rounds: list[str],
        *,
        sent: Callable[[list[str]], None],
    ) -> None:
        """`releases` (`sent` hears each part taken), then all of `requests`, on `link`; the last part answers `rounds`.

        Releases first: a worker that syncs has them before it counts the answer. All on one
        link, so that no part is lost while a later one goes out.
        Errors: `LinkError` when the link drops before the last part went out (the answer is owed still).
        """
        for claims in release_parts(releases):
            await link.publish(
                self.topic, self._payload(lock_document("release", self.worker_id, releases=claims)), qos=1
            )
            sent(claims)
        parts = renewal_parts(requests)
        for index, part in enumerate(parts):
            answers = rounds if index == len(parts) - 1 else []
            document = lock_document("renew", self.worker_id, requests=part, lifetime=self.lifetime, answers=answers)
            await link.publish(self.topic, self._payload(document), qos=1)

    def _payload(self, document: dict[str, object]) -> bytes:
        if self.signer is not None:
            document = self.signer.sign(self.topic, document)
        return json.dumps(document).encode()
