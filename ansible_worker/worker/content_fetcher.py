"""Fetch retained messages through the worker's own broker session: a job's shipped archive, one topic, or a sync.

Whether the broker has sent everything it ordered before a moment is known without waiting
out a bound: the fetcher publishes a marker on its own client topic, which the broker
delivers after the retained messages of every earlier subscription.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from ansible_worker.mqtt.link import InboundMessage, LinkError
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.models import CONTENT_PART_BYTES, ShippedContent
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.errors import JobRefusedError

log = logging.getLogger(__name__)

# How long unsubscribing may take once a fetch is over, whatever ended it.
UNSUBSCRIBE_TIMEOUT = 2.0
# A part's number as `submit` writes it: ASCII digits, no more than any archive can have.
_PART_NUMBER = re.compile(r"(?:0|[1-9][0-9]{0,8})", re.ASCII)


class _Sink:
    """The file one archive is written into, part by part, as the parts arrive."""

    def __init__(self, content: ShippedContent, path: Path) -> None:
        self.content = content
        self.missing = set(range(content.parts))
        self.error: str | None = None
        self._descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)

    def take(self, index_text: str, payload: bytes) -> None:
        """Write one part at its place; a part that does not fit the archive fails the fetch."""
        content = self.content
        if not _PART_NUMBER.fullmatch(index_text) or int(index_text) >= content.parts:
            # Not one of this archive's parts: someone else's mistake, nothing to write.
            log.warning("shipped content %s: ignoring part %r of %d", content.sha256, index_text[:20], content.parts)
            return
        index = int(index_text)
        expected = min(CONTENT_PART_BYTES, content.size - index * CONTENT_PART_BYTES)
        if len(payload) != expected:
            self.error = (
                f"shipped content sha256 {content.sha256}: part {index} has {len(payload)} bytes, not {expected}"
            )
            return
        if index in self.missing:
            # Synchronous: at most one part (4 MiB) to the page cache, in the task that reads the
            # broker, so that parts never pile up in memory.
            view = memoryview(payload)
            offset = index * CONTENT_PART_BYTES
            while view:
                written = os.pwrite(self._descriptor, view, offset)
                view, offset = view[written:], offset + written
            self.missing.discard(index)

    def close(self) -> None:
        os.close(self._descriptor)


class ContentFetcher:
    """Subscribes to one archive's parts per fetch and waits (bounded) for their retained messages.

    Whether the broker holds every part is known without waiting out the bound: after
    subscribing, the fetcher publishes a marker on its own client topic, which the broker
    delivers after the retained messages of the earlier subscription. The service passes
    every message on these topics to `hear`; parts go straight to the archive's file.
    """

    def __init__(self, session: BrokerSession, topics: Topics, *, client_id: str, timeout: float) -> None:
        self.session = session
        self.topics = topics
        self.client_id = client_id
        self.timeout = timeout
        self._content_prefix = topics.content("")
        self._sync_prefix = topics.client_sync(client_id, "")
        self._sinks: dict[str, _Sink] = {}
        self._markers: dict[str, trio.Event] = {}
        # Single topics being read: the newest payload heard on each.
        self._reading: dict[str, bytes | None] = {}

    def hear(self, message: InboundMessage) -> bool:
        """Take a message if it is one of a fetch's; True when it was (also when it came too late)."""
        topic = message.topic
        if topic.startswith(self._sync_prefix):
            marker = self._markers.get(topic)
            if marker is not None:
                marker.set()
            return True
        if topic in self._reading:
            self._reading[topic] = message.payload
            return True
        if not topic.startswith(self._content_prefix):
            return False
        base, _, index = topic.rpartition("/")
        sink = self._sinks.get(base)
        if sink is not None:
            sink.take(index, message.payload)
        return True

    async def fetch(self, content: ShippedContent, into: Path) -> None:
        """Write the archive that `content` names into the new file `into`, from its retained parts.

        Errors: `JobRefusedError` when the broker holds no part of it, or not all, or a part
        of the wrong size; when the link drops; or when no answer comes within the timeout
        (`worker.content_fetch_timeout`). The caller checks the digest.

        Cancellation: the subscriptions are ended (shielded, bounded) before it passes.
        """
        base = self.topics.content(content.sha256)
        marker_text = secrets.token_hex(8)
        sync = self.topics.client_sync(self.client_id, marker_text)
        sink = _Sink(content, into)
        marker = trio.Event()
        self._sinks[base] = sink
        self._markers[sync] = marker
        try:
            with trio.move_on_after(self.timeout):
                await self.session.subscribe_now(self.topics.content_parts(content.sha256), 1)
                await self.session.subscribe_now(sync, 1)
                await self.session.publish(sync, marker_text.encode(), qos=1)
                await marker.wait()
                self._judge(sink)
                log.info("fetched shipped content %s (%d bytes, %d parts)", content.sha256, content.size, content.parts)
                return
            raise JobRefusedError(
                f"shipped content sha256 {content.sha256} did not arrive within {self.timeout:g}s"
                " (worker.content_fetch_timeout)"
            )
        except LinkError as exc:
            raise JobRefusedError(f"fetching shipped content sha256 {content.sha256} failed: {exc}") from exc
        finally:
            self._sinks.pop(base, None)
            self._markers.pop(sync, None)
            sink.close()
            with trio.CancelScope(shield=True), trio.move_on_after(UNSUBSCRIBE_TIMEOUT):
                await self.session.unsubscribe(self.topics.content_parts(content.sha256))
                await self.session.unsubscribe(sync)

    async def sync(self) -> None:
        """Return once the broker has sent this session everything it ordered before the call.

        Errors: `LinkError` when the link drops first. Cancellation: the marker's
        subscription is ended (shielded, bounded); the caller bounds the wait.
        """
        marker_text = secrets.token_hex(8)
        sync = self.topics.client_sync(self.client_id, marker_text)
        marker = self._markers[sync] = trio.Event()
        try:
            await self.session.subscribe_now(sync, 1)
            await self.session.publish(sync, marker_text.encode(), qos=1)
            await marker.wait()
        finally:
            self._markers.pop(sync, None)
            with trio.CancelScope(shield=True), trio.move_on_after(UNSUBSCRIBE_TIMEOUT):
                await self.session.unsubscribe(sync)

    async def read_retained(self, topic: str, *, sync: Callable[[], Awaitable[None]] | None = None) -> bytes | None:
        """The message the broker retains on `topic` now (None: none), by a short subscription.

        `sync` is the round trip that tells when the broker has sent it (default: `sync`).

        Errors: `LinkError` when the link drops first. Cancellation: the subscription is
        ended (shielded, bounded); the caller bounds the wait.
        """
        if topic in self._reading:
            raise RuntimeError(f"{topic} is being read already")
        self._reading[topic] = None
        try:
            await self.session.subscribe_now(topic, 1)
            await (sync or self.sync)()
            return self._reading[topic] or None
        finally:
            self._reading.pop(topic, None)
            with trio.CancelScope(shield=True), trio.move_on_after(UNSUBSCRIBE_TIMEOUT):
                await self.session.unsubscribe(topic)

    @staticmethod
    def _judge(sink: _Sink) -> None:
        content = sink.content
        if sink.error is not None:
            raise JobRefusedError(sink.error)
        if len(sink.missing) == content.parts:
            raise JobRefusedError(f"shipped content not found on the broker: sha256 {content.sha256}")
        if sink.missing:
            have = content.parts - len(sink.missing)
            raise JobRefusedError(
                f"shipped content sha256 {content.sha256} is incomplete on the broker: {have} of {content.parts} parts"
            )
