"""One MQTT 5 connection with a Trio-native interface; the only module that touches asyncio.

aiomqtt (asyncio, paho underneath) runs inside Trio through trio-asyncio. Every function
here is Trio-flavoured unless its name ends in `_aio`; those run on the asyncio loop that
`open_mqtt_link` opens and closes with the connection, so no asyncio object escapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import re
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import trio
import trio_asyncio
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ansible_worker.lone_errors import unwrap_lone_errors
from ansible_worker.mqtt.options import (
    ConnectFailed,
    InboundMessage,
    LinkError,
    LinkLost,
    LinkOptions,
    PublishRefused,
    SubscribeRefused,
    Will,
)
from ansible_worker.mqtt.sockets import (
    close_quietly,
    release_frames,
    set_cork,
    still_open,
    tls_context,
    wait_for_broker_close,
)

__all__ = [
    "ConnectFailed",
    "InboundMessage",
    "LinkError",
    "LinkLost",
    "LinkOptions",
    "MqttLink",
    "PublishRefused",
    "SubscribeRefused",
    "Will",
    "open_mqtt_link",
]

CONNECT_TIMEOUT = 10.0
# QoS 0 messages that may wait in paho's queue before publish_nowait refuses more.
OUTGOING_LIMIT = 10_000
DISCONNECT_TIMEOUT = 2.0
# Messages read from the broker and not yet taken by the reader, at which the link stops
# reading the socket (the broker then queues, and TCP holds it back); it reads again once
# the reader has taken them. A reader that takes nothing holds at most about this many,
# or this many payload bytes and one message more.
INCOMING_LIMIT = 1000
INCOMING_BYTES_LIMIT = 8 << 20
# Packets read in one wake of the loop at most, so that writes and timers are not held up.
READ_BURST = 256
# Bytes taken from the socket in one recv; paho asks for a packet a few bytes at a time.
RECV_CHUNK = 65536


# asyncio's CancelledError reaches a Trio caller only when the link's own loop is closing
# under a call still in flight (a Trio cancellation arrives as trio.Cancelled instead).
_LINK_ERRORS = (aiomqtt.MqttError, asyncio.CancelledError)


class MqttLink:
    """A connected client. Methods raise `LinkLost` when the connection is gone."""

    def __init__(self, client: aiomqtt.Client, loop: Any) -> None:
        # The loop is named explicitly so that any Trio task may call in, not only the
        # descendants of the task that opened it.
        self._client = client
        self._loop = loop
        # Taken from the asyncio side and not yet handed out; shared, so that a reader that
        # stops iterating leaves the rest to the next.
        self._taken: deque[InboundMessage] = deque()
        assert isinstance(client, _TrioSafeClient)
        self._publish = trio_asyncio.aio_as_trio(client.publish_checked, loop=loop)
        self._subscribe = trio_asyncio.aio_as_trio(client.subscribe, loop=loop)
        self._unsubscribe = trio_asyncio.aio_as_trio(client.unsubscribe, loop=loop)

    async def subscribe(self, topic: str, qos: int) -> None:
        """Subscribe to `topic` at `qos` and wait for the broker's SUBACK; the broker then sends its retained messages.

        Errors: `LinkLost` when the connection is gone; `SubscribeRefused` when the broker says no.

        Cancellation: the SUBSCRIBE may already be on its way, so the subscription may or may not
        hold. Safe to retry: subscribing again replaces it (and brings the retained messages again).
        """
        try:
            reason_codes = await self._subscribe(topic, qos=qos)
        except _LINK_ERRORS as exc:
            raise LinkLost(f"subscribe to {topic!r} failed: {str(exc) or 'connection closed'}") from exc
        for code in reason_codes:
            if getattr(code, "is_failure", False):
                raise SubscribeRefused(f"broker refused the subscription to {topic!r}: {code}")

    async def unsubscribe(self, topic: str) -> None:
        """Unsubscribe from `topic` and wait for the broker's UNSUBACK.

        Errors: `LinkLost` when the connection is gone.

        Cancellation: the UNSUBSCRIBE may already be on its way, so messages on `topic` may or may
        not keep coming. Safe to retry.
        """
        try:
            await self._unsubscribe(topic)
        except _LINK_ERRORS as exc:
            raise LinkLost(f"unsubscribe from {topic!r} failed: {str(exc) or 'connection closed'}") from exc

    def unsubscribe_nowait(self, topic: str) -> None:
        """Send UNSUBSCRIBE from `topic` without waiting for the broker's answer.

        For a reader that is done with `topic`, when the broker may still be sending a long
        backlog in front of the answer. Errors: `LinkLost` when not connected.
        """
        assert isinstance(self._client, _TrioSafeClient)
        self._client.unsubscribe_nowait(topic)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool = False, expiry: int | None = None
    ) -> None:
        """Publish and, for QoS 1 and 2, wait for the broker's acknowledgement.

        `expiry` sets the message expiry interval, in seconds. Errors: `LinkLost` when the connection
        is gone; `PublishRefused` when the acknowledgement carries a failure reason code.

        Cancellation: once paho holds the message it sends it anyway; only the wait for the
        acknowledgement is abandoned. So the message may or may not reach the broker, and
        publishing again may deliver it twice.
        """
        properties = None
        if expiry:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.MessageExpiryInterval = expiry
        try:
            await self._publish(topic, payload, qos=qos, retain=retain, properties=properties)
        except _LINK_ERRORS as exc:
            raise LinkLost(f"publish to {topic!r} failed: {str(exc) or 'connection closed'}") from exc

    def publish_nowait(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 0 without waiting: the message joins paho's outgoing queue now.

        For high-rate, best-effort messages (live events), where a round trip through the
        asyncio loop per message would cost more than the message. Errors: `LinkLost` when
        not connected or when the outgoing queue is full (the broker is not keeping up).
        """
        assert isinstance(self._client, _TrioSafeClient)
        self._client.publish_nowait(topic, payload, retain=retain)

    def messages(self) -> AsyncIterator[InboundMessage]:
        """Messages of every subscription, in arrival order; `LinkLost` once those read before a loss are out.

        Backpressure: the link reads from the broker only while fewer than `INCOMING_LIMIT`
        messages (and `INCOMING_BYTES_LIMIT` bytes) wait to be taken, so a reader that falls
        behind holds the broker back (which queues for this client, up to its own limit)
        instead of filling memory. While it is held, the link still sends its keepalive, so
        the broker keeps the connection. The broker's answers (SUBACK, PUBACK) wait behind the
        messages not yet read: a reader must go on taking messages while it waits for one.
        """
        assert isinstance(self._client, _TrioSafeClient)
        return _Messages(trio_asyncio.aio_as_trio(self._client.take_messages, loop=self._loop), self._taken)

    @property
    def reading(self) -> bool:
        """Whether the link reads the socket now (False: held back by a reader that fell behind)."""
        assert isinstance(self._client, _TrioSafeClient)
        return self._client.reading

    @property
    def held(self) -> int:
        """Messages read from the broker that no reader has taken yet."""
        assert isinstance(self._client, _TrioSafeClient)
        return len(self._client.incoming) + len(self._taken)

    @property
    def pauses(self) -> int:
        """How many times the link stopped reading because its readers fell behind."""
        assert isinstance(self._client, _TrioSafeClient)
        return self._client.pauses


