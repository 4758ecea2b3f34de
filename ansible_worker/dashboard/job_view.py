"""Fold one job's events into its page: hosts and their counts, plays, tasks with each host's result and time. No I/O.

The events are those of the events topic, or of the job's record (the same, with the
recap's `hosts`): see `protocol/live_events.py`. Anything in them may be missing, of the
wrong type or hostile; what does not fit is left out, within the bounds below.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_worker.dashboard.limits import ROW_TEXT
from ansible_worker.dashboard.result_details import ResultDetails
from ansible_worker.protocol.timestamps import from_epoch, parse_utc

# One letter per host in a task's row of results; `-` where the host has none (yet).
CODES = {"ok": "o", "changed": "c", "failed": "f", "unreachable": "u", "skipped": "s", "ignored": "i"}
NO_RESULT = "-"
# A host with several results for one task (a loop's items) shows the worst until its final one.
_RANK = {"u": 6, "f": 5, "i": 4, "c": 3, "o": 2, "s": 1, NO_RESULT: 0}
COUNT_KEYS = ("ok", "changed", "failed", "unreachable", "skipped", "rescued", "ignored")
_FINAL = frozenset({"runner_on_ok", "runner_on_failed", "runner_on_skipped", "runner_on_unreachable"})
_ITEM = frozenset({"runner_item_on_ok", "runner_item_on_failed", "runner_item_on_skipped"})
_TASK_START = frozenset({"playbook_on_task_start", "playbook_on_handler_task_start"})
# What a view holds at most; past these, it says it was cut.
MAX_HOSTS = 2000
MAX_TASKS = 2000
MAX_CELLS = 40_000
MAX_FAILURES = 20
FAILURE_TEXT = 1024
_FAILED_CODES = frozenset({"f", "u"})
# Rough costs, in bytes, of what a view holds, so that a store can bound many views together.
_TASK_COST = 400
_HOST_COST = 300
_CELL_COST = 60


@dataclass
class Host:
    """One host: its place in the rows of results, and its counts."""

    index: int
    name: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))

    def row(self) -> dict[str, Any]:
        """The host as the page's hosts table shows it."""
        return {"i": self.index, "name": self.name, **self.counts}


@dataclass
class Task:
    """One task as it ran: each host's result (a letter of `CODES`) and time, and its span."""

    index: int
    name: str
    action: str | None
    play: int | None
    handler: bool
    anchor: int | None
    start: float | None
    end: float | None = None
    cells: dict[int, str] = field(default_factory=dict)
    times: dict[int, float] = field(default_factory=dict)
    finals: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Change:
    """What one event changed: a play, a task, one host's result in it, a host's counts, a failure."""

    play: int | None = None
    task: int | None = None
    host: int | None = None
    failure: dict[str, Any] | None = None
    counts: bool = False


