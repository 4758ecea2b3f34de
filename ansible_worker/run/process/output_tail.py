"""Keep the last part of a process's human output, so a chatty playbook cannot exhaust memory."""

from __future__ import annotations

from collections.abc import Callable

import trio

# Ansible's human output only feeds error messages: no one waits for it line by line.
GATHER_SECONDS = 0.05
# A pipe's whole capacity on Linux: a read this long left more behind.
READ_BYTES = 65536


class OutputTail:
    """The newest `limit` bytes written to a pipe, and how many bytes there were in all."""

    def __init__(self, limit: int, *, mask: Callable[[str], str] = str) -> None:
        self.limit = limit
        # Applied to what is read back: the job's secrets never leave as text.
        self.mask = mask
        self.total_bytes = 0
        self._buffer = bytearray()

    def feed(self, chunk: bytes | bytearray) -> None:
        """Add `chunk` to the tail and to `total_bytes`, dropping what falls out of the newest `limit` bytes."""
        self.total_bytes += len(chunk)
        self._buffer += chunk
        if len(self._buffer) > 2 * self.limit:
            # Trimming only when twice over keeps the copy cost amortised.
            del self._buffer[: len(self._buffer) - self.limit]

    def text(self) -> str:
        """The newest `limit` bytes as text (invalid UTF-8 replaced)."""
        return self.mask(bytes(self._buffer[-self.limit :]).decode("utf-8", "replace"))

    def last_lines(self, count: int) -> list[str]:
        """The last `count` non-blank lines of `text()`, trailing blanks stripped."""
        lines = [line.rstrip() for line in self.text().splitlines()]
        return [line for line in lines if line][-count:]

    async def drain(self, stream: trio.abc.ReceiveStream, *, exited: trio.Event) -> None:
        """Read `stream` until it ends.

        A short pause after a read that emptied the pipe lets Ansible's lines gather in it
        (64 KiB of room), so a chatty run costs the worker one wakeup per burst, not one per
        line. A full read is followed by the next at once: a run that writes faster than
        the pauses would let through is never held up by its own output. The pause ends
        early once the process has `exited`: the end is near, and waiting would only delay
        the job's result.

        Cancellation: every chunk read is already in the tail; the stream is left open (its
        owner closes it). Calling it again reads on from there.
        """
        while chunk := await stream.receive_some(READ_BYTES):
            self.feed(chunk)
            if len(chunk) < READ_BYTES:
                with trio.move_on_after(GATHER_SECONDS):
                    await exited.wait()
