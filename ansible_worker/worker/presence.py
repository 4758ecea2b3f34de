"""Keep this worker's retained presence message current: state, capacity, load and heartbeat."""

from __future__ import annotations

import enum
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import trio

from ansible_worker import __version__
from ansible_worker.mqtt.link import LinkError, Will
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.protocol.group_messages import Presence
from ansible_worker.protocol.timestamps import format_utc, utc_now
from ansible_worker.worker.liveness import WILL_EXPIRY
from ansible_worker.worker.policies import PresencePolicy

if TYPE_CHECKING:
    # cryptography is loaded only by workers that sign.
    from ansible_worker.protocol.signing import Signer

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1


class Changes:
    """A doorbell for "the load changed": rung by jobs and slots, answered by the announcer."""

    def __init__(self) -> None:
        self._rung = trio.Event()

    def ring(self) -> None:
        """Say that something the presence shows has changed."""
        self._rung.set()

    async def wait(self) -> None:
        """Wait for the next ring since the last `wait` or `clear`. Cancellation: nothing changes."""
        await self._rung.wait()
        self._rung = trio.Event()

    def clear(self) -> None:
        """Forget the rings so far: what is about to be published shows them."""
        if self._rung.is_set():
            self._rung = trio.Event()


class WorkerState(enum.StrEnum):
    """What a worker's presence says it is doing."""

    ONLINE = "online"
    DRAINING = "draining"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class Load:
    """How busy a worker is, as its presence shows it."""

    running: int
    queued: int
    jobs_done: int


class PresenceAnnouncer:
    """Publishes `<prefix>/<group>/workers/<worker_id>` (QoS 1, retained).

    It publishes on every connection (a will message may have said `offline` meanwhile),
    whenever `changed` is called, and at least every `policy.interval` seconds as a heartbeat.
    The will message, set on each connection, says `offline` if the worker vanishes
    (`"stopped": "lost"`); a clean goodbye says `"stopped": "clean"`. With `signer` (signed
    jobs), every presence is signed by the worker key, so that no one else can keep this
    worker alive in the group's eyes.
    """

    def __init__(
        self,
        session: BrokerSession,
        topic: str,
        *,
        worker_id: str,
        policy: PresencePolicy,
        load: Callable[[], Load],
        changes: Changes | None = None,
        metrics: WorkerMetrics | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.session = session
        self._signer = signer
        self.topic = topic
        self.worker_id = worker_id
        self.capacity = policy.capacity
        self.interval = policy.interval
        self.lost_after = policy.lost_after
        self.state = WorkerState.ONLINE
        self._load = load
        # Where the warm and cold start counts come from, if the worker keeps them.
        self._metrics = metrics
        self._hostname = socket.gethostname()
        self._started_at = utc_now()
        self.changes = changes or Changes()
        # Presences published by `round_trip`, waiting to be heard back.
        self._echoes: dict[bytes, trio.Event] = {}
        # The last `issued_at` signed: the group takes a signed presence as a sign of life only
        # when it is newer than the last one, so a clock stepped back must not hold them up.
        self._last_issued: datetime | None = None

    def changed(self) -> None:
        """Publish again soon: the state or the load changed."""
        self.changes.ring()

    def set_state(self, state: WorkerState) -> None:
        """Say `state` from now on, at once."""
        self.state = state
        self.changed()

    def message(
        self,
        state: WorkerState | None = None,
        *,
        heartbeat: datetime | None = None,
        stopped: Literal["clean", "lost"] | None = None,
    ) -> bytes:
        """The presence message now (with `state` instead of the current one, if given), signed with a signer."""
        load = self._load()
        body = Presence(
            worker_id=self.worker_id,
            hostname=self._hostname,
            version=__version__,
            protocol=PROTOCOL_VERSION,
            state=(state or self.state).value,
            started_at=format_utc(self._started_at),
            heartbeat_at=format_utc(heartbeat or utc_now()),
            heartbeat_interval=self.interval,
            capacity=self.capacity,
            running=load.running,
            queued=load.queued,
            jobs_done=load.jobs_done,
            lost_after=self.lost_after,
            stopped=stopped,
        )
        if self._metrics is not None:
            body.warm_starts = self._metrics.warm_starts
            body.cold_starts = self._metrics.cold_starts
            body.warm_pool_size = self._metrics.warm_pool_size
        if self._signer is None:
            return body.model_dump_json().encode()
        document = json.loads(body.model_dump_json(exclude_none=True))
        now = datetime.now(UTC)
        # Signed to the millisecond: compared at that precision.
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if self._last_issued is not None and now <= self._last_issued:
            now = self._last_issued + timedelta(milliseconds=1)
        self._last_issued = now
        return json.dumps(self._signer.sign(self.topic, document, now=now)).encode()

    def will(self) -> Will:
        """What the broker publishes for us if the connection dies without a goodbye.

        With a message expiry of `WILL_EXPIRY`: what is left of it tells a reader how long ago
        the broker published it, on the broker's clock.
        """
        payload = self.message(WorkerState.OFFLINE, stopped="lost")
        return Will(self.topic, payload, qos=1, retain=True, expiry=WILL_EXPIRY)

    async def serve(self) -> None:
        """Publish on each connection, on each change, and every `interval` as a heartbeat, for ever.

        Cancellation: nothing to clean up; `publish_offline` is the goodbye.
        """
        while True:
            await self.session.wait_connected()
            self.changes.clear()
            try:
                await self.session.publish(self.topic, self.message(), qos=1, retain=True)
            except LinkError as exc:
                log.debug("presence not published: %s", exc)
                # The session may not have noticed the loss yet; pause before asking.
                await trio.sleep(0.2)
                continue
            with trio.move_on_after(self.interval):
                await self.changes.wait()

    async def publish_offline(self) -> None:
        """Say goodbye on a clean shutdown, so the retained message does not claim `online`.

        Cancellation: the goodbye may not have reached the broker; the will says `offline`
        if the link then dies without a DISCONNECT.
        """
        self.state = WorkerState.OFFLINE
        try:
            await self.session.publish(self.topic, self.message(stopped="clean"), qos=1, retain=True)
        except LinkError as exc:
            log.warning("could not publish offline presence: %s", exc)

    async def round_trip(self) -> None:
        """Publish the presence and wait to hear it back: the broker has then sent everything it ordered before it.

        Errors: `LinkError` when the link drops first. Cancellation: the caller bounds the wait.
        """
        payload = self.message()
        heard = self._echoes[payload] = trio.Event()
        try:
            await self.session.publish(self.topic, payload, qos=1, retain=True)
            await heard.wait()
        finally:
            self._echoes.pop(payload, None)

    def heard_own(self, payload: bytes) -> None:
        """This worker's own presence came back from the broker."""
        heard = self._echoes.get(payload)
        if heard is not None:
            heard.set()

    def connected(self) -> None:
        """Called by the session after each (re)connection: publish again at once."""
        self.changed()
