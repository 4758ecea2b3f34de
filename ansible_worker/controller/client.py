"""A Trio client for controllers: submit jobs, follow their statuses and events, cancel, forget, list workers.

Example::

    async with open_client(target_from_url("mqtt://broker.example", group="web")) as client:
        job = await client.submit({"playbook": "site.yml", "inventory": "hosts.ini"})
        async for update in job.updates():
            print(update.kind, update.data)
        print((await job.wait())["state"])

The connection outlives a broker restart: when it drops, the client connects again (for up
to `reconnect_for` seconds), subscribes again to everything it follows, and `submit`
publishes an unanswered job again, byte for byte.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import math
import random
import socket
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

import trio

from ansible_worker.controller.shipping import DEFAULT_CONTENT_RETENTION, Progress, Shipment
from ansible_worker.controller.shipping import ship as ship_tree
from ansible_worker.lone_errors import unwrap_lone_errors
from ansible_worker.mqtt.link import InboundMessage, LinkError, LinkLost, LinkOptions, MqttLink, open_mqtt_link
from ansible_worker.protocol.records import RecordError, decode_record
from ansible_worker.protocol.topics import Topics, is_task_id

if TYPE_CHECKING:
    # Only for its type: the client never loads pydantic-settings itself.
    from ansible_worker.ops.config import ClientSettings
    from ansible_worker.protocol.signing import Signer

__all__ = [
    "Client",
    "ClientError",
    "JobHandle",
    "JobLost",
    "NoWorkerAnswered",
    "SigningKeyError",
    "Target",
    "Update",
    "load_signer",
    "open_client",
    "target_from_settings",
    "target_from_url",
]

log = logging.getLogger(__name__)

TERMINAL_STATES = frozenset({"success", "failed", "cancelled", "timeout"})
# `submit`: give up when no worker answered within ANSWER_WITHIN seconds in all; publish the
# job again each time RETRY_AFTER seconds pass without an answer.
ANSWER_WITHIN = 10.0
RETRY_AFTER = 5.0
# How long a client whose connection dropped keeps trying to connect again.
RECONNECT_FOR = 60.0
BARRIER_WITHIN = 10.0
_BACKOFF_INITIAL = 0.1
_BACKOFF_MAX = 2.0
_BUFFER = 100_000


class ClientError(Exception):
    """Something a controller should be told about in plain words."""


class NoWorkerAnswered(ClientError):
    """A submitted job got no `queued` status in time: no worker of the group is listening."""


class SigningKeyError(ClientError):
    """The signing key named by the settings or the command line cannot be used."""


class JobLost(ClientError):
    """The worker holding the job went offline (its will message) before the job ended."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the workers are: a broker connection and the group's topics.

    With a `signer`, jobs and cancel requests are signed (for workers that require it).
    """

    link: LinkOptions
    topics: Topics
    signer: Signer | None = None


def target_from_url(url: str, *, group: str, prefix: str = "ansible", ca_cert: Path | None = None) -> Target:
    """`mqtt://[user[:password]@]host[:port]` or `mqtts://…` (TLS, port 8883 by default)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ClientError(f"broker URL must start with mqtt:// or mqtts://, not {url.split('://')[0]!r}")
    if not parts.hostname:
        raise ClientError(f"broker URL has no host: {url!r}")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ClientError(f"broker URL has an invalid port: {exc}") from None
    link = LinkOptions(
        host=parts.hostname,
        port=port,
        client_id=_client_id(),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls_enabled=tls,
        tls_ca_cert=ca_cert,
    )
    return Target(link, Topics(prefix, group))


def target_from_settings(settings: ClientSettings) -> Target:
    """The broker and group of a config file, and its `security.signing_key` if it names one.

    Errors: `ClientError` when the signing key cannot be read.
    """
    # Never the workers' own client_id from their file: the broker would drop one of us.
    link = settings.mqtt.link_options(client_id=_client_id())
    signing_key = settings.security.signing_key
    signer = load_signer(signing_key) if signing_key is not None else None
    return Target(link, Topics(settings.worker.topic_prefix, settings.worker.group_name), signer)


def load_signer(path: Path) -> Signer:
    """A signer for the private key in `path`. Errors: `ClientError` saying why it cannot be used."""
    from ansible_worker.protocol.signing import KeyFileError, Signer

    try:
        return Signer.from_file(path)
    except KeyFileError as exc:
        raise SigningKeyError(f"signing key: {exc}") from None


def _client_id() -> str:
    return f"ansible-worker-client-{uuid.uuid4().hex[:12]}"