class _Messages:
    """A reader of the link: takes what has arrived in one trip to the asyncio loop, and hands it out one by one."""

    def __init__(self, take: Any, taken: deque[InboundMessage]) -> None:
        self._take = take
        self._taken = taken

    def __aiter__(self) -> _Messages:
        return self

    async def __anext__(self) -> InboundMessage:
        if not self._taken:
            try:
                self._taken.extend(await self._take())
            except _LINK_ERRORS as exc:
                raise LinkLost(str(exc) or "connection closed") from exc
        return self._taken.popleft()


@asynccontextmanager
async def open_mqtt_link(options: LinkOptions) -> AsyncIterator[MqttLink]:
    """Connect (MQTT 5, clean start, TCP_NODELAY), yield the link, disconnect on exit.

    Errors: `ConnectFailed` with the reason when the broker is unreachable, the TLS
    handshake fails or the broker refuses the client, or no answer comes within `CONNECT_TIMEOUT`.
    Leaving the block sends DISCONNECT (shielded, bounded), so a will message is not
    triggered by a clean exit.

    Cancellation: while connecting, the attempt is abandoned and the asyncio loop closed
    with it. Inside the block, a cancellation leaves it as any exit does: DISCONNECT is
    sent, shielded and bounded by `DISCONNECT_TIMEOUT`, so the broker does not publish the
    will. What the broker still sends meanwhile is read and dropped, not decoded.
    """
    # The loop's own nursery would wrap errors raised in the caller's block.
    with unwrap_lone_errors():
        async with trio_asyncio.open_loop() as loop:
            context = tls_context(options) if options.tls_enabled else None
            client = await trio_asyncio.aio_as_trio(_make_client_aio, loop=loop)(options, context)
            session = trio_asyncio.aio_as_trio(client, loop=loop)
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    await session.__aenter__()
            except (aiomqtt.MqttError, trio.TooSlowError, OSError, ssl.SSLError) as exc:
                close_quietly(client._client.socket())
                reason = _connect_reason(exc)
                release_frames(exc)
                raise ConnectFailed(reason) from None
            link = MqttLink(client, loop)
            try:
                yield link
            finally:
                connection: socket.socket | None = None
                try:
                    # An error on exit means the link was already gone: nothing is left to close.
                    with (
                        trio.CancelScope(shield=True),
                        trio.move_on_after(DISCONNECT_TIMEOUT),
                        contextlib.suppress(aiomqtt.MqttError),
                    ):
                        connection = await trio_asyncio.aio_as_trio(_send_disconnect, loop=loop)(client)
                        await session.__aexit__(None, None, None)
                        if connection is not None:
                            await wait_for_broker_close(connection)
                finally:
                    if connection is not None:
                        connection.close()


