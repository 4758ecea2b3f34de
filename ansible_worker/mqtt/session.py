"""Keep one link to the broker alive: connect, subscribe, pass messages on, reconnect with backoff."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Sequence

import trio

from ansible_worker.mqtt.link import (
    ConnectFailed,
    InboundMessage,
    LinkError,
    LinkLost,
    LinkOptions,
    MqttLink,
    Will,
    open_mqtt_link,
)

log = logging.getLogger(__name__)


class BrokerSession:
    """A long-lived MQTT session over a series of links.

    `serve` owns the links: each time one drops it waits an exponentially growing, jittered
    delay (capped) and connects again, subscribing afresh. A broker that is down at start is
    simply the first wait. Other tasks publish through `publish`, which waits for a link.
    """

    def __init__(
        self,
        options: LinkOptions,
        subscriptions: Sequence[tuple[str, int]],
        inbox: trio.MemorySendChannel[InboundMessage],
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.options = options
        self._subscriptions = list(subscriptions)
        self._inbox = inbox
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._link: MqttLink | None = None
        self._up = trio.Event()
        self._down = trio.Event()
        self._down.set()
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        """Whether a link is up now."""
        return self._link is not None

    async def serve(
        self,
        *,
        will: Callable[[], Will] | None = None,
        on_connected: Callable[[], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep a link up for ever; reports started at once, before the first connection.

        `will` makes the will message afresh for each connection, and `on_connected` runs
        once each link is up and subscribed. Messages go to the inbox in arrival order; a
        full inbox holds up the link.

        Cancellation: the current link is closed with a clean DISCONNECT (shielded, bounded),
        so the broker does not publish the will; `wait_disconnected` returns, while publishers
        waiting for a link are not woken. A message on its way into a full inbox is lost, and
        the inbox is closed, so its reader sees the end of it: do not serve this session again.
        """
        task_status.started()
        where = f"{self.options.host}:{self.options.port}"
        failures = 0
        async with self._inbox:
            while True:
                reason = f"link to broker {where} closed"
                try:
                    # The will is made afresh for each connection, so it describes the worker now.
                    options = self.options if will is None else dataclasses.replace(self.options, will=will())
                    async with open_mqtt_link(options) as link:
                        for topic, qos in self._subscriptions:
                            await link.subscribe(topic, qos)
                        log.info("connected to broker %s as %s", where, self.options.client_id)
                        failures = 0
                        self._link = link
                        self._down = trio.Event()
                        self._up.set()
                        try:
                            if on_connected is not None:
                                on_connected()
                            async for message in link.messages():
                                await self._inbox.send(message)
                        finally:
                            # Before the link closes: a publisher must never reach a closed link.
                            self._forget_link()
                except ConnectFailed as exc:
                    reason = f"cannot connect to broker {where}: {exc}"
                except LinkError as exc:
                    reason = f"lost broker {where}: {exc}"
                finally:
                    self._forget_link()
                delay = min(self._backoff_max, self._backoff_initial * 2**failures) * random.uniform(0.5, 1.0)
                failures += 1
                self.reconnects += 1
                log.warning("%s; retrying in %.1fs (attempt %d)", reason, delay, failures)
                await trio.sleep(delay)

    def _forget_link(self) -> None:
        """No link is up any more: publishers wait for the next one."""
        if self._link is not None:
            self._link = None
            self._up = trio.Event()
            self._down.set()

    async def wait_connected(self) -> None:
        """Wait until a link is up. Cancellation: nothing changes."""
        await self._up.wait()

    async def wait_disconnected(self) -> None:
        """Wait until no link is up. Cancellation: nothing changes."""
        await self._down.wait()

    async def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool = False, expiry: int | None = None
    ) -> None:
        """Publish on the current link, waiting for one if there is none.

        Errors: `LinkError` if the link drops before the broker acknowledged, or the broker refuses.

        Cancellation: while it waits for a link, nothing was published; after, the message
        may or may not have reached the broker, and publishing again may deliver it twice.
        """
        while self._link is None:
            await self._up.wait()
        await self._link.publish(topic, payload, qos=qos, retain=retain, expiry=expiry)

    def publish_nowait(self, topic: str, payload: bytes) -> None:
        """QoS 0 on the current link, now or never.

        Errors: `LinkLost` without a link, or when paho's outgoing queue is full.
        """
        if self._link is None:
            raise LinkLost("not connected")
        self._link.publish_nowait(topic, payload)

    async def subscribe_now(self, topic: str, qos: int) -> None:
        """Subscribe on the current link only, waiting for one; a later link does not renew it.

        For short-lived subscriptions (one retained message wanted now): the caller
        unsubscribes with `unsubscribe`. Errors: `LinkError` when the link drops first.

        Cancellation: the wait for a link, or for the broker's answer, ends; a subscription
        the broker made meanwhile stays until `unsubscribe`.
        """
        while self._link is None:
            await self._up.wait()
        await self._link.subscribe(topic, qos)

    async def unsubscribe(self, topic: str) -> None:
        """Stop a subscription now and on every later link. Best effort on the live link.

        Cancellation: later links do not subscribe to it; the live one may still be.
        """
        self._subscriptions = [(t, q) for t, q in self._subscriptions if t != topic]
        if self._link is not None:
            try:
                await self._link.unsubscribe(topic)
            except LinkError as exc:
                log.warning("unsubscribe from %s failed: %s", topic, exc)
