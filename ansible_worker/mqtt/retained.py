"""What the broker holds now: a barrier behind the retained messages of every subscription, and those messages.

The broker sends a filter's retained messages while it handles the SUBSCRIBE, so a marker
published after subscribing comes back after them. The marker goes on the client's own
sync topic, `<prefix>/<group>/clients/<client_id>/sync`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import suppress

import trio

from ansible_worker.mqtt.options import InboundMessage, LinkLost
from ansible_worker.mqtt.session import BrokerSession

BARRIER_WITHIN = 10.0


async def barrier(session: BrokerSession, sync_topic: str) -> None:
    """Return once the broker has delivered the retained messages of every earlier subscription.

    On a new link, the marker goes again (the new link subscribed to everything in use).

    Errors: `trio.TooSlowError` when the marker has not come back within `BARRIER_WITHIN` seconds.

    Cancellation: the sync subscription is released; a marker already published may still
    come back, to nobody. Safe to retry.
    """
    marker = uuid.uuid4().hex.encode()
    receive = await session.subscribe([sync_topic], qos=1)
    try:
        with trio.fail_after(BARRIER_WITHIN):
            while True:
                link = await session.current_link()
                connection = session.connections
                with suppress(LinkLost):
                    await link.publish(sync_topic, marker, qos=1)
                if await receive_unless_reconnected(session, receive, lambda m: m.payload == marker, connection):
                    return
    finally:
        await session.release([sync_topic], receive)


async def receive_unless_reconnected(
    session: BrokerSession,
    receive: trio.MemoryReceiveChannel[InboundMessage],
    wanted: Callable[[InboundMessage], bool],
    connection: int,
) -> bool:
    """Wait for a `wanted` message: True; or for a link newer than number `connection`: False.

    The messages before the wanted one are taken from `receive` and dropped.

    Cancellation: the messages taken so far are gone from `receive`; nothing else changed.
    """
    found = False

    async def until_wanted() -> None:
        nonlocal found
        async for message in receive:
            if wanted(message):
                found = True
                return

    await session.unless_reconnected(connection, until_wanted)
    return found


async def retained(session: BrokerSession, topic_filter: str, sync_topic: str) -> list[InboundMessage]:
    """The messages the broker holds for `topic_filter` now (retained ones), in the order it sent them.

    Errors: `trio.TooSlowError` from `barrier`.

    Cancellation: the subscription is released; nothing is left behind.
    """
    receive = await session.subscribe([topic_filter])
    messages: list[InboundMessage] = []
    try:
        await barrier(session, sync_topic)
        while True:
            try:
                messages.append(receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return messages
    finally:
        await session.release([topic_filter], receive)