class JobView:
    """The page of one job, folded from its events in order; `detail_bytes` bounds the results kept whole."""

    def __init__(self, *, detail_bytes: int) -> None:
        self.t0: float | None = None
        self.plays: list[str] = []
        self.hosts: list[Host] = []
        self.tasks: list[Task] = []
        self.failures: list[dict[str, Any]] = []
        self.failures_total = 0
        self.events = 0
        self.first_seq: int | None = None
        self.last_seq = 0
        self.missed = 0
        self.cut = False
        self.stats = False
        self._cells = 0
        self._host_index: dict[str, int] = {}
        self._play_index: dict[str, int] = {}
        self._task_index: dict[str, int] = {}
        # Each host's results of each task, whole, oldest dropped first past `detail_bytes`.
        self.details = ResultDetails(limit=detail_bytes, failed=self._failed_now)

    @property
    def cost(self) -> int:
        """About how many bytes the view holds."""
        return (
            len(self.tasks) * _TASK_COST
            + len(self.hosts) * _HOST_COST
            + self._cells * _CELL_COST
            + self.details.total
            + len(self.failures) * FAILURE_TEXT
        )

    # -- folding -----------------------------------------------------------------------

    def add(self, event: Mapping[str, Any]) -> Change:
        """Take the next event into account; what it changed."""
        self.events += 1
        self._note_seq(event.get("seq"))
        moment = _moment(event.get("time"))
        if moment is not None and self.t0 is None:
            self.t0 = moment
        kind = event.get("event")
        if kind == "playbook_on_play_start":
            return Change(play=self._play(event))
        if kind in _TASK_START:
            return Change(task=self._start_task(event, moment))
        if kind in _FINAL or kind in _ITEM or kind == "runner_retry":
            return self._result(str(kind), event, moment)
        if kind == "playbook_on_stats":
            return Change(counts=self._recap(event.get("hosts")))
        return Change()

    def _note_seq(self, seq: object) -> None:
        if not isinstance(seq, int) or isinstance(seq, bool) or seq <= self.last_seq:
            return
        if self.first_seq is None:
            self.first_seq = seq
            self.missed += seq - 1
        else:
            self.missed += seq - self.last_seq - 1
        self.last_seq = seq

    def _play(self, event: Mapping[str, Any]) -> int | None:
        if len(self.plays) >= MAX_TASKS:
            self.cut = True
            return None
        self.plays.append(_name(event.get("play")))
        index = len(self.plays) - 1
        uuid = event.get("play_uuid")
        if isinstance(uuid, str):
            self._play_index[uuid] = index
        return index

    def _play_of(self, event: Mapping[str, Any]) -> int | None:
        uuid = event.get("play_uuid")
        if isinstance(uuid, str) and uuid in self._play_index:
            return self._play_index[uuid]
        return len(self.plays) - 1 if self.plays else None

    def _start_task(self, event: Mapping[str, Any], moment: float | None) -> int | None:
        if len(self.tasks) >= MAX_TASKS:
            self.cut = True
            return None
        task = Task(
            index=len(self.tasks),
            name=_name(event.get("task")),
            action=_text(event.get("action")),
            play=self._play_of(event),
            handler=event.get("event") == "playbook_on_handler_task_start",
            anchor=_seq(event.get("seq")),
            start=moment,
        )
        self.tasks.append(task)
        uuid = event.get("task_uuid")
        if isinstance(uuid, str):
            # A handler that runs again starts a new row: results go to the newest.
            self._task_index[uuid] = task.index
        return task.index

    def _task_of(self, event: Mapping[str, Any], moment: float | None) -> Task | None:
        uuid = event.get("task_uuid")
        if isinstance(uuid, str) and uuid in self._task_index:
            return self.tasks[self._task_index[uuid]]
        name = _name(event.get("task"))
        if self.tasks and not isinstance(uuid, str) and self.tasks[-1].name == name:
            return self.tasks[-1]
        # Its start was not heard (dropped, or before this view began): a row of its own from here.
        duration = _number(event.get("duration"))
        start = moment - duration if moment is not None and duration is not None else moment
        index = self._start_task({**event, "event": "playbook_on_task_start", "seq": None}, start)
        return self.tasks[index] if index is not None else None

    def _host(self, name: object) -> Host | None:
        text = _name(name)
        index = self._host_index.get(text)
        if index is not None:
            return self.hosts[index]
        if len(self.hosts) >= MAX_HOSTS:
            self.cut = True
            return None
        host = Host(len(self.hosts), text)
        self.hosts.append(host)
        self._host_index[text] = host.index
        return host

    def _result(self, kind: str, event: Mapping[str, Any], moment: float | None) -> Change:
        task = self._task_of(event, moment)
        host = self._host(event.get("host"))
        if task is None or host is None:
            return Change()
        if moment is not None:
            task.end = moment if task.end is None else max(task.end, moment)
        status = event.get("status")
        code = CODES.get(status) if isinstance(status, str) else None
        failure = None
        counted = False
        if code is not None and kind != "runner_retry":
            if host.index not in task.cells:
                if self._cells >= MAX_CELLS:
                    self.cut = True
                    return Change(task=task.index)
                self._cells += 1
            if kind in _FINAL:
                task.cells[host.index] = code
                task.finals.add(host.index)
                duration = _number(event.get("duration"))
                if duration is not None:
                    task.times[host.index] = duration
                if not self.stats:
                    self._count(host, str(status))
                    counted = True
                if status in ("failed", "unreachable"):
                    failure = self._failure(task, host, str(status), event)
            elif host.index not in task.finals:
                task.cells[host.index] = max(task.cells.get(host.index, NO_RESULT), code, key=_RANK.__getitem__)
        final_failure = kind in _FINAL and task.cells.get(host.index) in _FAILED_CODES
        self.details.keep((task.index, host.index), event, final_failure=final_failure)
        return Change(task=task.index, host=host.index, failure=failure, counts=counted)

    def _count(self, host: Host, status: str) -> None:
        # As Ansible counts: an ignored failure is ok (and ignored); see `run/progress.py`.
        if status == "ignored":
            host.counts["ignored"] += 1
            host.counts["ok"] += 1
        elif status in host.counts:
            host.counts[status] += 1

    def _recap(self, hosts: object) -> bool:
        """The recap's counts replace those of the results: only it knows which failures were rescued."""
        if not isinstance(hosts, Mapping):
            return False
        self.stats = True
        for name, summary in hosts.items():
            host = self._host(name)
            if host is None or not isinstance(summary, Mapping):
                continue
            value = {key: _count_of(summary.get(key)) for key in (*COUNT_KEYS, "failures")}
            host.counts = {
                "ok": max(value["ok"] - value["changed"], 0),
                "changed": value["changed"],
                "failed": value["failures"],
                "unreachable": value["unreachable"],
                "skipped": value["skipped"],
                "rescued": value["rescued"],
                "ignored": value["ignored"],
            }
        return True

    def _failure(self, task: Task, host: Host, status: str, event: Mapping[str, Any]) -> dict[str, Any] | None:
        self.failures_total += 1
        if len(self.failures) >= MAX_FAILURES:
            return None
        failure = {"task": task.index, "host": host.index, "status": status, "msg": _message(event)}
        self.failures.append(failure)
        return failure

    # -- what the page gets ------------------------------------------------------------

    def page(self) -> dict[str, Any]:
        """The whole view as compact JSON data: every row, and the results' letters and times."""
        return {
            "t0": self.page_t0(),
            "plays": list(self.plays),
            "hosts": [host.row() for host in self.hosts],
            "tasks": [self.task_row(task.index) for task in self.tasks],
            "failures": list(self.failures),
            "failures_total": self.failures_total,
            "events": self.events,
            "missed": self.missed,
            "cut": self.cut,
            "stats": self.stats,
            "details_dropped": self.details.dropped,
        }

    def task_row(self, index: int, *, cells: bool = True) -> dict[str, Any]:
        """One task's row: name, play, span (seconds from the first event), and its results unless `cells` is false."""
        task = self.tasks[index]
        row: dict[str, Any] = {
            "i": task.index,
            "name": task.name,
            "action": task.action,
            "play": task.play,
            "handler": task.handler,
            "anchor": task.anchor,
            "start": self._relative(task.start),
            "end": self._relative(task.end),
        }
        if cells:
            width = len(self.hosts)
            row["cells"] = "".join(task.cells.get(host, NO_RESULT) for host in range(width))
            row["times"] = [task.times.get(host) for host in range(width)]
        return row

    def delta(self, change: Change) -> dict[str, Any] | None:
        """What a page already showing this view needs to show `change`, or None when nothing changed."""
        delta: dict[str, Any] = {}
        if change.play is not None:
            delta["play"] = [change.play, self.plays[change.play]]
        if change.task is not None:
            delta["task"] = self.task_row(change.task, cells=False)
            if change.host is not None:
                task = self.tasks[change.task]
                delta["cell"] = [
                    change.task,
                    change.host,
                    task.cells.get(change.host, NO_RESULT),
                    task.times.get(change.host),
                ]
        if change.host is not None:
            delta["host"] = self.hosts[change.host].row()
        if change.counts and change.host is None:
            delta["hosts"] = [host.row() for host in self.hosts]
        if change.failure is not None:
            delta["failure"] = change.failure
        if not delta:
            return None
        delta["t0"] = self.page_t0()
        delta["failures_total"] = self.failures_total
        return delta

    def page_t0(self) -> str | None:
        """When the first event happened, as the page's times count from it."""
        return from_epoch(self.t0) if self.t0 is not None else None

    def result(self, task: int, host: int) -> dict[str, Any] | None:
        """One host's result of one task, whole as the events carried it (items and retries too), or None."""
        if not 0 <= task < len(self.tasks) or not 0 <= host < len(self.hosts):
            return None
        row = self.tasks[task]
        entries = self.details.get((task, host))
        if entries is None and host not in row.cells:
            return None
        return {
            "task": row.name,
            "host": self.hosts[host].name,
            "status": _STATUS_OF.get(row.cells.get(host, NO_RESULT)),
            "duration": row.times.get(host),
            "results": entries,
        }

    def _failed_now(self, key: tuple[int, int]) -> bool:
        task, host = key
        return self.tasks[task].cells.get(host) in _FAILED_CODES

    def host_names(self) -> list[str]:
        """Every host that has a result or a line in the recap."""
        return [host.name for host in self.hosts]

    def _relative(self, moment: float | None) -> float | None:
        if moment is None or self.t0 is None:
            return None
        return round(moment - self.t0, 3)


_STATUS_OF = {code: status for status, code in CODES.items()}


def _moment(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_utc(value).timestamp()
    except ValueError:
        return None


def _name(value: object) -> str:
    text = value if isinstance(value, str) else ""
    return text[:ROW_TEXT]


def _text(value: object) -> str | None:
    return value[:ROW_TEXT] if isinstance(value, str) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
        return None
    return float(value)


def _seq(value: object) -> int | None:
    """An event's number, by which its task finds its line in the output; anything else links nowhere."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _count_of(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _message(event: Mapping[str, Any]) -> str:
    """Why a result failed, in a line: its message, else its error output, else its output."""
    if event.get("no_log"):
        return "output hidden by no_log"
    result = event.get("result")
    if isinstance(result, Mapping):
        for key in ("msg", "stderr", "stdout"):
            value = result.get(key)
            if value not in (None, ""):
                text = value if isinstance(value, str) else json.dumps(value, default=str)
                return text[:FAILURE_TEXT]
        if result.get("rc") is not None:
            return f"exit code {result['rc']}"
    return ""
