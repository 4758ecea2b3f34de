"""Retain the request of each job this worker holds until it is settled, so that a survivor can take it over.

The copy is the request byte for byte as this worker took it (for a signed job, the form
its signature covers), retained at QoS 1 on `…/tasks/<task_id>/request` once the claim is
won and before the job's first `queued` status; an empty retained message clears it once
the job is settled. A loser of a claim race publishes nothing: it must never overwrite the
winner's copy.
"""

from __future__ import annotations

import logging
import math

import trio

from ansible_worker.mqtt.link import LinkError, PublishRefused
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.topics import Topics

log = logging.getLogger(__name__)

# Publishing one copy, or clearing one, has this bound.
COPY_TIMEOUT = 10.0


class RequestCopyPublisher:
    """Publishes request copies (waiting for the broker), and clears them in the background, one at a time."""

    def __init__(self, session: BrokerSession, topics: Topics) -> None:
        self.session = session
        self.topics = topics
        self._send, self._receive = trio.open_memory_channel[str](math.inf)

    async def publish(self, task_id: str, payload: bytes) -> bool:
        """Retain `payload` as the copy of `task_id`'s request; False (logged) when the broker did not take it in time.

        Cancellation: the copy may or may not be out.
        """
        with trio.move_on_after(COPY_TIMEOUT):
            while True:
                try:
                    await self.session.publish(self.topics.request(task_id), payload, qos=1, retain=True)
                    return True
                except PublishRefused as exc:
                    log.error(
                        "task %s: its request copy was refused: %s (check the broker's ACL for this worker);"
                        " the group could not take it over if this worker were lost",
                        task_id,
                        exc,
                    )
                    return False
                except LinkError:
                    await self.session.wait_connected()
        log.warning("task %s: its request copy was not confirmed within %gs", task_id, COPY_TIMEOUT)
        return False

    def clear(self, task_id: str) -> None:
        """The job is settled: clear its copy soon."""
        self._send.send_nowait(task_id)

    async def serve_clearing(self) -> None:
        """Clear each copy handed to `clear`, each bounded. Cancellation: the copies not yet cleared stay retained."""
        async with self._receive:
            async for task_id in self._receive:
                try:
                    with trio.fail_after(COPY_TIMEOUT):
                        await self.session.publish(self.topics.request(task_id), b"", qos=1, retain=True)
                except Exception as exc:
                    log.warning("task %s: could not clear its request copy: %s", task_id, exc)
