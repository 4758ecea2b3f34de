"""`ansible-worker archive`: subscribe to the group's statuses, records and presences; write them to the store.

One session to the broker feeds a bounded inbox (`INBOX` messages, and `INBOX_BYTES` of
payload counting the batch being written); one writer takes what has arrived, up to
`BATCH` messages or `BATCH_BYTES`, checks each (`messages`), and writes them in one
transaction. A full inbox holds the link, and the broker queues for this client meanwhile:
up to its own limit (Mosquitto's `max_queued_messages`), past which it drops messages. The
writer says so in the log while it is that far behind. Every message the archiver reads is
retained, so each new link (a restart of the archiver or of the broker) brings back every
status and record the broker still holds, and the upserts make reading them again harmless.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import trio

from ansible_worker.history.messages import Malformed, Row, read_message
from ansible_worker.history.reader import History, HistoryError
from ansible_worker.mqtt.link import InboundMessage, LinkOptions
from ansible_worker.mqtt.reconnect import KEEP_TRYING
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.topics import Topics

log = logging.getLogger(__name__)

# Messages between the link and the writer: a burst of this many waits here, not at the broker.
INBOX = 20_000
# And at most this much payload (with the batch in hand), one message more at worst: records
# may be large, and a writer far behind must not hold thousands of them.
INBOX_BYTES = 256 * 1024 * 1024
# One transaction: enough to amortise a commit (the cost of SQLite's), small enough to be short.
BATCH = 2000
BATCH_BYTES = 32 * 1024 * 1024
# How long a batch waits for more messages after its first: the most a status waits to be written.
LINGER = 0.05
# How far behind (a share of INBOX) before the log warns that the broker may drop messages.
BEHIND_SHARE = 0.8
# Malformed messages logged one by one per batch; the rest are counted.
LOGGED_PER_BATCH = 10
# A write that failed (the database away) is tried again after this, doubling, at most MOST.
RETRY_FIRST, RETRY_MOST = 0.5, 30.0


@dataclass(slots=True)
class ArchiverStats:
    """What the archiver has done, for its log and its tests."""

    written: int = 0
    skipped: int = 0
    batches: int = 0
    # Where the time goes: checking messages (on the Trio thread), and writing (in the store's thread).
    check_seconds: float = 0.0
    write_seconds: float = 0.0


class ByteBudget:
    """How many payload bytes the archiver holds, and a wait for room under `limit` (one message passes alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.most_held = 0
        self._freed = trio.Event()

    async def take(self, size: int) -> None:
        """Count `size` more bytes, once they fit (or nothing else is held). Cancellation: nothing is counted."""
        while self.held and self.held + size > self.limit:
            await self._freed.wait()
        self.held += size
        self.most_held = max(self.most_held, self.held)

    def give(self, size: int) -> None:
        """Count `size` bytes fewer: a batch was written (or dropped)."""
        self.held -= size
        self._freed.set()
        self._freed = trio.Event()


class Archiver:
    """Reads the group's messages from `receive` and writes them to `history`."""

    def __init__(self, history: History, topics: Topics) -> None:
        self.history = history
        self.topics = topics
        self.stats = ArchiverStats()
        self.budget = ByteBudget(INBOX_BYTES)
        self._warned_behind = False

    async def admit(
        self,
        arrived: trio.MemoryReceiveChannel[InboundMessage],
        inbox: trio.MemorySendChannel[InboundMessage],
    ) -> None:
        """Pass each message that `arrived` into `inbox` once the byte budget has room; a wait here holds the link."""
        async with inbox:
            async for message in arrived:
                await self.budget.take(len(message.payload))
                await inbox.send(message)

    async def run(self, receive: trio.MemoryReceiveChannel[InboundMessage]) -> None:
        """Write batches until the channel ends. Cancellation: the batch in hand is not written."""
        async for first in receive:
            batch = [first]
            size = len(first.payload)
            # A moment for more to arrive: a transaction per message would cap the rate at the
            # database's commits per second, while a batch costs about one commit.
            with trio.move_on_after(LINGER):
                while len(batch) < BATCH and size < BATCH_BYTES:
                    try:
                        message = await receive.receive()
                    except trio.EndOfChannel:
                        break
                    batch.append(message)
                    size += len(message.payload)
            self._note_backlog(receive)
            try:
                await self.write(batch)
            finally:
                self.budget.give(sum(len(message.payload) for message in batch))

    def _note_backlog(self, receive: trio.MemoryReceiveChannel[InboundMessage]) -> None:
        waiting = receive.statistics().current_buffer_used
        behind = waiting >= BEHIND_SHARE * INBOX
        if behind and not self._warned_behind:
            log.warning(
                "the archiver is %d messages behind: the broker queues what follows for it, and drops"
                " messages beyond its max_queued_messages; a gap in history is possible",
                waiting,
            )
        elif not behind and self._warned_behind and waiting == 0:
            log.info("the archiver has caught up")
        self._warned_behind = behind or (self._warned_behind and waiting > 0)

    async def write(self, messages: list[InboundMessage]) -> None:
        """Check `messages` and write those that pass, in one transaction, retrying while the database is away.

        Cancellation: nothing is left half-written (one transaction); the batch may be lost to
        this run and comes back with the retained messages on the next.
        """
        rows: list[Row] = []
        refused = 0
        started = time.perf_counter()
        for message in messages:
            try:
                row = read_message(self.topics, message.topic, message.payload)
            except Malformed as exc:
                refused += 1
                if refused <= LOGGED_PER_BATCH:
                    log.warning("skipped a message on %s: %s", message.topic[:300], exc)
                continue
            except Exception:
                # The error boundary of one message: nothing the broker sends stops the archiver.
                refused += 1
                log.exception("skipped a message on %s that could not be read", message.topic[:300])
                continue
            if row is not None:
                rows.append(row)
        if refused > LOGGED_PER_BATCH:
            log.warning("skipped %d more malformed messages", refused - LOGGED_PER_BATCH)
        self.stats.skipped += refused
        checked = time.perf_counter()
        self.stats.check_seconds += checked - started
        if rows:
            await self._write_until_done(rows)
        self.stats.write_seconds += time.perf_counter() - checked
        self.stats.written += len(rows)
        self.stats.batches += 1

    async def _write_until_done(self, rows: list[Row]) -> None:
        wait = RETRY_FIRST
        while True:
            try:
                await self.history.write(rows)
                return
            except HistoryError as exc:
                log.warning(
                    "cannot write %d messages to the history store (%s); trying again in %.1fs", len(rows), exc, wait
                )
            await trio.sleep(wait)
            wait = min(wait * 2, RETRY_MOST)


async def serve_archiver(
    history: History,
    link: LinkOptions,
    topics: Topics,
    *,
    keep_seconds: int | None = None,
    purge_every: float = 600,
    purge_batch: int = 1000,
    task_status: trio.TaskStatus[Archiver] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Archive the group's messages into `history` until cancelled; with `keep_seconds`, clean up too.

    Reports started with the `Archiver` once its writer runs (the broker may still be away:
    the session keeps trying for ever).

    Cancellation: the link is closed with a DISCONNECT; the batch being written is either
    committed or not at all.
    """
    send, receive = trio.open_memory_channel[InboundMessage](INBOX)
    # The session hands each message over at once; the archiver admits it within its byte budget.
    arrive, arrived = trio.open_memory_channel[InboundMessage](0)
    filters = [topics.status_subscription, topics.record_subscription, topics.workers_subscription]
    session = BrokerSession(link, [(topic_filter, 1) for topic_filter in filters], inbox=arrive, reconnect=KEEP_TRYING)
    archiver = Archiver(history, topics)
    away_since: list[float] = []

    def on_connected() -> None:
        if session.connections > 1:
            gone = time.monotonic() - away_since[-1] if away_since else math.nan
            log.warning(
                "reconnected after %.0fs: reading again every status and record the broker retains;"
                " a job whose retained messages expired or were cleared meanwhile is missing from history",
                gone,
            )

    async def watch_link() -> None:
        while True:
            await session.wait_disconnected()
            away_since.append(time.monotonic())
            await session.wait_connected()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(archiver.run, receive)
        nursery.start_soon(archiver.admit, arrived, send)
        await nursery.start(lambda task_status: session.serve(on_connected=on_connected, task_status=task_status))
        nursery.start_soon(watch_link)
        if keep_seconds is not None:
            from ansible_worker.history.retention import purge_forever

            nursery.start_soon(purge_forever, history, keep_seconds, purge_every, purge_batch)
        log.info("archiving group %s of %s:%d into %s", topics.group, link.host, link.port, history.url_shown)
        task_status.started(archiver)