def default_requester() -> str:
    """`user@host` of this process: who a cancel request says asked for it when the caller names nobody."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class Update:
    """One thing heard about a job, in arrival order: a status, a live event, or that it was
    lost (its worker went offline before the job ended; `data` is that worker's presence)."""

    kind: Literal["status", "event", "lost"]
    data: dict[str, Any]
    retained: bool = False


def _checked_task_id(task_id: object) -> str:
    """`task_id`, if it may name a job's topics. Errors: `ValueError` saying what a task_id is.

    A job's topics and filters are built from its task_id: a `+` or `#` in one would follow
    other jobs, or make the broker library refuse the filter.
    """
    if not is_task_id(task_id):
        raise ValueError(f"not a task_id: {str(task_id)[:140]!r} (1 to 128 of A-Z, a-z, 0-9, '.', '_', '-')")
    return str(task_id)


def _matches(topic_filter: str, topic: str) -> bool:
    filter_levels, topic_levels = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or (level != "+" and level != topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)


class Client:
    """One connection to the broker shared by everything a controller does.

    Subscriptions are counted, so several handles may follow the same job. Messages are
    routed to their subscribers by a reader task; a subscriber that falls more than
    100,000 messages behind loses the excess rather than stalling the others.

    When the connection drops, `stay_connected` opens a new one with a short backoff and
    subscribes to every filter in use before anything is published on it; `connections`
    counts the links so far. Calls that need the broker wait for the next link meanwhile.
    """

    def __init__(self, topics: Topics, client_id: str, *, signer: Signer | None = None) -> None:
        self.topics = topics
        self.client_id = client_id
        self.signer = signer
        self.connections = 0
        self._link: MqttLink | None = None
        self._changed = trio.Event()
        self._routes: list[tuple[str, trio.MemorySendChannel[InboundMessage]]] = []
        self._senders: dict[int, trio.MemorySendChannel[InboundMessage]] = {}
        self._subscribed: dict[str, int] = {}
        self._qos: dict[str, int] = {}

    @property
    def link(self) -> MqttLink:
        """The current connection. Errors: `LinkLost` while the client is reconnecting."""
        if self._link is None:
            raise LinkLost("not connected to the broker (reconnecting)")
        return self._link

    @property
    def connected(self) -> bool:
        """Whether a link is up now (False while the client is reconnecting)."""
        return self._link is not None

    async def current_link(self) -> MqttLink:
        """The current connection, waiting for the next one while reconnecting.

        Cancellation: nothing was changed, so it is safe to call again.
        """
        while self._link is None:
            await self._changed.wait()
        return self._link

    async def wait_disconnected(self) -> None:
        """Return once the current connection has dropped (at once while reconnecting).

        Cancellation: waits without bound; the caller's scope ends the wait.
        """
        while self._link is not None:
            await self._changed.wait()

    async def wait_connection_after(self, connection: int) -> None:
        """Return once a connection newer than number `connection` is up (subscriptions renewed).

        Cancellation: nothing was changed, so it is safe to call again.
        """
        while self.connections <= connection or self._link is None:
            await self._changed.wait()

    def _set_link(self, link: MqttLink | None) -> None:
        self._link = link
        if link is not None:
            self.connections += 1
        self._changed.set()
        self._changed = trio.Event()

    async def stay_connected(
        self,
        options: LinkOptions,
        *,
        reconnect_for: float,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Own the links: the first one (its failure is raised), then a new one whenever it drops.

        Before a link becomes `link`, every filter in use is subscribed to on it; `task_status` is
        reported started once the client's first link ever is up, and never again.

        Errors: the first link's `ConnectFailed` (or `SubscribeRefused`); `LinkLost` when the link drops and
        `reconnect_for` is 0; `ClientError` when no new link came up within `reconnect_for`.

        Cancellation: the current link is closed with a DISCONNECT (shielded and bounded by
        `open_mqtt_link`, so the broker sends no will) and `link` is unset: callers waiting in
        `current_link` keep waiting. Registrations and subscription counts stay, so a later call
        subscribes to them again; but after the first link, it never reports `task_status` started.
        """
        where = f"{options.host}:{options.port}"
        failures = 0
        lost_at: float | None = None
        up_since: float | None = None
        while True:
            reason = "connection closed"
            try:
                async with open_mqtt_link(options) as link:
                    # Before the link is current: whatever is published on it comes after
                    # every subscription and its retained messages.
                    for topic_filter in list(self._subscribed):
                        qos = self._qos.get(topic_filter)
                        if qos is not None:  # else unsubscribed meanwhile
                            await link.subscribe(topic_filter, qos)
                    self._set_link(link)
                    if self.connections == 1:
                        task_status.started()
                    else:
                        log.warning("reconnected to the broker %s", where)
                    up_since = trio.current_time()
                    async for message in link.messages():
                        self._route(message)
            except LinkError as exc:
                if self.connections == 0 or reconnect_for <= 0:
                    raise
                reason = str(exc) or type(exc).__name__
            finally:
                if self._link is not None:
                    self._set_link(None)
            now = trio.current_time()
            # Only a link that stayed up a while resets the backoff and the reconnect budget:
            # a broker that accepts and drops at once must not be retried ten times a second for ever.
            if up_since is not None and now - up_since >= _BACKOFF_MAX:
                failures, lost_at = 0, None
            up_since = None
            lost_at = now if lost_at is None else lost_at
            if now - lost_at >= reconnect_for:
                raise ClientError(
                    f"lost the broker {where} and could not connect again within {reconnect_for:g}s: {reason}"
                )
            delay = min(_BACKOFF_MAX, _BACKOFF_INITIAL * 2**failures) * random.uniform(0.5, 1.0)
            # A warning when the link drops; the attempts after it only at INFO.
            log.log(
                logging.INFO if failures else logging.WARNING,
                "lost the broker %s (%s); connecting again in %.1fs",
                where,
                reason,
                delay,
            )
            failures += 1
            await trio.sleep(delay)

    def _route(self, message: InboundMessage) -> None:
        for topic_filter, channel in list(self._routes):
            if _matches(topic_filter, message.topic):
                # A subscriber far behind, or gone, must not stall the others.
                with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    channel.send_nowait(message)

    def register(self, filters: list[str], qos: int = 1) -> trio.MemoryReceiveChannel[InboundMessage]:
        """Route messages on `filters` to a new channel and count them as in use, without waiting.

        `renew` then subscribes on the current link; any later link subscribes by itself.
        """
        send, receive = trio.open_memory_channel[InboundMessage](_BUFFER)
        self._senders[id(receive)] = send
        for topic_filter in filters:
            self._routes.append((topic_filter, send))
            self._subscribed[topic_filter] = self._subscribed.get(topic_filter, 0) + 1
            self._qos[topic_filter] = max(qos, self._qos.get(topic_filter, 0))
        return receive

    async def renew(self, filters: list[str], qos: int = 1) -> None:
        """Subscribe to `filters` on the current link, so the broker sends their retained messages.

        A link that drops meanwhile is not an error: the next link subscribes to every filter in use.
        Errors: `SubscribeRefused` when the broker refuses a filter.

        Cancellation: the filters stay registered and counted; the subscriptions sent so far hold,
        the one in flight may or may not. Safe to retry: subscribing again only makes the broker
        send the retained messages again.
        """
        for topic_filter in filters:
            link = await self.current_link()
            # A link that drops here is replaced by one that subscribes to every filter in use.
            with suppress(LinkLost):
                # Subscribing again is what makes the broker send the retained message to this
                # new subscriber; the count only decides when to unsubscribe.
                await link.subscribe(topic_filter, qos)

    async def subscribe(self, filters: list[str], qos: int = 1) -> trio.MemoryReceiveChannel[InboundMessage]:
        """Receive every message on `filters` (retained ones first) until `unsubscribe`.

        Errors: as `renew`; the registration is undone first.

        Cancellation: `unsubscribe` runs before the cancellation propagates: the routes and counts
        are undone, the channel closed, and the broker told (shielded) to drop the filters no
        longer in use. Nothing is left to clean up; safe to retry.
        """
        receive = self.register(filters, qos)
        try:
            await self.renew(filters, qos)
        except BaseException:
            await self.unsubscribe(filters, receive)
            raise
        return receive

    async def unsubscribe(self, filters: list[str], receive: trio.MemoryReceiveChannel[InboundMessage]) -> None:
        """Stop routing to `receive` and close it; unsubscribe at the broker from filters no one uses any more.

        Call it once per channel that `register` or `subscribe` returned: a second call raises `KeyError`.
        The broker is told while the link is up, each UNSUBSCRIBE bounded to 5 seconds; errors of a
        dropped link are ignored (the next link does not subscribe to the filter anyway).

        Cancellation: cannot interrupt it. The routes, counts and channel are dropped before the
        first checkpoint, and the UNSUBSCRIBEs run shielded.
        """
        send = self._senders.pop(id(receive))
        self._routes = [(f, channel) for f, channel in self._routes if channel is not send]
        send.close()
        receive.close()
        for topic_filter in filters:
            self._subscribed[topic_filter] -= 1
            if self._subscribed[topic_filter] == 0:
                del self._subscribed[topic_filter]
                del self._qos[topic_filter]
                if self._link is not None:
                    with trio.CancelScope(shield=True), trio.move_on_after(5), suppress(LinkError):
                        await self._link.unsubscribe(topic_filter)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool = False, expiry: int | None = None
    ) -> None:
        """Publish on the current link, waiting for one while reconnecting; `expiry` in seconds.

        Errors: `LinkLost` when the link drops before the broker acknowledged.

        Cancellation: while it waits for a link, nothing was published. Once the publish started,
        the message may or may not reach the broker (paho may already hold it in its queue and
        send it anyway): publishing again may deliver it twice. Repeating a retained status or an
        empty retained payload changes nothing.
        """
        link = await self.current_link()
        await link.publish(topic, payload, qos=qos, retain=retain, expiry=expiry)

    async def barrier(self) -> None:
        """Return once the broker has delivered the retained messages of every earlier subscription.

        The broker sends retained messages while it handles a SUBSCRIBE, so a message we
        publish after subscribing comes back after them. On a new link, the marker goes again.

        Errors: `trio.TooSlowError` when the marker has not come back within `BARRIER_WITHIN` seconds.

        Cancellation: the client's sync subscription is removed (as by `unsubscribe`); a marker
        already published may still come back, to nobody. Safe to retry.
        """
        topic = f"{self.topics.prefix}/{self.topics.group}/clients/{self.client_id}/sync"
        marker = uuid.uuid4().hex.encode()
        receive = await self.subscribe([topic], qos=1)
        try:
            with trio.fail_after(BARRIER_WITHIN):
                while True:
                    link = await self.current_link()
                    connection = self.connections
                    with suppress(LinkLost):
                        await link.publish(topic, marker, qos=1)
                    if await self.receive_unless_reconnected(receive, lambda m: m.payload == marker, connection):
                        return
        finally:
            await self.unsubscribe([topic], receive)

    async def receive_unless_reconnected(
        self,
        receive: trio.MemoryReceiveChannel[InboundMessage],
        wanted: Callable[[InboundMessage], bool],
        connection: int,
    ) -> bool:
        """Wait for a `wanted` message: True; or for a link newer than number `connection`: False.

        The messages before the wanted one are taken from `receive` and dropped.

        Cancellation: the messages taken so far are gone from `receive`; nothing else changed.
        """
        found = False
        with unwrap_lone_errors():
            async with trio.open_nursery() as nursery:

                async def on_reconnect() -> None:
                    await self.wait_connection_after(connection)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(on_reconnect)
                async for message in receive:
                    if wanted(message):
                        found = True
                        break
                nursery.cancel_scope.cancel()
        return found

    async def submit(
        self,
        job: Mapping[str, Any],
        *,
        answer_within: float = ANSWER_WITHIN,
        events: bool = True,
        retry_after: float = RETRY_AFTER,
        attempts: int | None = None,
        ship: Path | None = None,
        ship_retention: int = DEFAULT_CONTENT_RETENTION,
        ship_progress: Progress | None = None,
    ) -> JobHandle:
        """Publish a job and wait until a worker answers it (normally with `queued`).

        A `task_id` is made up when the job has none. The status topic is subscribed to
        before the first publish; any status of the job counts as the answer, also a
        retained one (a job of that `task_id` is known to the group already). Each time
        `retry_after` seconds pass without an answer, and whenever the connection was lost
        before one came, the same bytes are published again (same `task_id`, same
        signature: never re-signed), at most `attempts` times in all (default: as many as
        fit into `answer_within`). Each repeat is logged as a warning;
        `handle.attempts` says how many publishes it took.

        With `ship`, that directory is packed and retained on the group's content topic of
        its digest (unless the broker holds it already), and the job names it as its
        `content`, before it is signed; `handle.shipment` says what was shipped.

        With a signer, the job is published as it is signed (a whole number as an integer),
        and a job with no canonical form to sign (a number beyond 2**53, NaN, a lone
        surrogate) raises `SignatureRefused` before anything is published.

        Errors: `NoWorkerAnswered` when no status comes within `answer_within` seconds;
        the broker then delivered the job to nobody, so nothing will run. `ValueError` for a
        `retry_after` that is not positive, `attempts` below 1 or a `task_id` that is not one.
        `ShipError` for a directory that cannot be packed.

        Cancellation: the handle is closed (its subscriptions removed) and not returned. A job
        already published is not withdrawn: a worker may run it. To retry, give the job a
        `task_id` of its own: a made-up one is new on each call, so the retry would be a second
        job; with the same `task_id`, a status the first publish got answers the retry at once.
        """
        if retry_after <= 0:
            raise ValueError(f"retry_after must be positive, not {retry_after!r}")
        if attempts is not None and attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts!r}")
        request = dict(job)
        request.setdefault("task_id", f"job-{uuid.uuid4().hex[:12]}")
        _checked_task_id(request["task_id"])
        shipment: Shipment | None = None
        if ship is not None:
            shipment = await ship_tree(self, ship, retention=ship_retention, progress=ship_progress)
            request["content"] = shipment.content
        if self.signer is not None:
            request = self.signer.sign(self.topics.tasks, request)
        payload = json.dumps(request).encode()
        most = attempts
        if most is None and math.isfinite(answer_within / retry_after):
            most = max(1, math.ceil(answer_within / retry_after))
        handle = JobHandle(self, str(request["task_id"]), events=events)
        handle.shipment = shipment
        answered = False
        try:
            with trio.move_on_after(answer_within):
                await handle.open()
                await self._publish_until_answered(handle, payload, retry_after=retry_after, most=most)
                answered = True
        except BaseException:
            await handle.close()
            raise
        if not answered:
            await handle.close()
            raise NoWorkerAnswered(self._unanswered(answer_within, handle.attempts))
        return handle

    async def _publish_until_answered(
        self, handle: JobHandle, payload: bytes, *, retry_after: float, most: int | None
    ) -> None:
        reason = ""
        while True:
            if most is None or handle.attempts < most:
                if handle.attempts:
                    of = "" if most is None else f" of {most}"
                    log.warning(
                        "%s; publishing task %s again (attempt %d%s)", reason, handle.task_id, handle.attempts + 1, of
                    )
                link = await self.current_link()
                connection = self.connections
                handle.attempts += 1
                # A link that drops in the middle is replaced, and the job published again on it.
                with suppress(LinkLost):
                    await link.publish(self.topics.tasks, payload, qos=2)
                within = retry_after
            else:
                connection, within = self.connections, math.inf
            outcome = await handle.wait_answer(within, connection)
            if outcome == "answered":
                return
            if outcome == "reconnected":
                # The new link's subscriptions bring a status the job got meanwhile.
                with suppress(trio.TooSlowError):
                    await self.barrier()
                handle.take_arrived()
                if handle.latest is not None:
                    return
                reason = "the connection to the broker was lost before a worker answered"
            else:
                reason = f"no worker answered within {retry_after:g}s"

    def _unanswered(self, within: float, attempts: int) -> str:
        group = self.topics.group
        if not self.connected:
            return (
                f"no worker of group {group!r} answered within {within:g}s: the connection to the broker"
                " was lost and has not come back, so the job may have reached nobody"
            )
        times = f"{attempts} attempt{'' if attempts == 1 else 's'}"
        return (
            f"no worker of group {group!r} answered within {within:g}s ({times}): none is connected to this"
            f" broker and subscribed to {self.topics.tasks}, so the job went to nobody"
        )

    async def follow(self, task_id: str, *, events: bool = True) -> JobHandle:
        """A handle on a job, wherever it is now; its retained status comes first, if any.

        With `events=False` only statuses are received, which spares the broker and this
        client a busy job's live events. Errors: `ValueError` for a `task_id` that is not one.

        Cancellation: the handle is closed (its routes and subscriptions removed) before the
        cancellation goes on; nothing is left behind, and retrying is safe.
        """
        handle = JobHandle(self, task_id, events=events)
        try:
            await handle.open()
        except BaseException:
            await handle.close()
            raise
        return handle

    async def status(self, task_id: str) -> dict[str, Any] | None:
        """The job's retained status, or None if the broker holds none.

        Errors: `trio.TooSlowError` from `barrier`; `ValueError` for a `task_id` that is not one.

        Cancellation: the handle is closed either way. Nothing changes at the broker; safe to retry.
        """
        handle = await self.follow(task_id)
        try:
            await self.barrier()
            handle.take_arrived()
            return handle.latest
        finally:
            await handle.close()

    async def cancel(self, task_id: str, *, reason: str | None = None, requested_by: str | None = None) -> None:
        """Ask the group's workers to cancel job `task_id` (signed, with a `signer`); do not wait for it to end.

        `requested_by` defaults to `default_requester()`. Errors: as `publish`; `ValueError` for a
        `task_id` that is not one.

        Cancellation: as `publish`: the request may or may not have been published, and a
        retry publishes another request (with a signature of its own) for the same job.
        """
        body = {"reason": reason, "requested_by": requested_by or default_requester()}
        request = {key: value for key, value in body.items() if value is not None}
        topic = self.topics.cancel(_checked_task_id(task_id))
        if self.signer is not None:
            request = self.signer.sign(topic, request)
        await self.publish(topic, json.dumps(request).encode(), qos=1)

    async def forget(self, task_id: str) -> None:
        """Clear the job's retained status (and its record) from the broker.

        Errors: as `publish`; `ValueError` for a `task_id` that is not one.

        Cancellation: as `publish`: the status may or may not be cleared yet. Safe to retry:
        clearing it twice is clearing it once.
        """
        _checked_task_id(task_id)
        await self.publish(self.topics.status(task_id), b"", qos=1, retain=True)
        await self.publish(self.topics.record(task_id), b"", qos=1, retain=True)

    async def record(self, task_id: str) -> dict[str, Any] | None:
        """The finished job's record (final status, events, Ansible's output), or None if the broker holds none.

        Errors: `ClientError` when the retained payload is not a readable record, or is not
        this job's: its `task_id` and its status's must both be `task_id`; `trio.TooSlowError`
        from `barrier`; `ValueError` for a `task_id` that is not one.

        Cancellation: the record subscription is removed (as by `unsubscribe`); nothing changes
        at the broker, and retrying is safe.
        """
        topic = self.topics.record(_checked_task_id(task_id))
        receive = await self.subscribe([topic])
        try:
            await self.barrier()
            payload = b""
            while True:
                try:
                    payload = receive.receive_nowait().payload
                except trio.WouldBlock:
                    break
            if not payload:
                return None
            try:
                document = decode_record(payload)
            except RecordError as exc:
                raise ClientError(f"{topic}: {exc}") from None
            # A record names its job: one retained under another job's topic is not this job's.
            if document["status"].get("task_id") != task_id:
                raise ClientError(f"{topic}: not a job record of {task_id}: it is the record of another job")
            # Both names, since readers name what they write by one or the other.
            if document.get("task_id") != task_id:
                named = str(document.get("task_id"))[:200]
                raise ClientError(f"{topic}: not a job record of {task_id}: its task ids disagree ({named!r})")
            return document
        finally:
            await self.unsubscribe([topic], receive)

    async def jobs(
        self, *, state: str | None = None, playbook: str | None = None, since: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The group's jobs from their retained statuses, newest first, filtered as asked.

        `state` is one state or a comma-separated list; `playbook` matches exactly or as a
        shell-style pattern (`deploy/*`); `since` keeps the jobs created (else started) then or later.

        Errors: `trio.TooSlowError` from `barrier`.

        Cancellation: the status subscription is removed (as by `unsubscribe`); nothing is
        left behind, and it is safe to call again.
        """
        found: dict[str, dict[str, Any]] = {}
        for message in await self._retained(self.topics.status_subscription):
            task_id = self.topics.task_id_of_status(message.topic)
            if task_id is None:
                continue
            status = _decode(message.payload)
            if status is None:
                found.pop(task_id, None)
            else:
                found[task_id] = status
        # Here, not at the top: the history module draws tables with the view, which needs this module.
        from ansible_worker.controller.history import select_jobs

        return select_jobs(list(found.values()), state=state, playbook=playbook, since=since)

    async def wait_for_worker(self, worker_id: str | None = None) -> dict[str, Any]:
        """Wait until a worker of the group (or the one named) says it is online; its presence.

        Publishing a job before any worker subscribed would reach nobody: a controller
        that starts workers itself waits here first. Put a bound on it at the call.

        Errors: `ClientError` when the client ends meanwhile.

        Cancellation: the presence subscription is removed (as by `unsubscribe`); nothing is
        left behind, and it is safe to call again.
        """
        topic_filter = self.topics.worker(worker_id) if worker_id else self.topics.workers_subscription
        receive = await self.subscribe([topic_filter])
        try:
            async for message in receive:
                presence = _decode(message.payload)
                if presence is not None and presence.get("state") == "online":
                    return presence
            raise ClientError("the connection to the broker was closed")
        finally:
            await self.unsubscribe([topic_filter], receive)

    async def workers(self) -> list[dict[str, Any]]:
        """The retained presence messages of the group's workers, sorted by worker id.

        Errors: `trio.TooSlowError` from `barrier`.

        Cancellation: the presence subscription is removed (as by `unsubscribe`); nothing is
        left behind, and it is safe to call again.
        """
        found: dict[str, dict[str, Any]] = {}
        for message in await self._retained(self.topics.workers_subscription):
            presence = _decode(message.payload)
            if presence is not None:
                found[message.topic.rsplit("/", 1)[-1]] = presence
        return [found[key] for key in sorted(found)]

    async def _retained(self, topic_filter: str) -> list[InboundMessage]:
        """The messages the broker holds for `topic_filter` now (retained ones), in the order it sent them.

        Cancellation: the subscription is removed; nothing is left behind.
        """
        receive = await self.subscribe([topic_filter])
        messages: list[InboundMessage] = []
        try:
            await self.barrier()
            while True:
                try:
                    messages.append(receive.receive_nowait())
                except trio.WouldBlock:
                    return messages
        finally:
            await self.unsubscribe([topic_filter], receive)


class JobHandle:
    """Follow one job. Use `async with` (or `close`) to stop listening."""

    def __init__(self, client: Client, task_id: str, *, events: bool = True) -> None:
        self.client = client
        self.task_id = _checked_task_id(task_id)
        self.latest: dict[str, Any] | None = None
        # How many times `Client.submit` published the job (0 for a followed one).
        self.attempts = 0
        # What `Client.submit` shipped with the job, if anything.
        self.shipment: Shipment | None = None
        self._filters = [client.topics.status(task_id), client.topics.workers_subscription]
        if events:
            self._filters.append(client.topics.events(task_id))
        self._offline: set[str] = set()
        self._receive: trio.MemoryReceiveChannel[InboundMessage] | None = None
        self._backlog: deque[Update] = deque()
        self._finished = False

    async def open(self) -> None:
        """Register the handle's filters with the client, then subscribe to them on the current link.

        Cancellation: the registration stays, and `close` undoes it; call `close`, not
        `open` again (a second `open` would leave the first registration behind).
        """
        # Registered before waiting, so that `close` undoes it even if the wait is cancelled.
        self._receive = self.client.register(self._filters)
        await self.client.renew(self._filters)

    async def close(self) -> None:
        """Stop listening: remove the handle's routes and subscriptions. Closing twice is harmless.

        Cancellation: cannot interrupt it: the unsubscribe runs shielded (each UNSUBSCRIBE to
        the broker bounded to 5 seconds), so the handle is closed when it returns or raises.
        """
        if self._receive is not None:
            receive, self._receive = self._receive, None
            with trio.CancelScope(shield=True):
                await self.client.unsubscribe(self._filters, receive)

    async def __aenter__(self) -> JobHandle:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def finished(self) -> bool:
        """Whether the terminal status, or the loss of the job's worker, has been received.

        It may still wait in the backlog for `next_update`.
        """
        return self._finished

    async def wait_answered(self, within: float) -> None:
        """Wait for a status of the job; a retained one counts (the group knows the job).

        Errors: `NoWorkerAnswered` when none arrives within `within` seconds.

        Cancellation: every update received meanwhile is kept in the backlog for
        `next_update`; nothing is lost, and it is safe to call again.
        """
        with trio.move_on_after(within):
            while self.latest is None:
                self._backlog.append(await self._next_update())
            return
        raise NoWorkerAnswered(self.client._unanswered(within, self.attempts))

    async def wait_answer(self, within: float, connection: int) -> Literal["answered", "timeout", "reconnected"]:
        """Wait up to `within` seconds for a status of the job (retained ones count).

        Also returns, with "reconnected", when a link newer than number `connection` is up:
        what was published before may have been lost with the old one.

        Cancellation: every update received meanwhile is kept in the backlog for
        `next_update`; nothing is lost, and it is safe to call again.
        """
        reconnected = False
        with trio.move_on_after(within), unwrap_lone_errors():
            async with trio.open_nursery() as nursery:

                async def on_reconnect() -> None:
                    nonlocal reconnected
                    await self.client.wait_connection_after(connection)
                    reconnected = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(on_reconnect)
                while self.latest is None:
                    self._backlog.append(await self._next_update())
                nursery.cancel_scope.cancel()
        if self.latest is not None:
            return "answered"
        return "reconnected" if reconnected else "timeout"

    def updates(self) -> AsyncIterator[Update]:
        """Statuses and events in the order they arrive, ending with the terminal status.

        Stopping early is fine: what was not read stays for the next iteration.
        """
        return _Updates(self, statuses_only=False)

    def statuses(self) -> AsyncIterator[dict[str, Any]]:
        """Only the statuses, ending with the terminal one."""
        return _StatusData(_Updates(self, statuses_only=True))

    async def next_update(self) -> Update | None:
        """The next status or event, or None once the terminal status has been passed on.

        Errors: `ClientError` when the handle is closed or the client ended.

        Cancellation: no update is lost: a message leaves the channel only when the call
        returns it. Safe to call again.
        """
        if self._backlog:
            return self._backlog.popleft()
        if self._finished:
            return None
        return await self._next_update()

    async def wait(self) -> dict[str, Any]:
        """Wait for the terminal status and return it.

        Errors: `JobLost` if the job's worker went offline before the job ended.

        Cancellation: the updates read so far are consumed (`latest` keeps the last status);
        calling it again waits for the rest.
        """
        async for update in self.updates():
            if update.kind == "lost":
                raise JobLost(lost_message(self.task_id, update.data))
        assert self.latest is not None
        return self.latest

    async def cancel(self, *, reason: str | None = None, requested_by: str | None = None) -> None:
        """Ask for this job to be cancelled, as `Client.cancel`; do not wait for it to end.

        Cancellation: as `Client.cancel`.
        """
        await self.client.cancel(self.task_id, reason=reason, requested_by=requested_by)

    def take_arrived(self) -> None:
        """Move what has already arrived into the backlog, without waiting."""
        while self._receive is not None:
            try:
                message = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            update = self._interpret(message)
            if update is not None:
                self._backlog.append(update)

    async def _next_update(self) -> Update:
        if self._receive is None:
            raise ClientError(f"the handle on {self.task_id} is closed")
        while True:
            try:
                message = await self._receive.receive()
            except trio.EndOfChannel:
                raise ClientError("the connection to the broker was closed") from None
            update = self._interpret(message)
            if update is not None:
                return update

    def _interpret(self, message: InboundMessage) -> Update | None:
        data = _decode(message.payload)
        if data is None:
            return None
        if message.topic.endswith("/status"):
            if data.get("refused") and ((self.latest or {}).get("state") in ("queued", "running") or self.attempts > 1):
                # A refused message that reused this job's task_id (a replay, a forgery, or
                # our own second copy refused by a worker that does not hold the job): it
                # says nothing about the job a worker accepted.
                return None
            self.latest = data
            self._finished = data.get("state") in TERMINAL_STATES
            if not self._finished and data.get("worker_id") in self._offline:
                return self._lost({"worker_id": data["worker_id"], "state": "offline"})
            return Update("status", data, message.retain)
        if message.topic.endswith("/events"):
            return Update("event", data, message.retain)
        return self._presence(message.topic.rsplit("/", 1)[-1], data)

    def _presence(self, worker_id: str, presence: dict[str, Any]) -> Update | None:
        if presence.get("state") != "offline":
            self._offline.discard(worker_id)
            return None
        self._offline.add(worker_id)
        latest = self.latest or {}
        if self._finished or latest.get("worker_id") != worker_id:
            return None
        return self._lost(presence)

    def _lost(self, presence: dict[str, Any]) -> Update:
        self._finished = True
        return Update("lost", presence)


class _Updates:
    # A class rather than an async generator: a caller may stop at any point without
    # leaving a half-run generator for the garbage collector to finalise.
    def __init__(self, handle: JobHandle, *, statuses_only: bool) -> None:
        self._handle = handle
        self._statuses_only = statuses_only

    def __aiter__(self) -> _Updates:
        return self

    async def __anext__(self) -> Update:
        while True:
            update = await self._handle.next_update()
            if update is None:
                raise StopAsyncIteration
            if update.kind == "status" or not self._statuses_only:
                return update


class _StatusData:
    def __init__(self, updates: _Updates) -> None:
        self._updates = updates

    def __aiter__(self) -> _StatusData:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return (await self._updates.__anext__()).data


def lost_message(task_id: str, presence: dict[str, Any]) -> str:
    """The plain words of a `JobLost`: job `task_id` is lost, as the worker of `presence` went offline."""
    return (
        f"job {task_id} is lost: its worker {presence.get('worker_id')} went offline before the job ended"
        " (it may report the job when it comes back with the same state_dir)"
    )


def _decode(payload: bytes) -> dict[str, Any] | None:
    if not payload:
        return None  # a cleared retained message
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


@asynccontextmanager
async def open_client(target: Target, *, reconnect_for: float = RECONNECT_FOR) -> AsyncIterator[Client]:
    """Connect to the broker; the client and every handle stop working when the block ends.

    When the connection drops (a broker restart), the client connects again with a short
    backoff and subscribes again to everything in use; calls that need the broker wait
    meanwhile. `reconnect_for=0` gives up at once, as a client of a single connection.

    Errors: `ClientError` when the broker cannot be reached at first, or not again within
    `reconnect_for` seconds after the connection dropped.

    Cancellation: while connecting, the attempt is abandoned with the link's asyncio loop.
    Once the block runs, cancelling it ends the client: the link is closed with a DISCONNECT
    (shielded and bounded, so the broker sends no will). A job already published runs on.
    """
    # A client id of its own for every connection: the broker disconnects the older of two
    # connections that share one, so one Target may serve several clients at once.
    options = dataclasses.replace(target.link, client_id=_client_id())
    try:
        with unwrap_lone_errors():
            async with trio.open_nursery() as nursery:
                client = Client(target.topics, options.client_id, signer=target.signer)
                await nursery.start(partial(client.stay_connected, options, reconnect_for=reconnect_for))
                yield client
                nursery.cancel_scope.cancel()
    except LinkError as exc:
        raise ClientError(f"broker {target.link.host}:{target.link.port}: {exc}") from exc