class _TrioSafeClient(aiomqtt.Client):
    """aiomqtt's client with socket handling fit for trio-asyncio.

    Safety: aiomqtt defers `add_reader`/`add_writer` through `call_soon_threadsafe` (paho
    may call from the connect thread). When the connection breaks, paho closes the socket
    before a deferred registration runs, which then asks Trio to watch a closed (or
    reused) file descriptor: Trio fails with an internal error and the process dies. Here
    a deferred registration first checks that the socket is still paho's open socket.

    Speed: aiomqtt answers each "paho wants to write" with `add_writer`, which trio-asyncio
    serves with a new Trio task per call: a task, an epoll registration and a teardown per
    message. Here the writes asked for within one loop turn are flushed together at once,
    and only a full socket buffer makes us wait for writability. Reading, paho asks the
    socket for each packet a few bytes at a time: here it reads from a buffer filled
    `RECV_CHUNK` bytes at a time, up to `READ_BURST` packets per wake, and the reader takes
    every message waiting in one trip through trio-asyncio rather than one trip each.

    Backpressure: aiomqtt's incoming queue has no bound, and paho reads (and acknowledges)
    whatever the broker sends. Here the socket's reader is removed once `INCOMING_LIMIT`
    messages (or `INCOMING_BYTES_LIMIT` bytes) wait, and put back when the reader takes
    them. While it is held, paho's keepalive would take the unread PINGRESP for a dead
    broker: the silence is ours, so the misc loop tells paho that bytes are arriving, and
    paho goes on sending PINGREQ.

    These overrides follow aiomqtt 2.x's and paho 2.x's private callbacks and fields, hence
    the `<3` pin.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flush_pending = False
        self._writer_waiting = False
        # Messages read and not yet taken by a reader, and whether the socket is being read.
        self.incoming: deque[InboundMessage] = deque()
        self._incoming_bytes = 0
        self.reading = True
        self.pauses = 0
        self._arrived = asyncio.Event()
        self._socket: Any = None
        # What the last recv brought that paho has not asked for yet, and whether the socket ran dry.
        self._chunk = b""
        self._offset = 0
        self._drained = False
        self._paho_recv = self._client._sock_recv
        self._client._sock_recv = self._recv_buffered  # type: ignore[method-assign]
        # Failure reason codes of acknowledgements, by message id, until their publisher looks.
        self._refused: dict[int, str] = {}
        paho_publish = self._client.publish

        def publish_noting_mid(*args: Any, **kwargs: Any) -> mqtt.MQTTMessageInfo:
            info = paho_publish(*args, **kwargs)
            # Each aiomqtt publish runs in its own asyncio task, hence its own context.
            _PUBLISH_MID.set(info.mid)
            return info

        self._client.publish = publish_noting_mid  # type: ignore[method-assign]

    async def publish_checked(
        self, topic: str, payload: bytes, *, qos: int, retain: bool, properties: Properties | None
    ) -> None:
        """aiomqtt's publish, and `PublishRefused` when the broker's acknowledgement says no."""
        await self.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        reason = self._refused.pop(_PUBLISH_MID.get(), None)
        if reason is not None:
            raise PublishRefused(f"broker refused the publish to {topic!r}: {reason}")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self._refused[mid] = str(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        def register() -> None:
            if still_open(client.socket(), sock):
                self._socket = sock
                self._loop.add_reader(sock.fileno(), self._read)
                self._misc_task = self._loop.create_task(self._misc_loop())

        self._loop.call_soon_threadsafe(register)

    def _read(self) -> None:
        """Read packets until the socket runs dry, the readers fall behind, or the burst is spent."""
        client, sock = self._client, self._socket
        try:
            for _ in range(READ_BURST):
                if not self.reading or not still_open(client.socket(), sock):
                    return
                self._drained = False
                if client.loop_read() != mqtt.MQTT_ERR_SUCCESS or self._drained:
                    return
        except Exception as exc:  # a broken connection, whatever paho raises for it
            self._fail(exc)
            return
        # Bytes already in our buffer (or decoded by TLS) wake no reader: come back for them.
        self._loop.call_soon(self._read)

    def _recv_buffered(self, bufsize: int) -> bytes:
        """paho's recv, served from one large read of the socket; notes when the socket has nothing more."""
        if self._offset >= len(self._chunk):
            try:
                data = self._paho_recv(RECV_CHUNK)
            except BlockingIOError:
                self._drained = True
                raise
            if len(data) <= bufsize:
                return data
            self._chunk, self._offset = data, 0
        start = self._offset
        self._offset = start + bufsize
        return self._chunk[start : start + bufsize]

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        expiry = getattr(message.properties, "MessageExpiryInterval", None) if message.properties else None
        inbound = InboundMessage(message.topic, bytes(message.payload), message.qos, message.retain, expiry)
        self.incoming.append(inbound)
        self._incoming_bytes += len(inbound.payload)
        self._arrived.set()
        if len(self.incoming) >= INCOMING_LIMIT or self._incoming_bytes >= INCOMING_BYTES_LIMIT:
            self._hold()

    def _hold(self) -> None:
        """Stop reading the socket: the broker's messages wait in the kernel, then at the broker."""
        if not self.reading:
            return
        self.reading = False
        self.pauses += 1
        if still_open(self._client.socket(), self._socket):
            self._loop.remove_reader(self._socket.fileno())

    def _release(self) -> None:
        """Read the socket again, starting with what is buffered already."""
        if self.reading:
            return
        self.reading = True
        if still_open(self._client.socket(), self._socket):
            self._loop.add_reader(self._socket.fileno(), self._read)
            self._loop.call_soon(self._read)

    async def take_messages(self) -> list[InboundMessage]:
        """Every message read so far, waiting for one; then `MqttError` once the connection is gone.

        Messages read before the connection dropped come out first: paho acknowledged them already.
        """
        while not self.incoming:
            if self._disconnected.done():
                raise aiomqtt.MqttError("Disconnected during message iteration") from self._disconnected.exception()
            self._arrived.clear()
            arrived = self._loop.create_task(self._arrived.wait())
            try:
                await asyncio.wait((arrived, self._disconnected), return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrived.cancel()
        taken = list(self.incoming)
        self.incoming.clear()
        self._incoming_bytes = 0
        self._release()
        return taken

    async def _misc_loop(self) -> None:
        while True:
            if not self.reading:
                # Held back by us, the broker's packets (its PINGRESP among them) wait unread.
                self._client._last_bytes_received = mqtt.time_func()
                self._client._ping_t = 0
            if self._client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                return
            await asyncio.sleep(1)

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._flush_pending or self._writer_waiting:
            return
        self._flush_pending = True
        self._loop.call_soon_threadsafe(self._flush, client, sock)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._writer_waiting = False
        super()._on_socket_unregister_write(client, userdata, sock)

    def _flush(self, client: mqtt.Client, sock: Any) -> None:
        try:
            if not still_open(client.socket(), sock):
                return
            # paho sends each packet with its own send(); corked, the kernel packs a burst of
            # small messages into full segments and sends them when we uncork.
            cork = len(client._out_packet) > 1
            try:
                if cork:
                    set_cork(sock, on=True)
                client.loop_write()
            except Exception as exc:  # a broken connection, whatever paho raises for it
                self._fail(exc)
                return
            finally:
                if cork and still_open(client.socket(), sock):
                    set_cork(sock, on=False)
            if client.want_write() and still_open(client.socket(), sock):
                # The socket buffer is full: wait until the kernel takes more.
                self._writer_waiting = True
                self._loop.add_writer(sock.fileno(), self._write_when_ready, client, sock)
        finally:
            self._flush_pending = False

    def _write_when_ready(self, client: mqtt.Client, sock: Any) -> None:
        self._writer_waiting = False
        self._loop.remove_writer(sock.fileno())
        self._flush_pending = True
        self._flush(client, sock)

    def unsubscribe_nowait(self, topic: str) -> None:
        result, _ = self._client.unsubscribe(topic)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise LinkLost(f"unsubscribe from {topic!r} failed: {mqtt.error_string(result)}")

    # An answer to a call whose caller stopped waiting (or never waited) has no one to tell:
    # aiomqtt would log it as an error.
    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any = None
    ) -> None:
        if mid in self._pending_subscribes:
            super()._on_subscribe(client, userdata, mid, reason_codes, properties)

    def _on_unsubscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any = None
    ) -> None:
        if mid in self._pending_unsubscribes:
            super()._on_unsubscribe(client, userdata, mid, reason_codes, properties)

    def publish_nowait(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if len(self._client._out_packet) >= OUTGOING_LIMIT:
            raise LinkLost(f"publish to {topic!r} failed: {OUTGOING_LIMIT} messages already wait to be sent")
        info = self._client.publish(topic, payload, qos=0, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise LinkLost(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")

    def send_disconnect(self) -> socket.socket | None:
        """Queue DISCONNECT and write it now; a second handle on the connection, or None if none was sent.

        The broker must read DISCONNECT before the socket closes, or it publishes the will.
        Written here, it is on the wire before `__aexit__` waits; what the socket buffer
        cannot take yet goes out through the usual writer.

        paho closes its socket as soon as DISCONNECT is written. The broker may still be
        answering what came before it (a publish's acknowledgement, our own message coming
        back to a subscription of ours): meeting a closed socket, such an answer is reset, and
        Mosquitto then drops the connection as broken before it reads the DISCONNECT, and
        publishes the will. The caller keeps the connection open on the returned duplicate,
        reading what still comes, until the broker closes it.
        """
        if self._disconnected.done():
            return None
        sock = self._client.socket()
        if sock is None:
            return None
        # A plain socket on a duplicate descriptor: TLS records still to come are read and dropped as bytes.
        connection = socket.socket(fileno=os.dup(sock.fileno()))
        connection.setblocking(False)
        if self._client.disconnect() != mqtt.MQTT_ERR_SUCCESS:
            connection.close()
            return None
        try:
            self._client.loop_write()
        except Exception as exc:  # a broken connection, whatever paho raises for it
            self._fail(exc)
        return connection

    def _fail(self, exc: Exception) -> None:
        if not self._disconnected.done():
            self._disconnected.set_exception(exc)


async def _send_disconnect(client: _TrioSafeClient) -> socket.socket | None:
    return client.send_disconnect()


_PUBLISH_MID: contextvars.ContextVar[int] = contextvars.ContextVar("publish_mid", default=-1)


async def _make_client_aio(options: LinkOptions, context: ssl.SSLContext | None) -> aiomqtt.Client:
    # aiomqtt binds to the running asyncio loop at construction.
    will = None
    if options.will is not None:
        properties = None
        if options.will.expiry:
            properties = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            properties.MessageExpiryInterval = options.will.expiry
        will = aiomqtt.Will(
            options.will.topic, options.will.payload, options.will.qos, options.will.retain, properties=properties
        )
    return _TrioSafeClient(
        options.host,
        options.port,
        username=options.username,
        password=options.password,
        identifier=options.client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        # A persistent session on a `$share` subscription makes Mosquitto keep handing
        # an offline member its share of jobs, so every connection starts clean.
        clean_start=True,
        keepalive=options.keepalive,
        will=will,
        tls_context=context,
        # paho leaves Nagle on, which stalls small QoS exchanges by ~40 ms.
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )


def _connect_reason(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within {CONNECT_TIMEOUT:.0f}s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, MqttConnectError):
        reason = f"broker refused the connection: {exc.rc}"
        if str(exc.rc) in ("Not authorized", "Bad user name or password"):
            reason += " (check mqtt.username and mqtt.password, and that the broker lets this client connect)"
        return reason
    text = str(exc) or type(exc).__name__
    # aiomqtt re-raises paho's ssl errors as plain text; name the common cause plainly.
    if "CERTIFICATE_VERIFY_FAILED" in text:
        detail = text.split("certificate verify failed:", 1)[-1].strip()
        return "TLS certificate verification failed: " + re.sub(r"\s*\(_ssl\.c:\d+\)$", "", detail)
    return text
