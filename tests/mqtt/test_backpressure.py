"""A reader that falls behind holds the broker back: the link stops reading, keeps its connection, and loses nothing.

Against a real Mosquitto with no cap on what it queues for a client, so that whatever the
link does not read waits at the broker (and in the kernel's socket buffers), not in our memory.
"""

from __future__ import annotations

import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from ansible_worker.mqtt.link import (
    INCOMING_BYTES_LIMIT,
    INCOMING_LIMIT,
    InboundMessage,
    LinkOptions,
    MqttLink,
    open_mqtt_link,
)
from ansible_worker.mqtt.session import BrokerSession
from testing.broker import Broker

MESSAGES = 4000
PAYLOAD = 4000
PUBLISHERS = 20
# Mosquitto drops a client silent for 1.5 keepalives; paho gives up on a broker silent for 2.
KEEPALIVE = 2
# Longer than both: a link that let its keepalive lapse while it is held would be gone by then.
STOPPED_FOR = 5.0


def options(port: int, keepalive: int = 60) -> LinkOptions:
    return LinkOptions("127.0.0.1", port, f"backpressure-{uuid.uuid4().hex[:8]}", keepalive=keepalive)


@pytest.fixture
def unbounded(tmp_path: Path) -> Iterator[Broker]:
    """A broker with no cap on what it queues for a client."""
    broker = Broker(tmp_path, "max_queued_messages 0\nmax_queued_bytes 0\n")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def flood(port: int, prefix: str, last: str) -> set[str]:
    """Retain 3 x `INCOMING_LIMIT` small messages under `prefix/` at QoS 0, then one on `last` at QoS 1; their topics.

    More than the link holds for its readers, sent faster than one at a time.
    """
    count = 3 * INCOMING_LIMIT
    async with open_mqtt_link(options(port)) as link:
        for index in range(count):
            link.publish_nowait(f"{prefix}/{index}", b"retained", retain=True)
        await link.publish(last, b"last", qos=1, retain=True)
    return {f"{prefix}/{index}" for index in range(count)} | {last}


async def read_topics(inbox: trio.MemoryReceiveChannel[InboundMessage], count: int) -> set[str]:
    """The topics of the messages read from `inbox`, once `count` different ones came."""
    topics: set[str] = set()
    async for message in inbox:
        topics.add(message.topic)
        if len(topics) == count:
            break
    return topics


async def retain(port: int, count: int, prefix: str) -> None:
    """Retain `count` QoS 1 messages of PAYLOAD bytes under `prefix/`, from links of their own."""

    async def publish_share(share: int) -> None:
        async with open_mqtt_link(options(port)) as link:
            for index in range(share, count, PUBLISHERS):
                await link.publish(f"{prefix}/{index}", b"%06d" % index + b"x" * (PAYLOAD - 6), qos=1, retain=True)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for share in range(PUBLISHERS):
                nursery.start_soon(publish_share, share)


async def read_all(link: MqttLink, count: int) -> set[str]:
    """The topics of the next `count` messages, each checked to be QoS 1 and whole."""
    topics = set()
    with trio.fail_after(60):
        async for message in link.messages():
            assert message.qos == 1
            assert len(message.payload) == PAYLOAD
            assert int(message.payload[:6]) == int(message.topic.rsplit("/", 1)[1])
            topics.add(message.topic)
            if len(topics) == count:
                return topics
    raise AssertionError(f"the link ended after {len(topics)} messages")


async def test_a_reader_that_stops_holds_the_broker_back_keeps_its_link_and_loses_nothing(unbounded: Broker) -> None:
    """A subscriber stops reading for longer than its keepalive allows silence, while the broker has 16 MB for it.

    What the link holds meanwhile stays near `INCOMING_LIMIT` messages (the rest waits in
    the kernel and at the broker); the connection survives the pause; and once the reader
    reads again, every message comes, once, at QoS 1.
    """
    await retain(unbounded.port, MESSAGES, "held")
    tracemalloc.start()
    try:
        async with open_mqtt_link(options(unbounded.port, KEEPALIVE)) as link:
            before, _ = tracemalloc.get_traced_memory()
            await link.subscribe("held/#", 1)
            # The reader does nothing for a while: the scenario, not a wait for a condition.
            await trio.sleep(STOPPED_FOR)
            grown = tracemalloc.get_traced_memory()[0] - before
            held = link.held
            topics = await read_all(link, MESSAGES)
            assert link.pauses >= 1
    finally:
        tracemalloc.stop()
    # Stopped first, so that its log is whole.
    unbounded.stop()
    assert held <= INCOMING_LIMIT
    # Every message held would be MESSAGES * PAYLOAD = 16 MB; the link's limit is about a quarter of it.
    assert grown < 2 * INCOMING_LIMIT * PAYLOAD, f"{grown} bytes more while the reader did not read"
    assert topics == {f"held/{index}" for index in range(MESSAGES)}
    assert "exceeded timeout" not in unbounded.log.read_text()


