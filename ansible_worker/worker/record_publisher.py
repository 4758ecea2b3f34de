"""Publish a finished job's record, retained beside its status, smaller each time the broker refuses it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from ansible_worker.mqtt.link import LinkError, PublishRefused
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.models import JobStatus, RecordSummary
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.events.record_collector import RecordCollector

log = logging.getLogger(__name__)

# A refused record is tried again at this share of the refused size, a few times at most.
SHRINK_AFTER_REFUSAL = 0.25
MAX_ATTEMPTS = 4
# Smallest limit worth asking for: below it, only the status would fit.
SMALLEST_LIMIT = 1024
# How long a reconnect after a dropped link may take before the record is given up.
RECONNECT_SECONDS = 5.0
# How long the session may take to notice that a link it still holds is gone.
NOTICE_SECONDS = 1.0


class RecordPublisher:
    """Builds and publishes records: QoS 1, retained, with the terminal status's expiry."""

    def __init__(self, session: BrokerSession, topics: Topics, *, limit: int, retention: int | None) -> None:
        self.session = session
        self.topics = topics
        self.limit = limit
        self.retention = retention
        # Waited on before a record goes out, as before a status: the claims are heard first,
        # and the record of a job another worker took over meanwhile (fenced) is not published.
        self.gate: Callable[[], Awaitable[None]] | None = None
        self.fenced: Callable[[str], bool] = lambda task_id: False

    async def publish_record(self, status: JobStatus, record: RecordCollector) -> RecordSummary | None:
        """Publish the record of the job that ended with `status`; what the broker took, or None.

        A broker that refuses the record (its `message_size_limit`, with an MQTT 5 reason
        code) or drops the link over it gets a smaller one, cut to a quarter of the size, up
        to `MAX_ATTEMPTS` times; each refusal is logged. With no link at all, there is no
        record: the status must not wait for a broker that is away.

        Cancellation: the record may or may not have reached the broker; the summary is lost.
        """
        if self.gate is not None:
            await self.gate()
        if self.fenced(status.task_id):
            log.info("task %s: its record is not published: the job was taken over", status.task_id)
            return None
        topic = self.topics.record(status.task_id)
        limit = self.limit
        for _ in range(MAX_ATTEMPTS):
            if not self.session.connected:
                log.warning("task %s: not connected to the broker; its record is not published", status.task_id)
                return None
            encoded = record.build(status, limit)
            try:
                await self.session.publish(topic, encoded.payload, qos=1, retain=True, expiry=self.retention)
            except PublishRefused as exc:
                log.warning(
                    "task %s: the broker refused its record of %d bytes (%s); publishing a smaller one",
                    status.task_id,
                    len(encoded.payload),
                    exc,
                )
            except LinkError as exc:
                # Mosquitto drops the connection of an MQTT 3 client whose message is too large.
                log.warning(
                    "task %s: the link dropped over its record of %d bytes (%s); publishing a smaller one",
                    status.task_id,
                    len(encoded.payload),
                    exc,
                )
                # The session may not have noticed the loss yet: wait until it has, then for the next link.
                with trio.move_on_after(RECONNECT_SECONDS):
                    if self.session.connected:
                        with trio.move_on_after(NOTICE_SECONDS):
                            await self.session.wait_disconnected()
                    await self.session.wait_connected()
            else:
                return RecordSummary(bytes=len(encoded.payload), events=encoded.events, cut=encoded.cut)
            if len(encoded.payload) <= SMALLEST_LIMIT:
                break
            limit = max(SMALLEST_LIMIT, int(len(encoded.payload) * SHRINK_AFTER_REFUSAL))
        log.error("task %s: no record of it could be published", status.task_id)
        return None
