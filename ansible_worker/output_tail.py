"""Keep the last part of a process's human output, so a chatty playbook cannot exhaust memory."""

from __future__ import annotations

import trio


class OutputTail:
    """The newest `limit` bytes written to a pipe, and how many bytes there were in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total_bytes = 0
        self._buffer = bytearray()

    def feed(self, chunk: bytes | bytearray) -> None:
        self.total_bytes += len(chunk)
        self._buffer += chunk
        if len(self._buffer) > 2 * self.limit:
            # Trimming only when twice over keeps the copy cost amortised.
            del self._buffer[: len(self._buffer) - self.limit]

    def text(self) -> str:
        return bytes(self._buffer[-self.limit :]).decode("utf-8", "replace")

    def last_lines(self, count: int) -> list[str]:
        lines = [line.rstrip() for line in self.text().splitlines()]
        return [line for line in lines if line][-count:]

    async def drain(self, stream: trio.abc.ReceiveStream) -> None:
        """Read `stream` until it ends."""
        while chunk := await stream.receive_some(65536):
            self.feed(chunk)