async def test_a_session_subscribes_to_every_filter_while_the_first_ones_retained_messages_flood_in(
    unbounded: Broker,
) -> None:
    """The SUBACK of a session's second filter comes behind the retained messages of its first.

    Those are more than the link holds for its readers, so the session must pass them on
    while it subscribes; else the link stops reading in front of the SUBACK, and the
    subscription times out.
    """
    sent = await flood(unbounded.port, "first", "second/only")
    inbox_send, inbox = trio.open_memory_channel[InboundMessage](16)
    session = BrokerSession(options(unbounded.port), [("first/#", 1), ("second/#", 1)], inbox_send)
    # Less than a subscription's own time limit: a link lost to it would not count.
    with trio.fail_after(8):
        async with trio.open_nursery() as nursery:
            await nursery.start(session.serve)
            topics = await read_topics(inbox, len(sent))
            await session.wait_connected()
            nursery.cancel_scope.cancel()
    assert session.connections == 1
    assert session.reconnects == 0
    assert topics == sent


async def test_large_messages_are_held_back_by_their_bytes(unbounded: Broker) -> None:
    """Forty messages of 1 MiB: far fewer than `INCOMING_LIMIT`, but the link stops at its bytes."""
    size, count = 1 << 20, 40
    async with open_mqtt_link(options(unbounded.port)) as link:
        for index in range(count):
            await link.publish(f"large/{index}", bytes([index]) * size, qos=1, retain=True)
    async with open_mqtt_link(options(unbounded.port)) as link:
        await link.subscribe("large/#", 1)
        with trio.fail_after(15):
            # A state the link reaches by itself, with no event to wait on: look again, within the bound.
            while link.reading:  # noqa: ASYNC110
                await trio.sleep(0.05)
        held = link.held
        topics = set()
        with trio.fail_after(30):
            async for message in link.messages():
                assert message.payload == bytes([int(message.topic.rsplit("/", 1)[1])]) * size
                topics.add(message.topic)
                if len(topics) == count:
                    break
    assert held <= INCOMING_BYTES_LIMIT // size + 1
    assert topics == {f"large/{index}" for index in range(count)}


async def test_a_reader_that_stops_iterating_leaves_the_rest_to_the_next(broker: Broker) -> None:
    """Messages come out in batches, but one reader's leaving does not take the rest of its batch with it."""
    async with open_mqtt_link(options(broker.port)) as link:
        for index in range(5):
            await link.publish(f"rest/{index}", b"%d" % index, qos=1, retain=True)
    async with open_mqtt_link(options(broker.port)) as link:
        await link.subscribe("rest/#", 1)
        payloads = []
        with trio.fail_after(10):
            for _ in range(5):
                async for message in link.messages():
                    payloads.append(message.payload)
                    break
    assert sorted(payloads) == [b"0", b"1", b"2", b"3", b"4"]


async def test_a_session_whose_inbox_is_not_read_for_a_while_keeps_its_link(unbounded: Broker) -> None:
    """A worker's or an archiver's inbox stops being read (a slow database) for longer than the keepalive allows.

    The session waits on the full inbox, the link holds back, and its keepalive goes on: the
    same link, no reconnection, and every message once the inbox is read again.
    """
    sent = await flood(unbounded.port, "slow", "slow/last")
    inbox_send, inbox = trio.open_memory_channel[InboundMessage](16)
    session = BrokerSession(options(unbounded.port, KEEPALIVE), [("slow/#", 1)], inbox_send)
    async with trio.open_nursery() as nursery:
        await nursery.start(session.serve)
        with trio.fail_after(10):
            await session.wait_connected()
        # The inbox's reader is busy elsewhere: the scenario, not a wait for a condition.
        await trio.sleep(STOPPED_FOR)
        with trio.fail_after(30):
            topics = await read_topics(inbox, len(sent))
        nursery.cancel_scope.cancel()
    assert session.connections == 1
    assert session.reconnects == 0
    assert topics == sent
