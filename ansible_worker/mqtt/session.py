"""Keep one broker session alive over a series of links: reconnect, resubscribe, and hand messages on.

The worker and the controller's client share it. Each sets its own `Reconnect` policy: the
worker waits for its broker for ever, a client gives up after a while. A session's
subscriptions are counted uses (`Subscriptions`): fixed ones given at construction, and
routed ones that come and go (`subscribe` and `release`); every new link subscribes to the
filters in use, before anything is published on it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, suppress

import trio

from ansible_worker.lone_errors import unwrap_lone_errors
from ansible_worker.mqtt.link import (
    InboundMessage,
    LinkError,
    LinkLost,
    LinkOptions,
    MqttLink,
    Will,
    open_mqtt_link,
)
from ansible_worker.mqtt.reconnect import KEEP_TRYING, Backoff, Reconnect
from ansible_worker.mqtt.subscriptions import Subscriptions

log = logging.getLogger(__name__)

# Messages a routed subscriber may fall behind before it loses the excess.
ROUTE_BUFFER = 100_000
# Messages a held route's reader may fall behind before the session waits for it.
HELD_ROUTE_BUFFER = 1000


class BrokerSession:
    """A long-lived MQTT session over a series of links, shared by every task of its owner.

    `serve` owns the links. Messages go first to every routed subscription whose filter they
    match (without waiting: a reader far behind loses the excess; but a held route's reader
    that falls behind holds up the link), then, if the session has one, into the `inbox`,
    where a full inbox holds up the link. A link held up stops reading from the broker,
    which queues for this client (up to its own limit). Calls that need the broker
    wait for a link; `connections` counts the links so far, `reconnects` the attempts after
    a failure.
    """

    def __init__(
        self,
        options: LinkOptions,
        subscriptions: Sequence[tuple[str, int]] = (),
        inbox: trio.MemorySendChannel[InboundMessage] | None = None,
        *,
        reconnect: Reconnect = KEEP_TRYING,
    ) -> None:
        self.options = options
        self.reconnect = reconnect
        self.subscriptions = Subscriptions(subscriptions)
        self._inbox = inbox
        self._link: MqttLink | None = None
        self._changed = trio.Event()
        self.connections = 0
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        """Whether a link is up now."""
        return self._link is not None

    @property
    def link(self) -> MqttLink:
        """The current link. Errors: `LinkLost` while there is none."""
        if self._link is None:
            raise LinkLost("not connected to the broker (reconnecting)")
        return self._link

    async def serve(
        self,
        *,
        will: Callable[[], Will] | None = None,
        on_connected: Callable[[], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep a link up until cancelled, or until the policy gives up.

        Reports started at once, or, with `Reconnect.first_must_connect`, once the first link
        is up and subscribed. `will` makes the will message afresh for each connection;
        `on_connected` runs once each link is up and subscribed.

        Errors: with `first_must_connect`, the first link's `ConnectFailed` (or `SubscribeRefused`);
        the loss itself when `give_up_after` is 0; `GaveUp` once that time has passed.

        Cancellation: the current link is closed with a clean DISCONNECT (shielded, bounded),
        so the broker does not publish the will; `wait_disconnected` returns, while callers
        waiting for a link keep waiting. A message on its way into a full inbox is lost, and
        the inbox is closed, so its reader sees its end: do not serve a session with an inbox again.
        """
        if not self.reconnect.first_must_connect or self.connections:
            task_status.started()
        backoff = Backoff(self.reconnect)
        async with AsyncExitStack() as stack:
            if self._inbox is not None:
                await stack.enter_async_context(self._inbox)
            while True:
                error: LinkError | None = None
                try:
                    await self._serve_link(will, on_connected, backoff, task_status)
                except LinkError as exc:
                    if not self.connections and self.reconnect.first_must_connect:
                        raise
                    error = exc
                wait = backoff.wait_after(error, f"{self.options.host}:{self.options.port}", trio.current_time())
                self.reconnects += 1
                await trio.sleep(wait)

    async def _serve_link(
        self,
        will: Callable[[], Will] | None,
        on_connected: Callable[[], None] | None,
        backoff: Backoff,
        task_status: trio.TaskStatus[None],
    ) -> None:
        """Open one link, subscribe to every filter in use, make it current, and pass its messages on until it drops."""
        # The will is made afresh for each connection, so it describes its owner now.
        options = self.options if will is None else dataclasses.replace(self.options, will=will())
        # A lone error of the nursery (the link's loss, a refused subscription) is raised as itself.
        with unwrap_lone_errors():
            async with open_mqtt_link(options) as link, trio.open_nursery() as nursery:
                # From the start: the broker's answer to a SUBSCRIBE comes behind the retained
                # messages of those before it, which the link stops reading once its readers fall behind.
                nursery.start_soon(self._pass_on, link)
                # Before the link is current: whatever is published on it comes after every
                # subscription and its retained messages.
                for topic_filter, _ in self.subscriptions.in_use():
                    qos = self.subscriptions.qos(topic_filter)
                    if qos is not None:  # else released meanwhile
                        await link.subscribe(topic_filter, qos)
                try:
                    self._set_link(link)
                    where = f"{options.host}:{options.port}"
                    if self.connections == 1:
                        log.info("connected to broker %s as %s", where, options.client_id)
                        if self.reconnect.first_must_connect:
                            task_status.started()
                    else:
                        log.warning("reconnected to broker %s as %s", where, options.client_id)
                    backoff.link_up(trio.current_time())
                    if on_connected is not None:
                        on_connected()
                    # `_pass_on` ends the link, with its loss.
                    await trio.sleep_forever()
                finally:
                    # Before the link closes: a publisher must never reach a closed link.
                    self._set_link(None)

    async def _pass_on(self, link: MqttLink) -> None:
        """Hand each message of `link` to its routes and the inbox, waiting where they are held, until it drops.

        Errors: `LinkLost` when the link drops.
        """
        async for message in link.messages():
            for held in self.subscriptions.route(message):
                # Its reader may release it meanwhile.
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await held.send(message)
            if self._inbox is not None:
                await self._inbox.send(message)

    def _set_link(self, link: MqttLink | None) -> None:
        if link is self._link:
            return
        self._link = link
        if link is not None:
            self.connections += 1
        self._changed.set()
        self._changed = trio.Event()

    async def current_link(self) -> MqttLink:
        """The current link, waiting for one. Cancellation: nothing changes."""
        while self._link is None:
            await self._changed.wait()
        return self._link

    async def wait_connected(self) -> None:
        """Wait until a link is up. Cancellation: nothing changes."""
        await self.current_link()

    async def wait_disconnected(self) -> None:
        """Wait until no link is up. Cancellation: nothing changes."""
        while self._link is not None:
            await self._changed.wait()

    async def wait_connection_after(self, connection: int) -> None:
        """Wait until a link newer than number `connection` is up (its subscriptions renewed).

        Cancellation: nothing changes.
        """
        while self.connections <= connection or self._link is None:
            await self._changed.wait()

    async def unless_reconnected(self, connection: int, work: Callable[[], Awaitable[object]]) -> bool:
        """Run `work` to its end (True), unless a link newer than number `connection` comes up first (False).

        What was published before on an older link may have been lost with it: the caller
        knows to look again. Errors: what `work` raises.

        Cancellation: `work` is cancelled with it.
        """
        finished = False
        with unwrap_lone_errors():
            async with trio.open_nursery() as nursery:

                async def on_reconnect() -> None:
                    await self.wait_connection_after(connection)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(on_reconnect)
                await work()
                finished = True
                nursery.cancel_scope.cancel()
        return finished

    async def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool = False, expiry: int | None = None
    ) -> None:
        """Publish on the current link, waiting for one if there is none; `expiry` in seconds.

        Errors: `LinkError` if the link drops before the broker acknowledged, or the broker refuses.

        Cancellation: while it waits for a link, nothing was published; after, the message
        may or may not have reached the broker, and publishing again may deliver it twice.
        """
        link = await self.current_link()
        await link.publish(topic, payload, qos=qos, retain=retain, expiry=expiry)

    def publish_nowait(self, topic: str, payload: bytes) -> None:
        """QoS 0 on the current link, now or never.

        Errors: `LinkLost` without a link, or when paho's outgoing queue is full.
        """
        if self._link is None:
            raise LinkLost("not connected")
        self._link.publish_nowait(topic, payload)

    async def subscribe_now(self, topic: str, qos: int) -> None:
        """Subscribe on the current link only, waiting for one; a later link does not renew it.

        For short-lived subscriptions (one retained message wanted now), whose messages go to
        the inbox, ended by `unsubscribe`. Errors: `LinkError` when the link drops first.

        Cancellation: the wait for a link, or for the broker's answer, ends; a subscription
        the broker made meanwhile stays until `unsubscribe`.
        """
        link = await self.current_link()
        await link.subscribe(topic, qos)

    async def unsubscribe(self, topic: str) -> None:
        """End one plain use of `topic` (given at construction, or by `subscribe_now`).

        Once no one uses it, later links do not subscribe to it, and the live one is told
        (best effort: a failure is logged).

        Cancellation: later links do not subscribe to it; the live one may still be.
        """
        if self.subscriptions.drop([topic]) and self._link is not None:
            try:
                await self._link.unsubscribe(topic)
            except LinkError as exc:
                log.warning("unsubscribe from %s failed: %s", topic, exc)

    def register(
        self, filters: list[str], qos: int = 1, *, hold: bool = False
    ) -> trio.MemoryReceiveChannel[InboundMessage]:
        """Route messages on `filters` to a new channel and count them as in use, without waiting.

        The channel holds `ROUTE_BUFFER` messages, beyond which its reader loses the excess;
        with `hold`, it holds `HELD_ROUTE_BUFFER`, beyond which the session waits for the
        reader, and with it every other reader and the link: for a reader that keeps reading
        and would rather slow the broker down than lose messages or memory.

        `renew` then subscribes on the current link; any later link subscribes by itself."""
        return self.subscriptions.open_route(filters, qos, HELD_ROUTE_BUFFER if hold else ROUTE_BUFFER, hold=hold)

    async def renew(self, filters: list[str], qos: int = 1) -> None:
        """Subscribe to `filters` on the current link, so the broker sends their retained messages.

        A link that drops meanwhile is not an error: the next link subscribes to every filter in use.
        Errors: `SubscribeRefused` when the broker refuses a filter.

        Cancellation: the filters stay registered and counted; the subscriptions sent so far hold,
        the one in flight may or may not. Safe to retry: subscribing again only makes the broker
        send the retained messages again.
        """
        for topic_filter in filters:
            link = await self.current_link()
            # A link that drops here is replaced by one that subscribes to every filter in use.
            with suppress(LinkLost):
                # Subscribing again is what makes the broker send the retained message to this
                # new subscriber; the count only decides when to unsubscribe.
                await link.subscribe(topic_filter, qos)

    async def subscribe(
        self, filters: list[str], qos: int = 1, *, hold: bool = False
    ) -> trio.MemoryReceiveChannel[InboundMessage]:
        """Receive every message on `filters` (retained ones first) until `release`; `hold` as in `register`.

        Errors: as `renew`; the registration is undone first.

        Cancellation: `release` runs before the cancellation propagates: nothing is left to
        clean up; safe to retry.
        """
        receive = self.register(filters, qos, hold=hold)
        try:
            await self.renew(filters, qos)
        except BaseException:
            await self.release(filters, receive)
            raise
        return receive

    async def release(self, filters: list[str], receive: trio.MemoryReceiveChannel[InboundMessage]) -> None:
        """Stop routing to `receive` and close it; unsubscribe at the broker from filters no one uses any more.

        Call it once per channel that `register` or `subscribe` returned: a second call raises `KeyError`.
        The broker is told while the link is up, without waiting for its answer: the answer
        comes behind whatever the broker still has to send (all the retained messages of a
        large subscription, say), and nothing here needs it. What still comes on those filters
        goes nowhere. Errors of a dropped link are ignored (the next link does not subscribe to
        the filter anyway).

        Cancellation: cannot interrupt it; it does not wait.
        """
        for topic_filter in self.subscriptions.close_route(filters, receive):
            if self._link is not None:
                with suppress(LinkError):
                    self._link.unsubscribe_nowait(topic_filter)
