"""Follow one job: its statuses, live events and the loss of its worker, in arrival order, from any state."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol

import trio

from ansible_worker.controller.errors import ClientError, JobLost
from ansible_worker.controller.shipping import Shipment
from ansible_worker.mqtt.options import InboundMessage
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.json_objects import json_object
from ansible_worker.protocol.topics import Topics, is_task_id

TERMINAL_STATES = frozenset({"success", "failed", "cancelled", "timeout"})


def checked_task_id(task_id: object) -> str:
    """`task_id`, if it may name a job's topics. Errors: `ValueError` saying what a task_id is.

    A job's topics and filters are built from its task_id: a `+` or `#` in one would follow
    other jobs, or make the broker library refuse the filter.
    """
    if not is_task_id(task_id):
        raise ValueError(f"not a task_id: {str(task_id)[:140]!r} (1 to 128 of A-Z, a-z, 0-9, '.', '_', '-')")
    return str(task_id)


@dataclass(frozen=True, slots=True)
class Update:
    """One thing heard about a job, in arrival order: a status, a live event, that its worker
    went offline without a clean stop and the group may take the job over (`away`), or that it
    was lost (its worker went offline before the job ended, and nobody took it over in time;
    `data` is that worker's presence)."""

    kind: Literal["status", "event", "away", "lost"]
    data: dict[str, Any]
    retained: bool = False


# Time for the takeover itself, beyond a survivor's wait.
TAKEOVER_MARGIN = 10.0


class JobOwner(Protocol):
    """What a handle uses of the client that made it: its session, its group's topics, and cancelling."""

    session: BrokerSession
    topics: Topics

    async def cancel(self, task_id: str, *, reason: str | None = None, requested_by: str | None = None) -> None:
        """Ask the group's workers to cancel job `task_id`."""


class JobHandle:
    """Follow one job. Use `async with` (or `close`) to stop listening."""

    def __init__(self, client: JobOwner, task_id: str, *, events: bool = True) -> None:
        self.client = client
        self.task_id = checked_task_id(task_id)
        self.latest: dict[str, Any] | None = None
        # How many times `Client.submit` published the job (0 for a followed one).
        self.attempts = 0
        # What `Client.submit` shipped with the job, if anything.
        self.shipment: Shipment | None = None
        self._filters = [client.topics.status(task_id), client.topics.workers_subscription]
        if events:
            self._filters.append(client.topics.events(task_id))
        self._offline: dict[str, dict[str, Any]] = {}
        # While the job's worker is away and the group may take the job over: until when to wait.
        self._takeover_deadline: float | None = None
        self._receive: trio.MemoryReceiveChannel[InboundMessage] | None = None
        self._backlog: deque[Update] = deque()
        self._finished = False

    async def open(self) -> None:
        """Register the handle's filters with the client, then subscribe to them on the current link.

        Cancellation: the registration stays, and `close` undoes it; call `close`, not
        `open` again (a second `open` would leave the first registration behind).
        """
        # Registered before waiting, so that `close` undoes it even if the wait is cancelled.
        self._receive = self.client.session.register(self._filters)
        await self.client.session.renew(self._filters)

    async def close(self) -> None:
        """Stop listening: remove the handle's routes and subscriptions. Closing twice is harmless.

        Cancellation: cannot interrupt it: the unsubscribe runs shielded (each UNSUBSCRIBE to
        the broker bounded to 5 seconds), so the handle is closed when it returns or raises.
        """
        if self._receive is not None:
            receive, self._receive = self._receive, None
            with trio.CancelScope(shield=True):
                await self.client.session.release(self._filters, receive)

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

    async def wait_answer(self, within: float, connection: int) -> Literal["answered", "timeout", "reconnected"]:
        """Wait up to `within` seconds for a status of the job (retained ones count).

        Also returns, with "reconnected", when a link newer than number `connection` is up:
        what was published before may have been lost with the old one.

        Cancellation: every update received meanwhile is kept in the backlog for
        `next_update`; nothing is lost, and it is safe to call again.
        """
        reconnected = False

        async def until_answered() -> None:
            while self.latest is None:
                self._backlog.append(await self._next_update())

        with trio.move_on_after(within):
            reconnected = not await self.client.session.unless_reconnected(connection, until_answered)
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
                with trio.move_on_at(self._takeover_deadline or math.inf) as waiting:
                    message = await self._receive.receive()
            except trio.EndOfChannel:
                raise ClientError("the connection to the broker was closed") from None
            if waiting.cancelled_caught:
                worker_id = str((self.latest or {}).get("worker_id"))
                return self._lost(self._offline.get(worker_id, {"worker_id": worker_id, "state": "offline"}))
            update = self._interpret(message)
            if update is not None:
                return update

    def _interpret(self, message: InboundMessage) -> Update | None:
        data = json_object(message.payload)
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
            worker_id = data.get("worker_id")
            if not self._finished and isinstance(worker_id, str) and worker_id in self._offline:
                presence = self._offline[worker_id]
                if _takeover_after(presence) is None:
                    return self._lost(presence)
                self._wait_for_takeover(presence)
            else:
                # Another worker holds the job now (it took it over), or it ended.
                self._takeover_deadline = None
            return Update("status", data, message.retain)
        if message.topic.endswith("/events"):
            return Update("event", data, message.retain)
        return self._presence(message.topic.rsplit("/", 1)[-1], data)

    def _presence(self, worker_id: str, presence: dict[str, Any]) -> Update | None:
        if presence.get("state") != "offline":
            self._offline.pop(worker_id, None)
            return None
        self._offline[worker_id] = presence
        latest = self.latest or {}
        if self._finished or latest.get("worker_id") != worker_id:
            return None
        if _takeover_after(presence) is None:
            return self._lost(presence)
        self._wait_for_takeover(presence)
        return Update("away", presence)

    def _wait_for_takeover(self, presence: dict[str, Any]) -> None:
        """The job's worker was lost: another worker of the group may take the job over within the bound."""
        wait = _takeover_after(presence)
        if wait is not None and self._takeover_deadline is None:
            self._takeover_deadline = trio.current_time() + wait

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


def _takeover_after(presence: dict[str, Any]) -> float | None:
    """How long to wait for the group to take over a job of a worker that went offline without a clean stop.

    None when its presence says nothing of takeovers (an older worker) or says it stopped cleanly.
    """
    lost_after = presence.get("lost_after")
    if presence.get("stopped") != "lost" or isinstance(lost_after, bool) or not isinstance(lost_after, int | float):
        return None
    if not 0 < lost_after <= 86_400:
        return None
    # Its silence, then a survivor that is not the first choice, then the takeover's round trips.
    return 1.5 * lost_after + TAKEOVER_MARGIN


def lost_message(task_id: str, presence: dict[str, Any]) -> str:
    """The plain words of a `JobLost`: job `task_id` is lost, as the worker of `presence` went offline."""
    return (
        f"job {task_id} is lost: its worker {presence.get('worker_id')} went offline before the job ended"
        " (it may report the job when it comes back with the same state_dir)"
        + (" and no other worker took it over" if _takeover_after(presence) is not None else "")
    )
