"""A clean goodbye: the broker discards the will, even while it still answers what came before it."""

from __future__ import annotations

import signal

import trio
import trio.testing

from ansible_worker.mqtt.link import LinkOptions, Will, open_mqtt_link
from tests.conftest import Broker

TOPIC = "ansible/g/workers/leaving"


async def retained(broker: Broker, topic: str) -> bytes:
    """The message the broker keeps on `topic` now."""
    options = LinkOptions(host="127.0.0.1", port=broker.port, client_id="reader")
    async with open_mqtt_link(options) as reader:
        await reader.subscribe(topic, 1)
        with trio.fail_after(10):
            async for message in reader.messages():
                return message.payload
    raise AssertionError("the link closed before the retained message came")


async def test_a_publish_still_unanswered_at_the_goodbye_does_not_set_the_will_off(broker: Broker) -> None:
    """A worker leaves while the broker has yet to answer its last QoS 1 publish, which it also hears itself.

    The broker echoes that publish to its sender, then acknowledges it. Should the sender's
    socket be closed by then, the echo meets a reset and the acknowledgement fails: Mosquitto
    drops the connection as broken, before it reads the DISCONNECT waiting behind the
    publish, and publishes the will, whose counts are those of the connection's start.
    Stopping the broker (SIGSTOP) holds its answers back until the goodbye is on its way.
    """
    assert broker.process is not None
    will = Will(TOPIC, b"will", qos=1, retain=True)
    options = LinkOptions(host="127.0.0.1", port=broker.port, client_id="leaving", will=will)
    leaving = trio.Event()

    async def leave() -> None:
        async with open_mqtt_link(options) as link:
            await link.subscribe("ansible/g/workers/+", 1)
            await link.publish(TOPIC, b"online", qos=1, retain=True)
            assert broker.process is not None
            broker.process.send_signal(signal.SIGSTOP)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: link.publish(TOPIC, b"offline", qos=1, retain=True))
                # The publish is on the wire; its answer cannot come while the broker is stopped.
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
            leaving.set()

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(leave)
                await leaving.wait()
                # The goodbye is sent; the link has closed, or waits for the broker to close it.
                await trio.testing.wait_all_tasks_blocked()
                broker.process.send_signal(signal.SIGCONT)
    finally:
        broker.process.send_signal(signal.SIGCONT)
    assert await retained(broker, TOPIC) == b"offline"
    assert "Client leaving disconnected." in broker.log.read_text()
