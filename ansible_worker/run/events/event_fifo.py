"""Receive the callback plugin's JSON lines through a FIFO in the job's run directory."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 4 * 1024 * 1024
# After the FIFO turns readable, wait this long so that a burst of events (a task ending on
# many hosts at once) is read, published and flushed together: one wakeup per burst rather
# than per event, which matters when Ansible and the worker share a few cores.
GATHER_SECONDS = 0.01
# A FIFO's capacity on Linux.
PIPE_BYTES = 65536


async def _first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as any of `waits` returns; the others are cancelled."""
    async with trio.open_nursery() as nursery:
        for wait in waits:

            async def run(wait: Callable[[], Awaitable[object]] = wait) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)


class EventFifo:
    """The read end of a FIFO that one run of ansible-playbook writes events into.

    The read end is opened (non-blocking) before Ansible starts, so Ansible's blocking open
    of the write end never waits for us.
    """

    def __init__(self, path: Path) -> None:
        os.mkfifo(path, 0o600)
        self.path = path
        self.invalid_lines = 0
        self._seen_data = False
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    async def read_events(self, on_event: Callable[[dict[str, Any]], None], *, exited: trio.Event) -> None:
        """Call `on_event` for each JSON object until every writer has closed the FIFO.

        The pause that gathers a burst of events ends early once Ansible has `exited`.

        Cancellation: the events already passed to `on_event` stay passed; a line read only in part
        is dropped with the call, so a second call would count its rest as an invalid line. The FIFO
        stays open until `close`. A caller bounds this wait, since a playbook that dies before
        opening the FIFO never sends an end of file.
        """
        pending = b""
        # The rest of a line already refused as too long is skipped up to its newline.
        skipping = False
        idle = behind = False
        while True:
            if exited.is_set() and idle:
                # A writer still holds the FIFO open (the last read would block, not end):
                # only its data or its close can come now, so wait for those alone.
                await self._wait_readable()
            else:
                # Reading a FIFO that no writer has opened yet returns b"", a false end of
                # file: wait until a writer has written (or opened and closed) first, or until
                # Ansible has exited, after which an empty read is the true end.
                await _first_of(self._wait_readable, exited.wait)
                if not behind:
                    with trio.move_on_after(GATHER_SECONDS):
                        await exited.wait()
            chunk, ended = self._read_available()
            idle = not chunk and not ended
            # A full pipe's worth: the writer may be waiting on it, so read on without a pause.
            behind = len(chunk) >= PIPE_BYTES
            data = pending + chunk
            if skipping:
                newline = data.find(b"\n")
                skipping = newline < 0
                data = b"" if skipping else data[newline + 1 :]
            lines = data.split(b"\n")
            pending = lines.pop()
            if len(pending) > MAX_LINE_BYTES:
                self._reject(pending[:80], "line too long")
                pending, skipping = b"", True
            for line in lines:
                if len(line) > MAX_LINE_BYTES:
                    self._reject(line[:80], "line too long")
                else:
                    self._decode(line, on_event)
            if ended:
                break
        if pending.strip():
            self._decode(pending, on_event)

    def _read_available(self) -> tuple[bytes, bool]:
        """Everything the FIFO holds now, and whether every writer has closed it."""
        parts: list[bytes] = []
        while True:
            try:
                part = os.read(self._fd, 262144)
            except BlockingIOError:
                return b"".join(parts), False
            if not part:
                return b"".join(parts), True
            self._seen_data = True
            parts.append(part)
            if sum(map(len, parts)) > MAX_LINE_BYTES:
                return b"".join(parts), False

    async def _wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self._fd)

    @property
    def opened(self) -> bool:
        """Whether anything was ever read: a run whose plugin never wrote leaves this False."""
        return self._seen_data

    def close(self) -> None:
        """Close the read end of the FIFO (the FIFO file stays, in the run directory). Call it once."""
        os.close(self._fd)

    def _decode(self, line: bytes, on_event: Callable[[dict[str, Any]], None]) -> None:
        if not line.strip():
            return
        try:
            event = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            self._reject(line[:80], str(exc))
            return
        if not isinstance(event, dict):
            self._reject(line[:80], "not a JSON object")
            return
        on_event(event)

    def _reject(self, start: bytes, why: str) -> None:
        self.invalid_lines += 1
        if self.invalid_lines <= 3:
            log.warning("ignoring an invalid event line (%s): %r", why, start)
