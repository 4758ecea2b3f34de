"""What the dashboard knows of the group: workers, jobs, requests, output and pages, and who listens for changes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

from ansible_worker.controller.job_listing import COMMON_QUEUE_CAP
from ansible_worker.dashboard.job_hosts import JobHosts
from ansible_worker.dashboard.limits import (
    EVICT_BATCH,
    MAX_JOBS,
    RECORD_PAGES,
    REQUESTS,
    REQUESTS_BYTES,
    STILL_GOING,
    cut,
    eviction_rank,
    kept_status,
    when,
)
from ansible_worker.dashboard.live_jobs import LiveJobs
from ansible_worker.dashboard.output_lines import live_line
from ansible_worker.dashboard.pages import Page

# A browser that falls this far behind loses changes rather than holding memory for ever.
LISTENER_BUFFER = 10_000
_SUMMARY_KEYS = (
    "task_id",
    "state",
    "playbook",
    "worker_id",
    "created_at",
    "started_at",
    "completed_at",
    "duration_seconds",
    "tasks_ok",
    "tasks_changed",
    "tasks_failed",
    "tasks_skipped",
    "tasks_unreachable",
    "tasks_rescued",
    "tasks_ignored",
    "current_task",
    "error_message",
    "project",
    "revision",
)
# What a queued job's row says of why it waits (`waiting_for`), and how many of its locks (or workers not heard).
_WAITING_KEYS = ("held_by", "ahead", "queue_position", "concurrency", "project_fetch", "warm_parent")
MAX_ROW_LOCKS = 8
# What a request may say of who or what started its job, shown on its page: never the request itself.
_ORIGIN_KEYS = ("requested_by", "template", "schedule")


def summary(status: dict[str, Any]) -> dict[str, Any]:
    """The fields of a status the job list shows, each short."""
    found = {key: cut(status.get(key)) for key in _SUMMARY_KEYS}
    found["waiting_for"] = _waiting(status.get("waiting_for"))
    return found


def _waiting(value: Any) -> dict[str, Any] | None:
    """Why a queued job waits, as its row says it: the known keys, each short, and the first locks."""
    if not isinstance(value, dict):
        return None
    waiting = {key: cut(value[key]) for key in _WAITING_KEYS if key in value}
    for key in ("locks", "locks_sync"):
        names = value.get(key)
        if isinstance(names, list):
            waiting[key] = [cut(name) for name in names[:MAX_ROW_LOCKS] if isinstance(name, str)]
    return waiting


@dataclass
class Listener:
    """One browser's stream of changes; `job` is the task_id whose output it also wants."""

    send: trio.MemorySendChannel[dict[str, Any]]
    job: str | None = None


