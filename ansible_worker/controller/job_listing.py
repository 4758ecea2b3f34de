"""`jobs` without a history store: the group's retained statuses, read as a stream within a bound of time and memory.

The broker sends every retained status at once on SUBSCRIBE. Rather than hold them all, the
listing keeps the newest `limit` that match (at most twice that between prunings), and stops
reading after `within` seconds. It says when what it shows may be only part: stopped early,
more matches than shown, or as many statuses as a broker commonly queues for one client
(Mosquitto's `max_queued_messages`, 1000 by default, beyond which it drops them silently).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import trio

from ansible_worker.controller.job_filter import select_jobs
from ansible_worker.controller.payloads import json_object
from ansible_worker.controller.retained import barrier

if TYPE_CHECKING:
    from ansible_worker.controller.client import Client

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
    found: dict[str, dict[str, Any]] = {}
    read = 0
    matched = 0
    finished = False

    def keep(statuses: list[dict[str, Any]]) -> list[dict[str, Any]]:
        chosen = select_jobs(statuses, state=state, playbook=playbook, since=since)
        return [
            status
            for status in chosen
            if (worker is None or status.get("worker_id") == worker) and not _after(status, until)
        ]

    receive = await client.session.subscribe([topic_filter])
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
                    task_id = client.topics.task_id_of_status(message.topic)
                    status = json_object(message.payload) if task_id is not None else None
                    if status is None or status.get("task_id") != task_id:
                        continue
                    read += 1
                    if keep([status]):
                        matched += 1
                        found[str(task_id)] = status
                        if len(found) > 2 * limit:
                            found = {job["task_id"]: job for job in keep(list(found.values()))[:limit]}
        # What arrived before the marker, still in the channel.
        while finished:
            try:
                message = receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            task_id = client.topics.task_id_of_status(message.topic)
            status = json_object(message.payload) if task_id is not None else None
            if status is not None and status.get("task_id") == task_id and keep([status]):
                matched += 1
                found[str(task_id)] = status
    finally:
        await client.session.release([topic_filter], receive)
    shown = keep(list(found.values()))[:limit]
    total = read
    partial = None
    if not finished:
        partial = f"stopped reading after {within:g}s"
    elif total >= COMMON_QUEUE_CAP:
        partial = f"the broker sent {total} statuses, and may have dropped more (its queue per client)"
    elif matched > len(shown):
        partial = "more jobs match"
    return Listing(shown, total, matched, partial)


def _after(status: dict[str, Any], until: datetime | None) -> bool:
    from ansible_worker.controller.job_filter import job_time

    if until is None:
        return False
    began = job_time(status)
    return began is None or began >= until
