"""`jobs` without a history store: the group's retained statuses, read as a stream within a bound of time and memory.

The broker sends every retained status at once on SUBSCRIBE. Rather than hold them all, the
listing keeps the newest `limit` that match (at most twice that between prunings), and stops
reading after `within` seconds. It says when what it shows may be only part: stopped early,
more matches than shown, or as many statuses as a broker commonly queues for one client
(Mosquitto's `max_queued_messages`, 1000 by default, beyond which it drops them silently).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import trio

from ansible_worker.controller.job_filter import select_jobs
from ansible_worker.controller.retained import barrier
from ansible_worker.protocol.json_objects import json_object

if TYPE_CHECKING:
    from ansible_worker.controller.client import Client
    from ansible_worker.mqtt.options import InboundMessage

# How long a listing reads before it shows what it has.
LIST_WITHIN = 20.0
# A broker's usual cap on the messages it queues for one client (Mosquitto's default).
COMMON_QUEUE_CAP = 1000


@dataclass(frozen=True, slots=True)
class Listing:
    """The newest matching statuses, how many jobs were read, and why the listing may be partial (None: whole)."""

    statuses: list[dict[str, Any]]
    read: int
    matched: int
    partial: str | None


async def newest_jobs(
    client: Client,
    *,
    limit: int,
    within: float = LIST_WITHIN,
    state: str | None = None,
    playbook: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    worker: str | None = None,
) -> Listing:
    """The newest `limit` jobs that match, from the retained statuses the broker sends within `within` seconds.

    Cancellation: the subscriptions are released; nothing is left behind.
    """
    topic_filter = client.topics.status_subscription
    finished = False

    def keep(statuses: list[dict[str, Any]]) -> list[dict[str, Any]]:
        chosen = select_jobs(statuses, state=state, playbook=playbook, since=since)
        return [
            status
            for status in chosen
            if (worker is None or status.get("worker_id") == worker) and not _after(status, until)
        ]

    newest = _Newest(keep, limit)
    # Held: a listing that cannot keep up slows the broker down, rather than fill memory.
    receive = await client.session.subscribe([topic_filter], hold=True)
    try:
        with trio.move_on_after(within):
            async with trio.open_nursery() as nursery:

                async def wait_for_all() -> None:
                    nonlocal finished
                    try:
                        await barrier(client.session, client._sync_topic)
                    except trio.TooSlowError:
                        return
                    finished = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(wait_for_all)
                async for message in receive:
                    if (found := _status_of(client, message)) is not None:
                        newest.read += 1
                        newest.add(*found, prune=True)
        # What arrived before the marker, still in the channel.
        while finished:
            try:
                message = receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if (found := _status_of(client, message)) is not None:
                newest.read += 1
                newest.add(*found, prune=False)
    finally:
        await client.session.release([topic_filter], receive)
    return newest.listing(finished=finished, within=within)


@dataclass(slots=True)
class _Newest:
    """What a listing holds while it reads: the newest matches (at most twice `limit`), and its counts."""

    keep: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    limit: int
    found: dict[str, dict[str, Any]] = field(default_factory=dict)
    read: int = 0
    matched: int = 0

    def add(self, task_id: str, status: dict[str, Any], *, prune: bool) -> None:
        """Hold `status` if it matches; with `prune`, drop all but the newest `limit` once twice that are held."""
        if not self.keep([status]):
            return
        self.matched += 1
        self.found[task_id] = status
        if prune and len(self.found) > 2 * self.limit:
            self.found = {job["task_id"]: job for job in self.keep(list(self.found.values()))[: self.limit]}

    def listing(self, *, finished: bool, within: float) -> Listing:
        """What is shown, and why it may be only part of what matches."""
        shown = self.keep(list(self.found.values()))[: self.limit]
        partial = None
        if not finished:
            partial = f"stopped reading after {within:g}s"
        elif self.read >= COMMON_QUEUE_CAP:
            partial = f"the broker sent {self.read} statuses, and may have dropped more (its queue per client)"
        elif self.matched > len(shown):
            partial = "more jobs match"
        return Listing(shown, self.read, self.matched, partial)


def _status_of(client: Client, message: InboundMessage) -> tuple[str, dict[str, Any]] | None:
    """A status message's task_id and status, or None when it is not one a job's status topic should carry."""
    task_id = client.topics.task_id_of_status(message.topic)
    status = json_object(message.payload) if task_id is not None else None
    if status is None or status.get("task_id") != task_id:
        return None
    return str(task_id), status


def _after(status: dict[str, Any], until: datetime | None) -> bool:
    from ansible_worker.controller.job_filter import job_time

    if until is None:
        return False
    began = job_time(status)
    return began is None or began >= until
