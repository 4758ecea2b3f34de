"""The event FIFO's reader against real FIFOs and real writers (file descriptors and a child process)."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ansible_worker.run.events.event_fifo import MAX_LINE_BYTES, EventFifo


class Reader:
    """`read_events` running in the background, with the events it delivered so far."""

    def __init__(self, fifo: EventFifo) -> None:
        self.fifo = fifo
        self.events: list[dict[str, Any]] = []
        self.exited = trio.Event()
        self.returned = trio.Event()
        self._arrived = trio.Event()

    def _on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._arrived.set()
        self._arrived = trio.Event()

    async def run(self) -> None:
        await self.fifo.read_events(self._on_event, exited=self.exited)
        self.returned.set()

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        """Until `count` events arrived (bounded by the caller)."""
        while len(self.events) < count:
            await self._arrived.wait()
        return self.events


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[EventFifo]:
    instance = EventFifo(tmp_path / "events.fifo")
    yield instance
    instance.close()


@asynccontextmanager
async def reading(fifo: EventFifo) -> AsyncIterator[Reader]:
    reader = Reader(fifo)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader.run)
        yield reader
        nursery.cancel_scope.cancel()


def open_writer(fifo: EventFifo) -> int:
    # The read end is open already, so this does not block.
    return os.open(fifo.path, os.O_WRONLY | os.O_CLOEXEC)


def line(**fields: Any) -> bytes:
    return json.dumps(fields).encode() + b"\n"


def test_the_fifo_is_private(fifo: EventFifo) -> None:
    """The FIFO is created mode 0600: other users cannot inject events into a run."""
    info = fifo.path.stat()
    assert stat.S_ISFIFO(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600


async def test_lines_from_a_writer_arrive_in_order_until_it_closes(fifo: EventFifo) -> None:
    """Each JSON line becomes one `on_event` call, in order; the writer closing ends `read_events`."""
    async with reading(fifo) as reader:
        writer = open_writer(fifo)
        os.write(writer, line(n=1) + line(n=2))
        with trio.fail_after(5):
            await reader.wait_for(2)
        os.write(writer, line(n=3))
        os.close(writer)
        with trio.fail_after(5):
            await reader.returned.wait()
    assert reader.events == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert (fifo.opened, fifo.invalid_lines) == (True, 0)


async def test_a_real_writer_process(fifo: EventFifo) -> None:
    """A separate process that opens the FIFO, writes lines in several writes and exits is read to the end."""
    script = (
        "import json, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY)\n"
        "for n in range(200):\n"
        "    os.write(fd, (json.dumps({'event': 'runner_on_ok', 'n': n, 'pad': 'x' * 500}) + '\\n').encode())\n"
        "os.close(fd)\n"
    )
    async with reading(fifo) as reader:
        with trio.fail_after(30):
            result = await trio.run_process([sys.executable, "-c", script, str(fifo.path)], check=False)
            await reader.returned.wait()
    assert result.returncode == 0
    assert [event["n"] for event in reader.events] == list(range(200))
    assert fifo.invalid_lines == 0


async def test_no_writer_yet_is_not_the_end(fifo: EventFifo) -> None:
    """Before any writer has opened the FIFO, its empty read is no end of file: the reader keeps waiting."""
    async with reading(fifo) as reader:
        # Give a wrong implementation time to take the false end of file and return.
        with trio.move_on_after(0.3):
            await reader.returned.wait()
        assert not reader.returned.is_set()
        writer = open_writer(fifo)
        os.write(writer, line(n=1))
        os.close(writer)
        with trio.fail_after(5):
            await reader.returned.wait()
    assert reader.events == [{"n": 1}]


async def test_exited_without_a_writer_ends_the_read(fifo: EventFifo) -> None:
    """A run that exits without opening the FIFO ends `read_events` once `exited` is set; `opened` stays False."""
    async with reading(fifo) as reader:
        reader.exited.set()
        with trio.fail_after(5):
            await reader.returned.wait()
    assert (reader.events, fifo.opened, fifo.invalid_lines) == ([], False, 0)


async def test_a_line_split_over_writes_is_joined(fifo: EventFifo) -> None:
    """A line whose end comes in a later write is decoded once it is complete, not as two bad halves."""
    async with reading(fifo) as reader:
        writer = open_writer(fifo)
        os.write(writer, line(n=1) + b'{"n": 2, "half": "fir')
        # The first event proves the reader has taken the half line too (it reads all there is).
        with trio.fail_after(5):
            await reader.wait_for(1)
        os.write(writer, b'st"}\n')
        with trio.fail_after(5):
            await reader.wait_for(2)
        os.close(writer)
        with trio.fail_after(5):
            await reader.returned.wait()
    assert reader.events == [{"n": 1}, {"n": 2, "half": "first"}]
    assert fifo.invalid_lines == 0


async def test_a_last_line_without_newline_is_still_read(fifo: EventFifo) -> None:
    """What the writer left without a final newline is decoded at the end of file."""
    async with reading(fifo) as reader:
        writer = open_writer(fifo)
        os.write(writer, line(n=1) + b'{"n": 2}')
        os.close(writer)
        with trio.fail_after(5):
            await reader.returned.wait()
    assert reader.events == [{"n": 1}, {"n": 2}]


async def test_invalid_lines_are_counted_and_skipped(fifo: EventFifo, caplog: pytest.LogCaptureFixture) -> None:
    """Bad JSON, JSON that is no object and bad UTF-8 are counted in `invalid_lines`; blank lines are not."""
    async with reading(fifo) as reader:
        writer = open_writer(fifo)
        os.write(
            writer,
            line(n=1)
            + b"{not json\n"
            + b"[1, 2]\n"
            + b'"a string"\n'
            + b"\n   \n"
            + b'{"bad": "\xff\xfe"}\n'
            + line(n=2)
            + b"[" * 5000
            + b"\n",
        )
        os.close(writer)
        with trio.fail_after(5):
            await reader.returned.wait()
    assert reader.events == [{"n": 1}, {"n": 2}]
    assert fifo.invalid_lines == 5
    # The first three are logged, the rest only counted.
    assert sum("ignoring an invalid event line" in r.getMessage() for r in caplog.records) == 3


async def test_an_oversized_line_is_rejected_and_the_stream_goes_on(fifo: EventFifo) -> None:
    """A line far over MAX_LINE_BYTES is not delivered nor kept whole in memory; the lines around it are."""
    huge = b'{"pad": "' + b"x" * (3 * MAX_LINE_BYTES) + b'"}\n'
    writer = open_writer(fifo)
    async with reading(fifo) as reader:
        os.write(writer, line(n=1))
        with trio.fail_after(5):
            await reader.wait_for(1)
        # The pipe holds far less than this: the write blocks while the reader drains it.
        with trio.fail_after(30):
            await trio.to_thread.run_sync(os.write, writer, huge + line(n=2))
        os.close(writer)
        with trio.fail_after(30):
            await reader.returned.wait()
    assert reader.events == [{"n": 1}, {"n": 2}]
    assert fifo.invalid_lines >= 1


async def test_an_oversized_line_counts_as_one_invalid_line(fifo: EventFifo) -> None:
    """One line that is too long is one unreadable line, as the job's error message will say."""
    huge = b'{"pad": "' + b"x" * (3 * MAX_LINE_BYTES) + b'"}\n'
    writer = open_writer(fifo)
    async with reading(fifo) as reader:
        with trio.fail_after(30):
            await trio.to_thread.run_sync(os.write, writer, huge + line(n=2))
        os.close(writer)
        with trio.fail_after(30):
            await reader.returned.wait()
    assert reader.events == [{"n": 2}]
    assert fifo.invalid_lines == 1


