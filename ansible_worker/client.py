"""A Trio client for controllers: submit jobs, follow their statuses and events, cancel, forget, list workers.

Example::

    async with open_client(target_from_url("mqtt://broker.example", group="web")) as client:
        job = await client.submit({"playbook": "site.yml", "inventory": "hosts.ini"})
        async for update in job.updates():
            print(update.kind, update.data)
        print((await job.wait())["state"])
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import socket
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

import trio

from ansible_worker.config import ClientSettings
from ansible_worker.lone_errors import unwrap_lone_errors
from ansible_worker.mqtt_link import InboundMessage, LinkError, LinkOptions, MqttLink, open_mqtt_link
from ansible_worker.topics import Topics

if TYPE_CHECKING:
    from ansible_worker.signing import Signer

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

TERMINAL_STATES = frozenset({"success", "failed", "cancelled", "timeout"})
ANSWER_WITHIN = 10.0
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
    from ansible_worker.signing import KeyFileError, Signer

    try:
        return Signer.from_file(path)
    except KeyFileError as exc:
        raise SigningKeyError(f"signing key: {exc}") from None


def _client_id() -> str:
    return f"ansible-worker-client-{uuid.uuid4().hex[:12]}"


def default_requester() -> str:
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
    """

    def __init__(self, link: MqttLink, topics: Topics, client_id: str, *, signer: Signer | None = None) -> None:
        self.link = link
        self.topics = topics
        self.client_id = client_id
        self.signer = signer
        self._routes: list[tuple[str, trio.MemorySendChannel[InboundMessage]]] = []
        self._senders: dict[int, trio.MemorySendChannel[InboundMessage]] = {}
        self._subscribed: dict[str, int] = {}

    async def route_messages(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for message in self.link.messages():
            for topic_filter, channel in list(self._routes):
                if _matches(topic_filter, message.topic):
                    # A subscriber far behind, or gone, must not stall the others.
                    with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                        channel.send_nowait(message)

    async def subscribe(self, filters: list[str], qos: int = 1) -> trio.MemoryReceiveChannel[InboundMessage]:
        """Receive every message on `filters` (retained ones first) until `unsubscribe`."""
        send, receive = trio.open_memory_channel[InboundMessage](_BUFFER)
        self._senders[id(receive)] = send
        for topic_filter in filters:
            self._routes.append((topic_filter, send))
            self._subscribed[topic_filter] = self._subscribed.get(topic_filter, 0) + 1
            # Subscribing again is what makes the broker send the retained message to this
            # new subscriber; the count only decides when to unsubscribe.
            await self.link.subscribe(topic_filter, qos)
        return receive

    async def unsubscribe(self, filters: list[str], receive: trio.MemoryReceiveChannel[InboundMessage]) -> None:
        send = self._senders.pop(id(receive))
        self._routes = [(f, channel) for f, channel in self._routes if channel is not send]
        send.close()
        receive.close()
        for topic_filter in filters:
            self._subscribed[topic_filter] -= 1
            if self._subscribed[topic_filter] == 0:
                del self._subscribed[topic_filter]
                with trio.move_on_after(5):
                    await self.link.unsubscribe(topic_filter)

    async def barrier(self) -> None:
        """Return once the broker has delivered the retained messages of every earlier subscription.

        The broker sends retained messages while it handles a SUBSCRIBE, so a message we
        publish after subscribing comes back after them.
        """
        topic = f"{self.topics.prefix}/{self.topics.group}/clients/{self.client_id}/sync"
        marker = uuid.uuid4().hex.encode()
        receive = await self.subscribe([topic], qos=1)
        try:
            await self.link.publish(topic, marker, qos=1)
            with trio.fail_after(10):
                async for message in receive:
                    if message.payload == marker:
                        return
        finally:
            await self.unsubscribe([topic], receive)

    async def submit(
        self, job: Mapping[str, Any], *, answer_within: float = ANSWER_WITHIN, events: bool = True
    ) -> JobHandle:
        """Publish a job and wait until a worker answers it (normally with `queued`).

        A `task_id` is made up when the job has none. Errors: `NoWorkerAnswered` when no
        status comes within `answer_within` seconds; the broker then delivered the job to
        nobody, so nothing will run.
        """
        request = dict(job)
        request.setdefault("task_id", f"job-{uuid.uuid4().hex[:12]}")
        if self.signer is not None:
            request = self.signer.sign(self.topics.tasks, request)
        handle = await self.follow(str(request["task_id"]), events=events)
        await self.link.publish(self.topics.tasks, json.dumps(request).encode(), qos=2)
        try:
            await handle.wait_answered(answer_within)
        except BaseException:
            await handle.close()
            raise
        return handle

    async def follow(self, task_id: str, *, events: bool = True) -> JobHandle:
        """A handle on a job, wherever it is now; its retained status comes first, if any.

        With `events=False` only statuses are received, which spares the broker and this
        client a busy job's live events.
        """
        handle = JobHandle(self, task_id, events=events)
        await handle.open()
        return handle

    async def status(self, task_id: str) -> dict[str, Any] | None:
        """The job's retained status, or None if the broker holds none."""
        handle = await self.follow(task_id)
        try:
            await self.barrier()
            handle.take_arrived()
            return handle.latest
        finally:
            await handle.close()

    async def cancel(self, task_id: str, *, reason: str | None = None, requested_by: str | None = None) -> None:
        body = {"reason": reason, "requested_by": requested_by or default_requester()}
        request = {key: value for key, value in body.items() if value is not None}
        topic = self.topics.cancel(task_id)
        if self.signer is not None:
            request = self.signer.sign(topic, request)
        await self.link.publish(topic, json.dumps(request).encode(), qos=1)

    async def forget(self, task_id: str) -> None:
        """Clear the job's retained status from the broker."""
        await self.link.publish(self.topics.status(task_id), b"", qos=1, retain=True)

    async def wait_for_worker(self, worker_id: str | None = None) -> dict[str, Any]:
        """Wait until a worker of the group (or the one named) says it is online; its presence.

        Publishing a job before any worker subscribed would reach nobody: a controller
        that starts workers itself waits here first. Put a bound on it at the call.
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
        """The retained presence messages of the group's workers, sorted by worker id."""
        topic_filter = self.topics.workers_subscription
        receive = await self.subscribe([topic_filter])
        try:
            await self.barrier()
            found: dict[str, dict[str, Any]] = {}
            while True:
                try:
                    message = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                presence = _decode(message.payload)
                if presence is not None:
                    found[message.topic.rsplit("/", 1)[-1]] = presence
            return [found[key] for key in sorted(found)]
        finally:
            await self.unsubscribe([topic_filter], receive)


class JobHandle:
    """Follow one job. Use `async with` (or `close`) to stop listening."""

    def __init__(self, client: Client, task_id: str, *, events: bool = True) -> None:
        self.client = client
        self.task_id = task_id
        self.latest: dict[str, Any] | None = None
        self._filters = [client.topics.status(task_id), client.topics.workers_subscription]
        if events:
            self._filters.append(client.topics.events(task_id))
        self._offline: set[str] = set()
        self._receive: trio.MemoryReceiveChannel[InboundMessage] | None = None
        self._backlog: deque[Update] = deque()
        self._finished = False

    async def open(self) -> None:
        self._receive = await self.client.subscribe(self._filters)

    async def close(self) -> None:
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
        return self._finished

    async def wait_answered(self, within: float) -> None:
        """Wait for a status published after we started listening (not an old retained one)."""
        with trio.move_on_after(within):
            while True:
                update = await self._next_update()
                self._backlog.append(update)
                if update.kind == "status" and not update.retained:
                    return
        group = self.client.topics.group
        raise NoWorkerAnswered(
            f"no worker of group {group!r} answered within {within:g}s: none is connected to this broker"
            f" and subscribed to {self.client.topics.tasks}, so the job went to nobody"
        )

    def updates(self) -> AsyncIterator[Update]:
        """Statuses and events in the order they arrive, ending with the terminal status.

        Stopping early is fine: what was not read stays for the next iteration.
        """
        return _Updates(self, statuses_only=False)

    def statuses(self) -> AsyncIterator[dict[str, Any]]:
        """Only the statuses, ending with the terminal one."""
        return _StatusData(_Updates(self, statuses_only=True))

    async def next_update(self) -> Update | None:
        """The next status or event, or None once the terminal status has been passed on."""
        if self._backlog:
            return self._backlog.popleft()
        if self._finished:
            return None
        return await self._next_update()

    async def wait(self) -> dict[str, Any]:
        """Wait for the terminal status and return it.

        Errors: `JobLost` if the job's worker went offline before the job ended.
        """
        async for update in self.updates():
            if update.kind == "lost":
                raise JobLost(lost_message(self.task_id, update.data))
        assert self.latest is not None
        return self.latest

    async def cancel(self, *, reason: str | None = None, requested_by: str | None = None) -> None:
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
            if data.get("refused") and (self.latest or {}).get("state") in ("queued", "running"):
                # A refused message that reused this job's task_id (a replay, or a forgery):
                # it says nothing about the job a worker accepted.
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
async def open_client(target: Target) -> AsyncIterator[Client]:
    """Connect to the broker; the client and every handle stop working when the block ends.

    Errors: `ClientError` when the broker cannot be reached or the connection drops.
    """
    # A client id of its own for every connection: the broker disconnects the older of two
    # connections that share one, so one Target may serve several clients at once.
    options = dataclasses.replace(target.link, client_id=_client_id())
    try:
        with unwrap_lone_errors():
            async with open_mqtt_link(options) as link, trio.open_nursery() as nursery:
                client = Client(link, target.topics, options.client_id, signer=target.signer)
                await nursery.start(client.route_messages)
                yield client
                nursery.cancel_scope.cancel()
    except LinkError as exc:
        raise ClientError(f"broker {target.link.host}:{target.link.port}: {exc}") from exc
