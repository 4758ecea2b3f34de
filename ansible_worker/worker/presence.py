"""Keep this worker's retained presence message current: state, capacity, load and heartbeat."""

from __future__ import annotations

import enum
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import trio

from ansible_worker import __version__
from ansible_worker.mqtt.link import LinkError, Will
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.protocol.models import Presence, utc_now

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1


class WorkerState(enum.StrEnum):
    ONLINE = "online"
    DRAINING = "draining"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class Load:
    running: int
    queued: int
    jobs_done: int


class PresenceAnnouncer:
    """Publishes `<prefix>/<group>/workers/<worker_id>` (QoS 1, retained).

    It publishes on every connection (a will message may have said `offline` meanwhile),
    whenever `changed` is called, and at least every `interval` seconds as a heartbeat. The
    will message, set on each connection, says `offline` if the worker vanishes.
    """

    def __init__(
        self,
        session: BrokerSession,
        topic: str,
        *,
        worker_id: str,
        capacity: int,
        interval: float,
        load: Callable[[], Load],
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.session = session
        self.topic = topic
        self.worker_id = worker_id
        self.capacity = capacity
        self.interval = interval
        self.state = WorkerState.ONLINE
        self._load = load
        # Where the warm and cold start counts come from, if the worker keeps them.
        self._metrics = metrics
        self._hostname = socket.gethostname()
        self._started_at = utc_now()
        self._poke = trio.Event()

    def changed(self) -> None:
        self._poke.set()

    def set_state(self, state: WorkerState) -> None:
        self.state = state
        self.changed()

    def message(self, state: WorkerState | None = None, *, heartbeat: datetime | None = None) -> bytes:
        load = self._load()
        body = Presence(
            worker_id=self.worker_id,
            hostname=self._hostname,
            version=__version__,
            protocol=PROTOCOL_VERSION,
            state=(state or self.state).value,
            started_at=_stamp(self._started_at),
            heartbeat_at=_stamp(heartbeat or utc_now()),
            heartbeat_interval=self.interval,
            capacity=self.capacity,
            running=load.running,
            queued=load.queued,
            jobs_done=load.jobs_done,
        )
        if self._metrics is not None:
            body.warm_starts = self._metrics.warm_starts
            body.cold_starts = self._metrics.cold_starts
            body.warm_pool_size = self._metrics.warm_pool_size
        return body.model_dump_json().encode()

    def will(self) -> Will:
        """What the broker publishes for us if the connection dies without a goodbye."""
        return Will(self.topic, self.message(WorkerState.OFFLINE), qos=1, retain=True)

    async def run(self) -> None:
        while True:
            await self.session.wait_connected()
            self._poke = trio.Event()
            try:
                await self.session.publish(self.topic, self.message(), qos=1, retain=True)
            except LinkError as exc:
                log.debug("presence not published: %s", exc)
                # The session may not have noticed the loss yet; pause before asking.
                await trio.sleep(0.2)
                continue
            with trio.move_on_after(self.interval):
                await self._poke.wait()

    async def publish_offline(self) -> None:
        """Say goodbye on a clean shutdown, so the retained message does not claim `online`."""
        self.state = WorkerState.OFFLINE
        try:
            await self.session.publish(self.topic, self.message(), qos=1, retain=True)
        except LinkError as exc:
            log.warning("could not publish offline presence: %s", exc)

    def connected(self) -> None:
        """Called by the session after each (re)connection: publish again at once."""
        self.changed()


def _stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
