"""Fetch the archive a job ships from its retained topic, through the worker's own broker session."""

from __future__ import annotations

import logging
import secrets

import trio

from ansible_worker.mqtt.link import InboundMessage, LinkError
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.command import JobRefusedError

log = logging.getLogger(__name__)

# How long unsubscribing may take once a fetch is over, whatever ended it.
UNSUBSCRIBE_TIMEOUT = 2.0


class ContentFetcher:
    """Subscribes to one content topic at a time per fetch, and waits (bounded) for its retained message.

    Whether the broker holds the content is known without waiting out the bound: after
    subscribing, the fetcher publishes a marker on its own client topic, which the broker
    delivers after the retained messages of the earlier subscription. The service passes
    every message on these topics to `hear`.
    """

    def __init__(self, session: BrokerSession, topics: Topics, *, client_id: str, timeout: float) -> None:
        self.session = session
        self.topics = topics
        self.client_id = client_id
        self.timeout = timeout
        self._content_prefix = topics.content("")
        self._sync_prefix = topics.client_sync(client_id, "")
        self._waiting: dict[str, trio.MemorySendChannel[InboundMessage]] = {}

    def hear(self, message: InboundMessage) -> bool:
        """Take a message if it is one of a fetch's; True when it was (also when it came too late)."""
        if not message.topic.startswith((self._content_prefix, self._sync_prefix)):
            return False
        send = self._waiting.get(message.topic)
        if send is not None:
            try:
                send.send_nowait(message)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("a message on %s came after its fetch ended", message.topic)
        return True

    async def fetch(self, sha256: str, size: int) -> bytes:
        """The archive retained on the content topic of `sha256` (its digest is checked by the caller).

        Errors: `JobRefusedError` when the broker holds nothing there, when the link drops,
        or when no answer comes within the timeout (`worker.content_fetch_timeout`).

        Cancellation: the subscriptions are ended (shielded, bounded) before it passes.
        """
        topic = self.topics.content(sha256)
        marker = secrets.token_hex(8)
        sync = self.topics.client_sync(self.client_id, marker)
        send, receive = trio.open_memory_channel[InboundMessage](4)
        self._waiting[topic] = send
        self._waiting[sync] = send
        try:
            with trio.move_on_after(self.timeout):
                await self.session.subscribe_now(topic, 1)
                await self.session.subscribe_now(sync, 1)
                await self.session.publish(sync, marker.encode(), qos=1)
                async for message in receive:
                    if message.topic == topic and message.payload:
                        log.info("fetched shipped content %s (%d of %d bytes)", sha256, len(message.payload), size)
                        return message.payload
                    if message.topic == sync:
                        raise JobRefusedError(f"shipped content not found on the broker: sha256 {sha256}")
            raise JobRefusedError(
                f"shipped content sha256 {sha256} did not arrive within {self.timeout:g}s"
                " (worker.content_fetch_timeout)"
            )
        except LinkError as exc:
            raise JobRefusedError(f"fetching shipped content sha256 {sha256} failed: {exc}") from exc
        finally:
            self._waiting.pop(topic, None)
            self._waiting.pop(sync, None)
            send.close()
            with trio.CancelScope(shield=True), trio.move_on_after(UNSUBSCRIBE_TIMEOUT):
                await self.session.unsubscribe(topic)
                await self.session.unsubscribe(sync)