@dataclass
class Store:
    """The last known state of the group, kept while the broker is away, within the bounds of `limits`."""

    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    # When each kept request arrived, on this dashboard's clock: run again judges its age then.
    heard_at: dict[str, datetime] = field(default_factory=dict)
    # Running jobs' output lines and live pages.
    live: LiveJobs = field(default_factory=LiveJobs)
    # Finished jobs' pages built from their records, the dict's order that of the last use.
    record_pages: dict[str, Page] = field(default_factory=dict)
    # The hosts a job ran on, as far as this dashboard heard, the dict's order that of the last change.
    hosts: JobHosts = field(default_factory=JobHosts)
    # Jobs this dashboard ran again: the new task_id, and the one it ran again.
    again_of: dict[str, str] = field(default_factory=dict)
    connected: bool = False
    # The group's template catalogue (`protocol.models.TemplateCatalogue`, checked by the feed), if any.
    catalogue: dict[str, Any] | None = None
    listeners: list[Listener] = field(default_factory=list)
    # Jobs forgotten to make room (not cleared by the group): the list shows only part of the group's.
    dropped: int = 0
    # False while the broker's retained statuses had not all come when the dashboard began to serve.
    loaded: bool = True
    # Statuses the broker sent on the first connection: as many as it queues for one client, and
    # it may have dropped the rest without a word.
    first_heard: int = 0
    _order: int = 0
    _first_seen: dict[str, int] = field(default_factory=dict)
    _request_sizes: dict[str, int] = field(default_factory=dict)
    _request_bytes: int = 0

    def set_connected(self, connected: bool) -> None:
        """Say whether the broker is reachable; every browser shows or clears its banner."""
        if connected != self.connected:
            self.connected = connected
            self._tell({"type": "link", "connected": connected})

    def set_catalogue(self, catalogue: dict[str, Any] | None) -> None:
        """The group's template catalogue changed (None: its retained copy was cleared)."""
        self.catalogue = catalogue
        self._tell({"type": "catalogue", "catalogue": catalogue})

    def set_worker(self, worker_id: str, presence: dict[str, Any] | None) -> None:
        """A worker's presence changed (None: its retained presence was cleared)."""
        if presence is None:
            self.workers.pop(worker_id, None)
        else:
            self.workers[worker_id] = presence
        self._tell({"type": "worker", "worker_id": worker_id, "worker": presence})

    def set_status(self, task_id: str, status: dict[str, Any] | None, *, size: int) -> None:
        """A job's status arrived, `size` bytes on the wire (None: its retained status was cleared, the job forgotten).

        Past `MAX_JOBS` jobs, the lowest ranked (`limits.eviction_rank`) are forgotten.
        """
        if status is None:
            self._forget(task_id)
            return
        known = self.jobs.get(task_id)
        # A refused copy of a job that a worker holds says nothing about that job.
        if status.get("refused") and known is not None and known.get("state") in STILL_GOING:
            return
        if task_id not in self._first_seen:
            self._order += 1
            self._first_seen[task_id] = self._order
        status = kept_status(task_id, status, size)
        self.jobs[task_id] = status
        if status.get("refused"):
            # Not run, so never run again: its request would only take room.
            self._drop_request(task_id)
        if len(self.jobs) > MAX_JOBS:
            self._make_room()
            if task_id not in self.jobs:
                return
        message = {"type": "job", "task_id": task_id, "job": self.row(task_id)}
        for listener in list(self.listeners):
            # The browser showing this job gets the whole status; the others the list's line.
            full = {**message, "status": status, "can_run_again": task_id in self.requests}
            self._send(listener, full if listener.job == task_id else message)

    def set_request(self, task_id: str, request: dict[str, Any], *, size: int) -> None:
        """The request of a job, as published to the group (`size` bytes): what "run again" sends.

        The first copy heard is kept: a later one with the same task_id (a replay, or a forgery
        the workers ignore because the group holds the task_id) never replaces it. The oldest
        go first past `REQUESTS` requests or `REQUESTS_BYTES` bytes.
        """
        if task_id in self.requests:
            return
        self._heard(task_id)
        self.requests[task_id] = request
        self._request_sizes[task_id] = size
        self._request_bytes += size
        while len(self.requests) > REQUESTS or self._request_bytes > REQUESTS_BYTES:
            self._drop_request(next(iter(self.requests)))

    def _drop_request(self, task_id: str) -> None:
        if self.requests.pop(task_id, None) is not None:
            self._request_bytes -= self._request_sizes.pop(task_id)

    def _make_room(self) -> None:
        """Forget the lowest ranked jobs, down to `MAX_JOBS - EVICT_BATCH`."""
        ranked = sorted(self.jobs, key=lambda task_id: eviction_rank(self.jobs[task_id], self._first_seen[task_id]))
        for task_id in ranked[: len(self.jobs) - (MAX_JOBS - EVICT_BATCH)]:
            self._forget(task_id)
            self.dropped += 1
        self._tell(self.partial())

    def set_loaded(self, loaded: bool) -> None:
        """Say whether every retained status has arrived; the page says so while not."""
        if loaded != self.loaded:
            self.loaded = loaded
            self._tell(self.partial())

    def partial(self) -> dict[str, Any]:
        """How much of the group's jobs the list holds: jobs dropped to stay within `MAX_JOBS`, and whether all came."""
        return {
            "type": "partial",
            "dropped": self.dropped,
            "kept": MAX_JOBS,
            "loaded": self.loaded,
            "first_heard": self.first_heard,
            "maybe_dropped": self.first_heard >= COMMON_QUEUE_CAP,
        }

    def _forget(self, task_id: str) -> None:
        """Drop all that is kept of a job, and take it off every list shown."""
        self.jobs.pop(task_id, None)
        self._first_seen.pop(task_id, None)
        self.live.drop(task_id)
        self.record_pages.pop(task_id, None)
        self.hosts.drop(task_id)
        self.again_of.pop(task_id, None)
        self._drop_request(task_id)
        self._tell({"type": "job", "task_id": task_id, "job": None})

    def _heard(self, task_id: str) -> None:
        """Note when the request of `task_id` arrived; times of requests no longer kept go in batches."""
        self.heard_at[task_id] = datetime.now(UTC)
        if len(self.heard_at) > 2 * REQUESTS:
            kept = self.requests.keys() | {task_id}
            self.heard_at = {known: at for known, at in self.heard_at.items() if known in kept}

    def add_event(self, task_id: str, event: dict[str, Any]) -> None:
        """A live event of a job: its line and its page's change kept, and sent to the browsers showing that job."""
        line = live_line(event)
        if line is not None:
            self.live.add_line(task_id, line)
        delta, host = self.live.add_to_view(task_id, event)
        if host is not None:
            self.note_hosts(task_id, [host])
        if line is None and delta is None:
            return
        message = {"type": "event", "task_id": task_id, "line": line, "view": delta}
        for listener in list(self.listeners):
            if listener.job == task_id:
                self._send(listener, message)

    def note_hosts(self, task_id: str, names: list[str]) -> None:
        """`task_id` ran on these hosts: the job list's host filter finds it by them (see `JobHosts`)."""
        if task_id in self.jobs:
            self.hosts.note(task_id, names)

    def jobs_on_host(self, text: str) -> list[str]:
        """The task_ids of the jobs that ran on a host whose name contains `text` (any case)."""
        return self.hosts.jobs_on(text)

    def note_again(self, task_id: str, original: str) -> None:
        """This dashboard ran `original` again as `task_id`; the oldest such notes go past `REQUESTS`."""
        self.again_of[task_id] = original
        while len(self.again_of) > REQUESTS:
            del self.again_of[next(iter(self.again_of))]

    def keep_record_page(self, task_id: str, page: Page) -> None:
        """Keep the page built from a finished job's record, for the next browser that opens it."""
        if task_id not in self.jobs:
            return
        self.record_pages.pop(task_id, None)
        self.record_pages[task_id] = page
        while len(self.record_pages) > RECORD_PAGES:
            del self.record_pages[next(iter(self.record_pages))]
        self.note_hosts(task_id, page.view.host_names())

    def record_page(self, task_id: str) -> Page | None:
        """The page kept of a finished job's record, or None."""
        page = self.record_pages.pop(task_id, None)
        if page is not None:
            self.record_pages[task_id] = page
        return page

    def live_page(self, task_id: str) -> Page:
        """The page of a job from the live events heard of it (empty when none were)."""
        return self.live.page(task_id)

    def origin(self, task_id: str) -> dict[str, Any]:
        """What this dashboard knows of who or what started a job: never its request, which may hold secrets."""
        origin: dict[str, Any] = {}
        request = self.requests.get(task_id) or {}
        status = self.jobs.get(task_id) or {}
        for key in _ORIGIN_KEYS:
            value = status.get(key) if isinstance(status.get(key), str) else request.get(key)
            if isinstance(value, str) and value:
                origin[key] = cut(value)
        signature = request.get("signature")
        if isinstance(signature, dict) and isinstance(signature.get("key"), str):
            origin["signed_by"] = cut(signature["key"])
        elif task_id in self.requests:
            origin["signed_by"] = None
        if task_id in self.again_of:
            origin["again_of"] = self.again_of[task_id]
        return origin

    def row(self, task_id: str) -> dict[str, Any]:
        """One line of the job list."""
        row = summary(self.jobs[task_id])
        row["order"] = self._first_seen.get(task_id, 0)
        row["can_run_again"] = task_id in self.requests
        return row

    def rows(self) -> list[dict[str, Any]]:
        """Every job's line, newest first (by start or creation time, then first seen)."""
        rows = [self.row(task_id) for task_id in self.jobs]
        rows.sort(key=lambda row: (when(row), row["order"]))
        rows.reverse()
        return rows

    def job_page(self, task_id: str) -> dict[str, Any] | None:
        """Everything the job page shows, or None for a job this dashboard has not heard of.

        Never the request itself: its extra_vars may hold secrets the page has no need for.
        """
        status = self.jobs.get(task_id)
        if status is None:
            return None
        # A job that has ended is shown from its record, which the page asks for (`/api/jobs/ID/page`).
        going = status.get("state") in STILL_GOING
        return {
            "status": status,
            "origin": self.origin(task_id),
            "live": self.live_page(task_id).data() if going else None,
            "can_run_again": task_id in self.requests,
        }

    def snapshot(self, job: str | None, stored: dict[str, Any] | None = None) -> dict[str, Any]:
        """The first message of a stream: everything known now, and the job page if one is asked for.

        `stored`: the job's status from the history store, for a job this dashboard does not hold.
        """
        page = self.job_page(job) if job else None
        if page is None and stored is not None and job is not None:
            status = kept_status(job, stored, len(json.dumps(stored)))
            # Its hosts, tasks and output come from its record, which the page asks for as for any ended job.
            page = {"status": status, "origin": {}, "live": None, "can_run_again": False}
        return {
            "type": "snapshot",
            "connected": self.connected,
            "workers": self.workers,
            "catalogue": self.catalogue,
            "jobs": self.rows(),
            "job": page,
            "partial": self.partial(),
        }

    @contextmanager
    def listen(
        self, job: str | None, stored: dict[str, Any] | None = None
    ) -> Iterator[tuple[dict[str, Any], trio.MemoryReceiveChannel[dict[str, Any]]]]:
        """A snapshot and the channel of every change after it, until the block ends."""
        send, receive = trio.open_memory_channel[dict[str, Any]](LISTENER_BUFFER)
        listener = Listener(send, job)
        # Taken and registered without a checkpoint in between: no change falls in the gap.
        first = self.snapshot(job, stored)
        self.listeners.append(listener)
        try:
            yield first, receive
        finally:
            self.listeners.remove(listener)
            send.close()
            receive.close()

    def _tell(self, message: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            self._send(listener, message)

    @staticmethod
    def _send(listener: Listener, message: dict[str, Any]) -> None:
        with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            listener.send.send_nowait(message)
