"""Hold the newest unpublished status of each job until the one publisher task sends it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ansible_worker.protocol.models import JobStatus, State


@dataclass(slots=True)
class _Entry:
    state: State
    build: Callable[[], JobStatus]


def _snapshot(status: JobStatus) -> Callable[[], JobStatus]:
    return lambda: status


class StatusOutbox:
    """A channel from jobs to the status publisher that coalesces by task_id.

    A plain bounded channel would either block a job's event reader while the broker is
    away (the network must never block execution) or drop statuses when full (a terminal
    one must never be lost). Here a new status replaces a pending one of the same job and
    state, so each change of state reaches the wire while repeated `running` updates
    collapse to the newest: at most one pending status per state and job, which bounds
    memory by the number of live jobs. `post` never blocks.

    Pacing: a `running` status that follows another `running` status of the same job waits
    until `interval` seconds after the previous one was sent, unless a change of state is
    queued behind it; every change of state is due at once. A job's statuses leave in the
    order they were made, so the terminal one is last.

    Progress updates are posted as builders (`post_progress`) and built only when they are
    about to be published: a job that emits thousands of events costs a few status
    builds a second, not one per event.
    """

    def __init__(self, *, interval: float) -> None:
        self.interval = interval
        self._pending: dict[str, list[_Entry]] = {}
        self._last_sent: dict[str, tuple[State, float]] = {}
        # Task ids of the statuses handed to the publisher and not yet `sent` or put back.
        self._flying: list[str] = []
        self._progress = trio.Event()
        self._changed = trio.Event()
        self._idle = trio.Event()
        self._idle.set()

    def post(self, status: JobStatus) -> None:
        """A status as it is now: a change of state, or a terminal status."""
        self._add(status.task_id, _Entry(status.state, _snapshot(status)))

    def post_progress(self, task_id: str, build: Callable[[], JobStatus]) -> None:
        """A `running` update, built by `build` when it is published (which must say running)."""
        self._add(task_id, _Entry(State.RUNNING, build))

    def _add(self, task_id: str, entry: _Entry) -> None:
        queue = self._pending.setdefault(task_id, [])
        if queue and queue[-1].state == entry.state:
            queue[-1] = entry
        else:
            queue.append(entry)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._changed.set()

    async def take(self) -> JobStatus:
        """Wait for the next status that is due, and hand it over for publishing.

        The caller must then call `sent` or `put_back` with it.

        Cancellation: nothing is taken; every status stays pending.
        """
        while True:
            now = trio.current_time()
            next_due = math.inf
            for task_id, queue in self._pending.items():
                entry = queue[0]
                # Pacing never holds back a change of state queued behind an update.
                due = -math.inf if len(queue) > 1 else self._due_time(task_id, entry.state)
                if due <= now:
                    del queue[0]
                    if not queue:
                        del self._pending[task_id]
                    self._flying.append(task_id)
                    return entry.build()
                next_due = min(next_due, due)
            self._changed = trio.Event()
            with trio.move_on_at(next_due):
                await self._changed.wait()

    def sent(self, status: JobStatus) -> None:
        """The broker has `status`, or it is given up: the next one of its job may go."""
        if status.state.terminal:
            self._last_sent.pop(status.task_id, None)
        else:
            self._last_sent[status.task_id] = (status.state, trio.current_time())
        self._finish_one(status.task_id)

    def put_back(self, status: JobStatus) -> None:
        """A publish failed: send it again first, unless a newer one of its state arrived."""
        queue = self._pending.setdefault(status.task_id, [])
        if not queue or queue[0].state != status.state:
            queue.insert(0, _Entry(status.state, _snapshot(status)))
        self._finish_one(status.task_id)

    def drop(self, task_id: str) -> None:
        """Forget every status of `task_id` waiting to be published (one being published is the caller's)."""
        if self._pending.pop(task_id, None) is not None:
            self._last_sent.pop(task_id, None)
            self._progress.set()
            self._progress = trio.Event()
            if not self._pending and not self._flying:
                self._idle.set()

    @property
    def pending_count(self) -> int:
        """Statuses waiting or being published."""
        return sum(len(queue) for queue in self._pending.values()) + len(self._flying)

    async def wait_idle(self) -> None:
        """Wait until every posted status has been published.

        Cancellation: nothing changes.
        """
        await self._idle.wait()

    def holds(self, task_id: str) -> bool:
        """Whether a status of `task_id` is waiting or being published."""
        return task_id in self._pending or task_id in self._flying

    async def wait_sent(self, task_id: str) -> None:
        """Wait until every status posted for `task_id` so far has been published.

        Cancellation: nothing changes.
        """
        while self.holds(task_id):
            await self._progress.wait()

    def _due_time(self, task_id: str, state: State) -> float:
        previous = self._last_sent.get(task_id)
        if previous is None or state != State.RUNNING or previous[0] != State.RUNNING:
            return -math.inf
        return previous[1] + self.interval

    def _finish_one(self, task_id: str) -> None:
        self._flying.remove(task_id)
        self._progress.set()
        self._progress = trio.Event()
        if not self._pending and not self._flying:
            self._idle.set()
        else:
            self._changed.set()