async def test_every_writer_must_close_before_the_end(fifo: EventFifo) -> None:
    """With two writers open, one closing is no end of file: the other's later lines still arrive."""
    async with reading(fifo) as reader:
        first, second = open_writer(fifo), open_writer(fifo)
        os.write(first, line(n=1))
        os.close(first)
        with trio.fail_after(5):
            await reader.wait_for(1)
        with trio.move_on_after(0.2):
            await reader.returned.wait()
        assert not reader.returned.is_set()
        os.write(second, line(n=2))
        os.close(second)
        with trio.fail_after(5):
            await reader.returned.wait()
    assert reader.events == [{"n": 1}, {"n": 2}]


async def test_a_writer_that_reopens_after_the_end_is_read_by_the_next_call(fifo: EventFifo) -> None:
    """A call ends at the first end of file; the read end stays open, so a new writer's lines wait for the next call."""
    async with reading(fifo) as reader:
        writer = open_writer(fifo)
        os.write(writer, line(n=1))
        os.close(writer)
        with trio.fail_after(5):
            await reader.returned.wait()
    assert reader.events == [{"n": 1}]
    writer = open_writer(fifo)
    os.write(writer, line(n=2))
    os.close(writer)
    async with reading(fifo) as again:
        with trio.fail_after(5):
            await again.returned.wait()
    assert again.events == [{"n": 2}]


async def test_exited_while_a_writer_holds_the_fifo_reads_what_was_written(fifo: EventFifo) -> None:
    """After `exited`, lines already written are still delivered, even if a straggler keeps the FIFO open."""
    writer = open_writer(fifo)
    try:
        os.write(writer, line(n=1) + line(n=2))
        async with reading(fifo) as reader:
            reader.exited.set()
            with trio.fail_after(5):
                await reader.wait_for(2)
    finally:
        os.close(writer)
    assert reader.events == [{"n": 1}, {"n": 2}]


async def test_exited_with_an_idle_writer_does_not_spin(fifo: EventFifo, monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiting for a straggler's end of file after `exited` sleeps on the FIFO rather than polling it."""
    reads = 0
    read_available: Callable[[], tuple[bytes, bool]] = fifo._read_available

    def counted() -> tuple[bytes, bool]:
        nonlocal reads
        reads += 1
        return read_available()

    monkeypatch.setattr(fifo, "_read_available", counted)
    writer = open_writer(fifo)
    try:
        async with reading(fifo) as reader:
            reader.exited.set()
            cpu = time.process_time()
            with trio.move_on_after(0.3):
                await reader.returned.wait()
            cpu = time.process_time() - cpu
    finally:
        os.close(writer)
    assert reads <= 10, f"{reads} reads and {cpu:.2f}s of CPU in 0.3s"


async def test_cancellation_while_waiting_for_a_writer(fifo: EventFifo) -> None:
    """`read_events` waiting on a FIFO that no writer opened leaves at once when cancelled."""
    with trio.fail_after(5):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(fifo.read_events, lambda event: None, exited=trio.Event()))
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
    assert scope.cancelled_caught


async def test_cancellation_in_the_middle_of_a_line(fifo: EventFifo) -> None:
    """Cancelled with half a line pending and a writer open, `read_events` leaves without delivering the half."""
    writer = open_writer(fifo)
    try:
        # The bound covers leaving the block, which cancels the reader.
        with trio.fail_after(5):
            async with reading(fifo) as reader:
                os.write(writer, line(n=1) + b'{"n": 2')
                await reader.wait_for(1)
        assert reader.events == [{"n": 1}]
        assert not reader.returned.is_set()
    finally:
        os.close(writer)
