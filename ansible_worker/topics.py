"""The topic names of protocol v1 for one group."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    group: str

    @property
    def tasks(self) -> str:
        return f"{self.prefix}/{self.group}/tasks"

    def tasks_subscription(self, *, shared: bool) -> str:
        """The shared subscription hands each job to exactly one member of the group."""
        return f"$share/ansible-worker-{self.group}/{self.tasks}" if shared else self.tasks

    def status(self, task_id: str) -> str:
        return f"{self.tasks}/{task_id}/status"
