"""Fold Ansible callback events into a job's counts, current task, output and first failure. No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """What the events of one run have said so far.

    Counts follow Ansible's own bookkeeping (`ansible.executor.stats`) so that the final
    numbers equal the PLAY RECAP: `ok` here counts results that changed nothing, and the
    recap's `ok` is `ok + changed`. Failures with `ignore_errors` count as ok (or changed)
    and as ignored, as Ansible counts them. A failure later rescued by a `rescue:` block can
    only be told apart at the end, so the stats event, when it comes, replaces the counts.
    """

    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    unreachable: int = 0
    rescued: int = 0
    ignored: int = 0
    current_play: str | None = None
    current_task: str | None = None
    output: dict[str, Any] = field(default_factory=dict)
    output_per_host: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_failure: str | None = None
    stats_seen: bool = False
    last_counter: int = 0
    events_seen: int = 0
    # The last recap's numbers by host.
    recap: dict[str, dict[str, int]] = field(default_factory=dict)
    # The counts of the attempts before this one (`next_attempt`), which a recap adds to.
    _earlier: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """The results counted so far: ok, changed, failed, skipped and unreachable together."""
        return self.ok + self.changed + self.failed + self.skipped + self.unreachable

    def apply(self, event: Mapping[str, Any]) -> None:
        """Take one event (a decoded line of the callback plugin) into account."""
        self.events_seen += 1
        counter = event.get("counter")
        if isinstance(counter, int):
            self.last_counter = max(self.last_counter, counter)
        handler = _HANDLERS.get(str(event.get("event")))
        if handler is not None:
            handler(self, event)

    # -- one method per event kind -------------------------------------------------

    def _play_start(self, event: Mapping[str, Any]) -> None:
        self.current_play = _name(event.get("play"))
        self.current_task = None

    def _task_start(self, event: Mapping[str, Any]) -> None:
        self.current_task = _name(event.get("task"))

    def _ok(self, event: Mapping[str, Any]) -> None:
        self._count_success(event)
        stats = event.get("stats")
        if isinstance(stats, Mapping) and isinstance(stats.get("data"), Mapping):
            data = dict(stats["data"])
            # A later call's key overwrites the earlier value (protocol v1), unlike
            # Ansible's own aggregation of custom stats.
            self.output.update(data)
            if stats.get("per_host"):
                self.output_per_host.setdefault(str(event.get("host")), {}).update(data)

    def _failed(self, event: Mapping[str, Any]) -> None:
        if event.get("ignore_errors"):
            self.ignored += 1
            self._count_success(event)
            return
        self.failed += 1
        self._remember_failure(event, "failed")

    def _skipped(self, event: Mapping[str, Any]) -> None:
        self.skipped += 1

    def _unreachable(self, event: Mapping[str, Any]) -> None:
        if event.get("ignore_unreachable"):
            self.ignored += 1
            self.ok += 1
            return
        self.unreachable += 1
        self._remember_failure(event, "unreachable")

    def _stats(self, event: Mapping[str, Any]) -> None:
        hosts = event.get("hosts")
        if not isinstance(hosts, Mapping):
            return
        totals = dict.fromkeys(("ok", "changed", "failures", "skipped", "unreachable", "rescued", "ignored"), 0)
        for summary in hosts.values():
            if isinstance(summary, Mapping):
                for key in totals:
                    value = summary.get(key, 0)
                    totals[key] += value if isinstance(value, int) else 0
        earlier = self._earlier
        self.changed = earlier.get("changed", 0) + totals["changed"]
        self.ok = earlier.get("ok", 0) + max(totals["ok"] - totals["changed"], 0)
        self.failed = earlier.get("failed", 0) + totals["failures"]
        self.skipped = earlier.get("skipped", 0) + totals["skipped"]
        self.unreachable = earlier.get("unreachable", 0) + totals["unreachable"]
        self.rescued = earlier.get("rescued", 0) + totals["rescued"]
        self.ignored = earlier.get("ignored", 0) + totals["ignored"]
        self.recap = {
            str(host): {key: value for key, value in summary.items() if isinstance(value, int)}
            for host, summary in hosts.items()
            if isinstance(summary, Mapping)
        }
        self.stats_seen = True

    def next_attempt(self) -> None:
        """Count a new run of the same job: its results add to the counts so far; its recap and failure are its own."""
        self._earlier = {
            "ok": self.ok,
            "changed": self.changed,
            "failed": self.failed,
            "skipped": self.skipped,
            "unreachable": self.unreachable,
            "rescued": self.rescued,
            "ignored": self.ignored,
        }
        self.stats_seen = False
        self.first_failure = None
        self.recap = {}

    # -- helpers -------------------------------------------------------------------

    def _count_success(self, event: Mapping[str, Any]) -> None:
        if event.get("changed"):
            self.changed += 1
        else:
            self.ok += 1

    def _remember_failure(self, event: Mapping[str, Any], what: str) -> None:
        if self.first_failure is not None:
            return
        task = _name(event.get("task")) or "?"
        host = event.get("host") or "?"
        message = event.get("msg") or event.get("stderr")
        if event.get("no_log"):
            message = "output hidden by no_log"
        detail = f": {message}" if message else ""
        self.first_failure = f"task '{task}' {what} on host '{host}'{detail}"


def _name(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


_HANDLERS = {
    "playbook_on_play_start": Progress._play_start,
    "playbook_on_task_start": Progress._task_start,
    "playbook_on_handler_task_start": Progress._task_start,
    "runner_on_ok": Progress._ok,
    "runner_on_failed": Progress._failed,
    "runner_on_skipped": Progress._skipped,
    "runner_on_unreachable": Progress._unreachable,
    "playbook_on_stats": Progress._stats,
}

# Events that change what a status says; the others (item results, retries) do not.
STATUS_EVENTS = frozenset(_HANDLERS)
