"""The topic names of protocol v1 for one group."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeGuard

# What a task_id may be: it is a topic level, so never a wildcard (`+`, `#`), a `/` or empty.
TASK_ID = r"[A-Za-z0-9._-]{1,128}"
_TASK_ID_FULL = re.compile(TASK_ID)


def is_task_id(value: object) -> TypeGuard[str]:
    """Whether `value` may name a job, and so be put into the job's topics and filters."""
    return isinstance(value, str) and _TASK_ID_FULL.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic names of one group: `<prefix>/<group>/…`."""

    prefix: str
    group: str

    @property
    def tasks(self) -> str:
        """The topic jobs are published on."""
        return f"{self.prefix}/{self.group}/tasks"

    def tasks_subscription(self, *, shared: bool) -> str:
        """The shared subscription hands each job to exactly one member of the group."""
        return f"$share/ansible-worker-{self.group}/{self.tasks}" if shared else self.tasks

    def status(self, task_id: str) -> str:
        """The retained status topic of job `task_id`."""
        return f"{self.tasks}/{task_id}/status"

    def cancel(self, task_id: str) -> str:
        """The topic of cancel requests for job `task_id`."""
        return f"{self.tasks}/{task_id}/cancel"

    @property
    def cancel_subscription(self) -> str:
        """Every worker of the group hears every cancel request (not shared)."""
        return f"{self.tasks}/+/cancel"

    def claim(self, task_id: str) -> str:
        """The topic of claims on job `task_id`."""
        return f"{self.tasks}/{task_id}/claim"

    @property
    def locks(self) -> str:
        """The group's one topic of lock requests, renewals and releases, which the broker keeps in one order."""
        return f"{self.prefix}/{self.group}/locks"

    @property
    def claims_subscription(self) -> str:
        """Every worker of the group hears every claim on a signed job (not shared)."""
        return f"{self.tasks}/+/claim"

    def request(self, task_id: str) -> str:
        """The retained copy of an unsettled job's request, kept by the worker that holds it."""
        return f"{self.tasks}/{task_id}/request"

    @property
    def requests_subscription(self) -> str:
        """Every worker of the group hears the request copies of the group's unsettled jobs (not shared)."""
        return f"{self.tasks}/+/request"

    def task_id_of_request(self, topic: str) -> str | None:
        """The task_id in a request copy topic of this group, or None if `topic` is not one."""
        return self._task_id_in(topic, "request")

    def events(self, task_id: str) -> str:
        """The topic of job `task_id`'s live events."""
        return f"{self.tasks}/{task_id}/events"

    def content(self, sha256: str) -> str:
        """Where shipped content is retained, addressed by the SHA-256 of its archive (its parts are below)."""
        return f"{self.prefix}/{self.group}/content/{sha256}"

    @property
    def templates(self) -> str:
        """The retained catalogue of the group's templates."""
        return f"{self.prefix}/{self.group}/templates"

    @property
    def clients_prefix(self) -> str:
        """The start of every client's private topics."""
        return f"{self.prefix}/{self.group}/clients/"

    def content_part(self, sha256: str, index: int) -> str:
        """The retained part `index` (0, 1, 2, ...) of a shipped archive."""
        return f"{self.content(sha256)}/{index}"

    def content_parts(self, sha256: str) -> str:
        """Every part of one shipped archive."""
        return f"{self.content(sha256)}/+"

    def client_sync(self, client_id: str, marker: str) -> str:
        """A client's private topic, to learn when the broker has sent every retained message."""
        return f"{self.prefix}/{self.group}/clients/{client_id}/sync/{marker}"

    def record(self, task_id: str) -> str:
        """The retained topic of job `task_id`'s record, published once it has ended."""
        return f"{self.tasks}/{task_id}/record"

    @property
    def record_subscription(self) -> str:
        """The filter of every job's record topic in the group."""
        return f"{self.tasks}/+/record"

    def task_id_of_record(self, topic: str) -> str | None:
        """The task_id in a record topic of this group, or None if `topic` is not one."""
        return self._task_id_in(topic, "record")

    @property
    def status_subscription(self) -> str:
        """The filter of every job's status topic in the group."""
        return f"{self.tasks}/+/status"

    def task_id_of_status(self, topic: str) -> str | None:
        """The task_id in a status topic of this group, or None if `topic` is not one."""
        return self._task_id_in(topic, "status")

    def worker(self, worker_id: str) -> str:
        """The retained presence topic of worker `worker_id`."""
        return f"{self.prefix}/{self.group}/workers/{worker_id}"

    @property
    def workers_subscription(self) -> str:
        """The filter of every worker's presence topic in the group."""
        return f"{self.prefix}/{self.group}/workers/+"

    def task_id_of_cancel(self, topic: str) -> str | None:
        """The task_id in a cancel topic of this group, or None if `topic` is not one."""
        return self._task_id_in(topic, "cancel")

    def task_id_of_claim(self, topic: str) -> str | None:
        """The task_id in a claim topic of this group, or None if `topic` is not one."""
        return self._task_id_in(topic, "claim")

    def _task_id_in(self, topic: str, leaf: str) -> str | None:
        match = re.fullmatch(re.escape(self.tasks) + rf"/({TASK_ID})/{leaf}", topic)
        return match.group(1) if match else None
