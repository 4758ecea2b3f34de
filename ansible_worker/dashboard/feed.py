"""Keep the dashboard's store up to date from the broker: presences, retained statuses, requests and live events."""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import Any

import trio

from ansible_worker.controller.client import Client
from ansible_worker.dashboard.store import Store
from ansible_worker.mqtt.options import InboundMessage
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.json_objects import json_object
from ansible_worker.protocol.topics import Topics, is_task_id

log = logging.getLogger(__name__)

# How long the first page waits for the broker's retained messages before it is served.
FIRST_PAGE_WITHIN = 3.0
# A message bigger than this is not one the group's workers send; it is skipped, not parsed.
MAX_PAYLOAD = 4 * 1024 * 1024


def filters_for(topics: Topics) -> list[str]:
    """The topic filters the dashboard follows."""
    return [
        f"{topics.tasks}/+/status",
        f"{topics.tasks}/+/events",
        topics.workers_subscription,
        topics.tasks,
        topics.templates,
    ]


async def follow_group(
    client: Client, store: Store, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Route every message of the group into `store` and keep its `connected` flag true to the link.

    Started once the retained messages of the first connection have arrived (after a barrier),
    so the first page a browser gets already lists the known jobs; or after `FIRST_PAGE_WITHIN`
    seconds, when the broker retains more than that lets through: the rest arrive while the
    dashboard serves, and the page says so until they have.

    Cancellation: runs until cancelled; it owns the link watcher, which ends with it.
    """
    filters = filters_for(client.topics)
    # Never released: the feed lives as long as the client, which ends with the dashboard.
    receive = client.session.register(filters)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_link, client.session, store)
        await client.session.renew(filters)
        # Retained messages of a broker this slow, or this many, arrive later, as changes.
        store.set_loaded(False)
        with trio.move_on_after(FIRST_PAGE_WITHIN), suppress(trio.TooSlowError):
            await client.barrier()
            store.set_loaded(True)
        store.first_heard = _drain(receive, client.topics, store)
        task_status.started()
        if not store.loaded:
            nursery.start_soon(_note_when_loaded, client, store)
        async for message in receive:
            # Until every retained status has come, each one counts towards what the broker sent.
            store.first_heard += not store.loaded and message.topic.endswith("/status")
            route(store, client.topics, message)


async def _note_when_loaded(client: Client, store: Store) -> None:
    """Once a barrier passes, every retained status has arrived. Cancellation: with the feed."""
    while True:
        try:
            await client.barrier()
        except trio.TooSlowError:
            continue
        store.set_loaded(True)
        return


def _drain(receive: trio.MemoryReceiveChannel[InboundMessage], topics: Topics, store: Store) -> int:
    """Route what has arrived; how many of those were statuses."""
    statuses = 0
    while True:
        try:
            message = receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return statuses
        statuses += message.topic.endswith("/status")
        route(store, topics, message)


async def _watch_link(session: BrokerSession, store: Store) -> None:
    """Cancellation: runs until cancelled, with its owner."""
    while True:
        if session.connected:
            store.set_connected(True)
            await session.wait_disconnected()
        else:
            store.set_connected(False)
            await session.wait_connection_after(session.connections)


def route(store: Store, topics: Topics, message: InboundMessage) -> None:
    """Put one message into the store; anything malformed is logged at debug level and skipped."""
    if len(message.payload) > MAX_PAYLOAD:
        log.debug("skipped a message of %d bytes on %s", len(message.payload), message.topic)
        return
    topic = message.topic
    if topic == topics.templates:
        store.set_catalogue(read_catalogue(message.payload) if message.payload else None)
        return
    if topic == topics.tasks:
        request = json_object(message.payload)
        task_id = request.get("task_id") if request else None
        if request is not None and is_task_id(task_id):
            store.set_request(task_id, request, size=len(message.payload))
        return
    workers = topics.workers_subscription.removesuffix("+")
    if topic.startswith(workers):
        worker_id = topic[len(workers) :]
        if not message.payload:
            store.set_worker(worker_id, None)
            return
        presence = json_object(message.payload)
        if presence is not None:
            store.set_worker(worker_id, presence)
        return
    prefix = topics.tasks + "/"
    if not topic.startswith(prefix):
        return
    task_id, _, leaf = topic[len(prefix) :].partition("/")
    if not is_task_id(task_id):
        return
    if leaf == "status":
        if not message.payload:
            store.set_status(task_id, None, size=0)
            return
        status = json_object(message.payload)
        if status is not None and isinstance(status.get("state"), str):
            status["task_id"] = task_id  # the topic says which job, whatever the body claims
            store.set_status(task_id, status, size=len(message.payload))
    elif leaf == "events":
        event = json_object(message.payload)
        if event is not None:
            store.add_event(task_id, event)


def read_catalogue(payload: bytes) -> dict[str, Any] | None:
    """A catalogue as the page gets it, checked against its model first; None for one that is not."""
    from pydantic import ValidationError

    from ansible_worker.protocol.group_messages import TemplateCatalogue

    try:
        return TemplateCatalogue.model_validate_json(payload).model_dump(mode="json")
    except ValidationError as exc:
        log.debug("skipped a template catalogue that is not one (%d problems)", exc.error_count())
        return None
