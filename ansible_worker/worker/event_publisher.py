"""Publish the live events of every job through one task, dropping events rather than ever blocking a job."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import trio

from ansible_worker.mqtt.link import LinkError
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.live_events import live_event
from ansible_worker.run.events.event_stream import EventStream

log = logging.getLogger(__name__)


class EventPublisher:
    """Publishes every job's live events; `offer` never blocks.

    At QoS 0 an event goes straight into the MQTT client's outgoing queue, in order with
    the statuses. At QoS 1 it passes a bounded buffer to one publishing task that waits for
    each acknowledgement. Either way an event over the job's rate, or one that finds no
    room (the broker is slow or away), is counted as dropped. Events are numbered as they
    are accepted, so the numbers a watcher receives are consecutive unless the network
    itself lost one (QoS 0).
    """

    def __init__(self, session: BrokerSession, *, buffer_size: int = 2048, qos: int = 0) -> None:
        self.session = session
        self.qos = qos
        self._send, self._receive = trio.open_memory_channel[tuple[EventStream, bytes]](buffer_size)

    def offer(self, stream: EventStream, raw: Mapping[str, Any]) -> None:
        """Number and send one callback event of `stream`'s job, or count it dropped; never blocks."""
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

    async def serve(self) -> None:
        """Publish the queued events (QoS 1 and 2) for ever, one at a time.

        Cancellation: the events still queued are not published.
        """
        async for stream, payload in self._receive:
            try:
                await self.session.publish(stream.topic, payload, qos=self.qos)
            except LinkError as exc:
                # Live events are best effort: the status carries what matters.
                log.debug("live event for %s not published: %s", stream.topic, exc)
            finally:
                stream.note_published()
