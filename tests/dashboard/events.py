"""Events of made-up jobs, as a worker sends them, for the tests of the dashboard's pages."""

from __future__ import annotations

from typing import Any

from ansible_worker.protocol.timestamps import from_epoch

T0 = 1_800_000_000.0


class Events:
    """Events as the worker sends them (see protocol/live_events.py), numbered from 1, a clock in seconds."""

    def __init__(self) -> None:
        self.seq = 0
        self.items: list[dict[str, Any]] = []

    def add(self, event: str, at: float, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        item = {"seq": self.seq, "event": event, "time": from_epoch(T0 + at), **fields}
        self.items.append(item)
        return item

    def task(self, name: str, at: float, uuid: str, **fields: Any) -> None:
        self.add("playbook_on_task_start", at, task=name, task_uuid=uuid, action="ansible.builtin.command", **fields)

    def result(self, status: str, host: str, at: float, took: float, uuid: str, **fields: Any) -> None:
        kind = {"ok": "runner_on_ok", "changed": "runner_on_ok", "failed": "runner_on_failed"}.get(status)
        kind = kind or {"skipped": "runner_on_skipped", "unreachable": "runner_on_unreachable"}.get(status, status)
        self.add(kind, at, host=host, status=status, duration=took, task_uuid=uuid, **fields)


def two_hosts_one_failing() -> Events:
    events = Events()
    events.add("playbook_on_start", 0)
    events.add("playbook_on_play_start", 0.01, play="Deploy", play_uuid="p1")
    events.task("Check disk", 0.02, "t1")
    events.result("ok", "web1", 0.5, 0.45, "t1", result={"rc": 0, "stdout": "31%"})
    events.result("ok", "web2", 0.6, 0.55, "t1", result={"rc": 0, "stdout": "97%"})
    events.task("Write config", 0.7, "t2")
    events.result("changed", "web1", 2.7, 2.0, "t2", result={"diff": "+a\n"})
    events.result("changed", "web2", 2.9, 2.1, "t2")
    events.task("Stop if full", 3.0, "t3")
    events.result("skipped", "web1", 3.1, 0.05, "t3")
    events.result("failed", "web2", 3.2, 0.1, "t3", result={"msg": "disk /var is 97% full"}, data={"failed": True})
    events.task("Restart", 3.3, "t4")
    events.result("ok", "web1", 3.5, 0.2, "t4")
    return events
