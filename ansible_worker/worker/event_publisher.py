"""Publish the live events of every job through one task, dropping events rather than ever blocking a job."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from ansible_worker.mqtt.link import LinkError
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.live_events import live_event

log = logging.getLogger(__name__)


@dataclass
class EventStream:
    """One job's live events: numbering, a token bucket, and what was dropped.

    The bucket allows `rate` events a second on average and bursts of twice that, so a
    playbook that floods events is thinned out instead of slowing Ansible down.
    """

    topic: str
    rate: float
    last_seq: int = 0
    dropped: int = 0
    pending: int = 0
    _tokens: float = field(init=False)
    _refilled_at: float = field(init=False)
    _flushed: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self._tokens = 2 * self.rate
        self._refilled_at = trio.current_time()
        self._flushed.set()

    def take_token(self) -> bool:
        now = trio.current_time()
        self._tokens = min(2 * self.rate, self._tokens + (now - self._refilled_at) * self.rate)
        self._refilled_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def wait_flushed(self) -> None:
        """Wait until every event offered so far has left through the publisher."""
        await self._flushed.wait()

    def note_enqueued(self) -> None:
        self.pending += 1
        if self._flushed.is_set():
            self._flushed = trio.Event()

    def note_published(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self._flushed.set()


class EventPublisher:
    """Publishes every job's live events; `offer` never blocks.

    At QoS 0 an event goes straight into the MQTT client's outgoing queue, in order with
    the statuses. At QoS 1 it passes a bounded buffer to one publishing task that waits for
    each acknowledgement. Either way an event over the job's rate, or one that finds no
    room (the broker is slow or away), is counted as dropped. Events are numbered as they
    are accepted, so the numbers a watcher receives are consecutive unless the network
    itself lost one (QoS 0).
    """

    def __init__(self, session: BrokerSession, *, capacity: int = 2048, qos: int = 0) -> None:
        self.session = session
        self.qos = qos
        self._send, self._receive = trio.open_memory_channel[tuple[EventStream, bytes]](capacity)

    def offer(self, stream: EventStream, raw: Mapping[str, Any]) -> None:
        if not stream.take_token():
            stream.dropped += 1
            return
        payload = json.dumps(live_event(raw, stream.last_seq + 1), separators=(",", ":"), default=str).encode()
        if self.qos == 0:
            try:
                self.session.publish_nowait(stream.topic, payload)
            except LinkError:
                stream.dropped += 1
                return
            stream.last_seq += 1
            return
        try:
            self._send.send_nowait((stream, payload))
        except trio.WouldBlock:
            stream.dropped += 1
            return
        stream.last_seq += 1
        stream.note_enqueued()

    async def run(self) -> None:
        async for stream, payload in self._receive:
            try:
                await self.session.publish(stream.topic, payload, qos=self.qos)
            except LinkError as exc:
                # Live events are best effort: the status carries what matters.
                log.debug("live event for %s not published: %s", stream.topic, exc)
            finally:
                stream.note_published()
