"""Hold the newest unpublished status of each job until the one publisher task sends it."""

from __future__ import annotations

import math

import trio

from ansible_worker.models import JobStatus, State


class StatusOutbox:
    """A channel from jobs to the status publisher that coalesces by task_id.

    A plain bounded channel would either block a job's event reader while the broker is
    away (the network must never block execution) or drop statuses when full (a terminal
    one must never be lost). Keeping only the newest status per job bounds memory by the
    number of live jobs and does both. `post` never blocks.

    Pacing: a `running` status that follows another `running` status of the same job waits
    until `interval` seconds after the previous one was sent; every change of state is due
    at once. As the newest status wins, a terminal status always goes out last.
    """

    def __init__(self, *, interval: float) -> None:
        self.interval = interval
        self._pending: dict[str, JobStatus] = {}
        self._last_sent: dict[str, tuple[State, float]] = {}
        self._in_flight = 0
        self._changed = trio.Event()
        self._idle = trio.Event()
        self._idle.set()

    def post(self, status: JobStatus) -> None:
        self._pending[status.task_id] = status
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._changed.set()

    async def take(self) -> JobStatus:
        """Wait for the next status that is due, and hand it over for publishing.

        The caller must then call `sent` or `put_back` with it.
        """
        while True:
            now = trio.current_time()
            next_due = math.inf
            for task_id, status in self._pending.items():
                due = self._due_time(status)
                if due <= now:
                    del self._pending[task_id]
                    self._in_flight += 1
                    return status
                next_due = min(next_due, due)
            self._changed = trio.Event()
            with trio.move_on_at(next_due):
                await self._changed.wait()

    def sent(self, status: JobStatus) -> None:
        if status.state.terminal:
            self._last_sent.pop(status.task_id, None)
        else:
            self._last_sent[status.task_id] = (status.state, trio.current_time())
        self._finish_one()

    def put_back(self, status: JobStatus) -> None:
        """A publish failed: keep the status unless a newer one arrived meanwhile."""
        self._pending.setdefault(status.task_id, status)
        self._finish_one()

    @property
    def pending_count(self) -> int:
        return len(self._pending) + self._in_flight

    async def wait_idle(self) -> None:
        """Wait until every posted status has been published."""
        await self._idle.wait()

    def _due_time(self, status: JobStatus) -> float:
        previous = self._last_sent.get(status.task_id)
        if previous is None or status.state != State.RUNNING or previous[0] != State.RUNNING:
            return -math.inf
        return previous[1] + self.interval

    def _finish_one(self) -> None:
        self._in_flight -= 1
        if not self._pending and not self._in_flight:
            self._idle.set()
        else:
            self._changed.set()
