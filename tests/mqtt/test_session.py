"""One broker session for the worker and the controller: counted subscriptions, reconnects, giving up.

Against a real Mosquitto, which forgets every subscription when it restarts: what a session
gets after a restart is exactly what it subscribed to again.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from ansible_worker.controller.client import ClientError, open_client, target_from_url
from ansible_worker.lone_errors import unwrap_lone_errors
from ansible_worker.mqtt.link import ConnectFailed, InboundMessage, LinkLost, LinkOptions, open_mqtt_link
from ansible_worker.mqtt.reconnect import GaveUp, Reconnect
from ansible_worker.mqtt.session import BrokerSession
from tests.conftest import Broker

QUICK = Reconnect(first=0.05, most=0.5)


def options(port: int) -> LinkOptions:
    return LinkOptions("127.0.0.1", port, f"session-{uuid.uuid4().hex[:8]}")


@asynccontextmanager
async def serving(session: BrokerSession) -> AsyncIterator[BrokerSession]:
    async with trio.open_nursery() as nursery:
        await nursery.start(session.serve)
        with trio.fail_after(15):
            await session.wait_connected()
        yield session
        nursery.cancel_scope.cancel()


async def publish(broker: Broker, *messages: tuple[str, bytes]) -> None:
    """Publish from a connection of its own, as another client of the broker would."""
    with trio.fail_after(15):
        async with open_mqtt_link(options(broker.port)) as link:
            for topic, payload in messages:
                await link.publish(topic, payload, qos=1)


async def receive_until(receive: trio.MemoryReceiveChannel[InboundMessage], last: bytes) -> list[str]:
    """The topics of what arrives on `receive`, up to the message whose payload is `last`."""
    topics = []
    with trio.fail_after(15):
        async for message in receive:
            topics.append(message.topic)
            if message.payload == last:
                return topics
    raise AssertionError(f"the channel ended before {last!r}: {topics}")


async def test_two_users_of_one_filter_one_leaves_the_other_still_gets_its_messages(broker: Broker) -> None:
    inbox_send, inbox = trio.open_memory_channel[InboundMessage](100)
    session = BrokerSession(options(broker.port), [("marks", 1)], inbox_send, reconnect=QUICK)
    async with serving(session):
        first = await session.subscribe(["jobs/+"])
        second = await session.subscribe(["jobs/+"])
        assert session.subscriptions.uses() == {"marks": 1, "jobs/+": 2}
        await publish(broker, ("jobs/a", b"both"))
        with trio.fail_after(15):
            assert (await first.receive()).payload == b"both"
            assert (await second.receive()).payload == b"both"
        await session.release(["jobs/+"], first)
        # The broker was not told to unsubscribe: the other user still gets every message.
        await publish(broker, ("jobs/b", b"one"))
        with trio.fail_after(15):
            assert (await second.receive()).payload == b"one"
        with pytest.raises(trio.ClosedResourceError):
            first.receive_nowait()
        # The last one leaves: now the broker is told, and sends nothing more on the filter.
        await session.release(["jobs/+"], second)
        assert session.subscriptions.uses() == {"marks": 1}
        await publish(broker, ("jobs/c", b"nobody"), ("marks", b"end"))
        assert await receive_until(inbox, b"end") == ["jobs/a", "jobs/b", "marks"]


async def test_a_reconnect_subscribes_again_to_exactly_the_filters_in_use(broker: Broker) -> None:
    inbox_send, inbox = trio.open_memory_channel[InboundMessage](100)
    fixed = [("fixed/kept", 1), ("fixed/dropped", 1)]
    session = BrokerSession(options(broker.port), fixed, inbox_send, reconnect=QUICK)
    async with serving(session):
        live = await session.subscribe(["live/+"])
        gone = await session.subscribe(["gone/+"])
        await session.release(["gone/+"], gone)
        await session.unsubscribe("fixed/dropped")
        # Short-lived: on this link only.
        await session.subscribe_now("now/x", 1)
        await publish(broker, ("now/x", b"before"))
        assert await receive_until(inbox, b"before") == ["now/x"]
        connection = session.connections
        broker.stop()
        broker.start()
        with trio.fail_after(30):
            await session.wait_connection_after(connection)
        await publish(
            broker,
            ("gone/1", b"x"),
            ("fixed/dropped", b"x"),
            ("now/x", b"x"),
            ("live/1", b"x"),
            ("fixed/kept", b"end"),
        )
        assert await receive_until(inbox, b"end") == ["live/1", "fixed/kept"]
        with trio.fail_after(15):
            assert (await live.receive()).topic == "live/1"
        assert session.subscriptions.uses() == {"fixed/kept": 1, "live/+": 1}


async def test_a_session_that_must_connect_first_raises_its_failure(broker: Broker) -> None:
    broker.stop()
    session = BrokerSession(options(broker.port), reconnect=Reconnect(first_must_connect=True))
    with trio.fail_after(30), pytest.raises(ConnectFailed, match="Connection refused"), unwrap_lone_errors():
        async with trio.open_nursery() as nursery:
            await nursery.start(session.serve)
    assert session.connections == 0


async def serve_and_lose_the_broker(session: BrokerSession, broker: Broker) -> None:
    """Serve `session` until it ends by itself; the broker stops once the session is connected."""
    with unwrap_lone_errors():
        async with trio.open_nursery() as nursery:
            await nursery.start(session.serve)
            broker.stop()


async def test_a_session_gives_up_once_its_time_without_a_link_has_passed(broker: Broker) -> None:
    policy = Reconnect(first=0.05, most=0.2, give_up_after=1.0, first_must_connect=True)
    session = BrokerSession(options(broker.port), reconnect=policy)
    began = trio.current_time()
    with trio.fail_after(30), pytest.raises(GaveUp) as raised:
        await serve_and_lose_the_broker(session, broker)
    assert trio.current_time() - began >= 1.0
    assert session.reconnects >= 2
    assert f"lost the broker 127.0.0.1:{broker.port} and could not connect again within 1s" in str(raised.value)


async def test_a_session_with_no_time_to_reconnect_raises_the_loss(broker: Broker) -> None:
    session = BrokerSession(options(broker.port), reconnect=Reconnect(give_up_after=0, first_must_connect=True))
    with trio.fail_after(30), pytest.raises(LinkLost) as raised:
        await serve_and_lose_the_broker(session, broker)
    assert not isinstance(raised.value, GaveUp)
    assert session.reconnects == 0


async def test_a_session_that_never_gives_up_waits_out_a_long_outage(broker: Broker) -> None:
    session = BrokerSession(options(broker.port), reconnect=Reconnect(first=0.01, most=0.05))
    async with serving(session):
        broker.stop()
        with trio.fail_after(60):
            while session.reconnects < 30:  # noqa: ASYNC110 - counting the session's own attempts
                await trio.sleep(0.05)
        broker.start()
        with trio.fail_after(30):
            await session.wait_connection_after(1)
        await session.publish("after/outage", b"x", qos=1)


@pytest.mark.parametrize(("reconnect_for", "expected"), [(1.0, "could not connect again within 1s"), (0, "broker ")])
async def test_the_client_gives_up_after_reconnect_for(broker: Broker, reconnect_for: float, expected: str) -> None:
    target = target_from_url(f"mqtt://127.0.0.1:{broker.port}", group="g")

    async def use_the_client_and_lose_the_broker() -> None:
        async with open_client(target, reconnect_for=reconnect_for):
            broker.stop()
            await trio.sleep_forever()

    with trio.fail_after(30), pytest.raises(ClientError, match=expected):
        await use_the_client_and_lose_the_broker()


async def test_a_full_inbox_holds_up_the_link_and_loses_nothing(broker: Broker) -> None:
    inbox_send, inbox = trio.open_memory_channel[InboundMessage](1)
    session = BrokerSession(options(broker.port), [("full/+", 1)], inbox_send, reconnect=QUICK)
    async with serving(session):
        await publish(broker, *((f"full/{index}", b"%d" % index) for index in range(20)), ("full/end", b"end"))
        topics = await receive_until(inbox, b"end")
    assert topics == [f"full/{index}" for index in range(20)] + ["full/end"]
