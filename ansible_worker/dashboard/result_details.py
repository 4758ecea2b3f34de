"""The results a job's page keeps whole, per task and host: bounded in bytes, failures dropped last. No I/O."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

# Results kept whole per host and task: a loop's items, retries, and the final one; each up to ENTRY_BYTES.
MAX_ENTRIES = 200
ENTRY_BYTES = 32 * 1024
DETAIL_KEYS = ("seq", "event", "status", "item", "time", "duration", "no_log", "result", "data")

Key = tuple[int, int]


class ResultDetails:
    """Each (task, host)'s results as the events carried them, the oldest dropped first past `limit` bytes.

    `failed` says whether a (task, host) failed now: those go only once no other is left.
    """

    def __init__(self, *, limit: int, failed: Callable[[Key], bool]) -> None:
        self.limit = limit
        self.total = 0
        self.dropped = 0
        self._failed = failed
        self._entries: dict[Key, deque[tuple[int, dict[str, Any]]]] = {}
        self._sizes: dict[Key, int] = {}
        self._order: deque[Key] = deque()
        self._failed_order: deque[Key] = deque()

    def get(self, key: Key) -> list[dict[str, Any]] | None:
        """The results kept of `key`, oldest first, or None when none are."""
        entries = self._entries.get(key)
        return [entry for _, entry in entries] if entries is not None else None

    def keep(self, key: Key, event: Mapping[str, Any], *, final_failure: bool) -> None:
        """Keep `event` as one of `key`'s results; `final_failure`: it is the final result and it failed."""
        entry = {name: event[name] for name in DETAIL_KEYS if event.get(name) is not None}
        # Its size as Python writes it: close to its JSON's, and three times as fast to learn.
        size = len(repr(entry))
        if size > ENTRY_BYTES:
            # Not one the worker sends (it cuts texts to 1 KiB and data to 4): kept by its small fields.
            entry = {name: entry[name] for name in DETAIL_KEYS[:6] if name in entry and len(repr(entry[name])) < 1024}
            entry["dropped"] = f"this result is {size:,} bytes; the dashboard keeps results of up to {ENTRY_BYTES:,}"
            size = len(repr(entry))
        entries = self._entries.get(key)
        if entries is None:
            entries = self._entries[key] = deque()
            self._sizes[key] = 0
            self._order.append(key)
        entries.append((size, entry))
        self._sizes[key] += size
        self.total += size
        if len(entries) > MAX_ENTRIES:
            # A long loop keeps its newest items' results.
            gone, _ = entries.popleft()
            self._sizes[key] -= gone
            self.total -= gone
            self.dropped += 1
        if final_failure:
            self._failed_order.append(key)
        self._make_room(keep=key)

    def _make_room(self, *, keep: Key) -> None:
        """Drop the oldest results kept whole until they fit: failures last, and never the one just added."""
        for order, failures in ((self._order, False), (self._failed_order, True)):
            held = None
            while self.total > self.limit and order:
                key = order.popleft()
                if key not in self._entries:
                    continue
                if key == keep:
                    held = key
                    continue
                if not failures and self._failed(key):
                    continue  # it waits in the order of failures
                self._drop(key)
            if held is not None:
                order.appendleft(held)

    def _drop(self, key: Key) -> None:
        entries = self._entries.pop(key)
        self.total -= self._sizes.pop(key)
        self.dropped += len(entries)
