"""Show jobs and workers to a person at a terminal: live progress, Ansible's lines, summaries, tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from ansible_worker.controller.job_filter import parse_time
from ansible_worker.controller.job_handle import Update

STATE_STYLES = {
    "queued": "cyan",
    "running": "blue",
    "success": "green",
    "failed": "red",
    "cancelled": "yellow",
    "timeout": "magenta",
    "online": "green",
    "draining": "yellow",
    "offline": "red",
}
_LINE_STYLES = {"ok": "green", "changed": "yellow", "failed": "red", "unreachable": "red", "skipped": "cyan"}
_COUNTS = ("ok", "changed", "failed", "skipped", "unreachable")
# Events whose line starts a section of Ansible's output, printed bold after a blank line.
_HEADINGS = frozenset(
    {"playbook_on_play_start", "playbook_on_task_start", "playbook_on_handler_task_start", "playbook_on_stats"}
)


def counts(status: dict[str, Any]) -> Text:
    """The task counts of a status (`ok=… changed=… …`), each coloured when it is not zero."""
    text = Text()
    for index, name in enumerate(_COUNTS):
        value = status.get(f"tasks_{name}", 0)
        if index:
            text.append(" ")
        style = _LINE_STYLES[name] if value else "dim"
        text.append(f"{name}={value}", style=style)
    return text


class _ProgressLine:
    """The one line that a live view keeps redrawing: state, current task, counts, elapsed."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.status: dict[str, Any] = {}
        self.spinner = Spinner("dots")

    def __rich__(self) -> RenderableType:
        state = str(self.status.get("state", "waiting"))
        line = Text()
        line.append(f"{state:<9}", style=STATE_STYLES.get(state, ""))
        line.append(" ")
        line.append_text(counts(self.status))
        started = parse_time(self.status.get("started_at"))
        if started is not None:
            line.append(f"  {(datetime.now(UTC) - started).total_seconds():6.1f}s", style="bold")
        task = self.status.get("current_task")
        if task:
            line.append(f"  TASK [{task}]", style="bold")
        waiting = waiting_text(self.status.get("waiting_for"))
        if waiting:
            line.append(f"  {waiting}", style="yellow")
        table = Table.grid(padding=(0, 1))
        table.add_row(self.spinner, line)
        return table


class JobView:
    """Follows one job on a console: Ansible's own lines scroll, a progress line stays below.

    On a terminal the progress line is redrawn in place; elsewhere (a pipe, a log) each
    change of state is printed once and nothing is redrawn. With `live=False` (for `--json`)
    nothing is ever drawn.
    """

    def __init__(self, console: Console, task_id: str, *, live: bool = True) -> None:
        self.console = console
        self.task_id = task_id
        self.live = live
        self._progress = _ProgressLine(task_id)
        self._live: Live | None = None
        self._last_state: str | None = None
        self._taken: str | None = None

    def __enter__(self) -> JobView:
        if self.live and self.console.is_terminal:
            self._live = Live(self._progress, console=self.console, refresh_per_second=8, transient=True)
            self._live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop redrawing the progress line, and take it off the terminal; stopping twice is harmless."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def show(self, update: Update) -> None:
        """Show one update: print an event's Ansible line, or take a status into the progress line.

        A status prints a line of its own when the job becomes queued or running.
        """
        if update.kind == "event":
            self._show_event(update.data)
            return
        if update.kind == "away":
            worker = update.data.get("worker_id") or "?"
            wait = update.data.get("lost_after")
            self.console.print(
                Text(
                    f"worker {worker} went offline without a clean stop; the group takes its jobs over"
                    + (f" after {wait:g}s of silence" if isinstance(wait, int | float) else ""),
                    style="yellow",
                )
            )
            return
        status = update.data
        taken = taken_over_line(status)
        if taken is not None and taken != self._taken:
            self._taken = taken
            self.console.print(Text(f"{self.task_id} {taken}", style="yellow"))
        self._progress.status = status
        state = status.get("state")
        if state != self._last_state and state in ("queued", "running"):
            worker = status.get("worker_id") or "?"
            preposition = "by" if state == "queued" else "on"
            self.console.print(Text(f"{self.task_id} {state} {preposition} worker {worker}", style="dim"))
        self._last_state = state
        if self._live is not None:
            self._live.refresh()

    def _show_event(self, event: dict[str, Any]) -> None:
        line = event.get("line")
        if not isinstance(line, str):
            return
        kind = event.get("event", "")
        # Ansible's lines are printed as Ansible printed them: never re-wrapped.
        if kind in _HEADINGS:
            self.console.print()
            self.console.print(Text(line, style="bold"), soft_wrap=True)
            return
        self.console.print(Text(line, style=_LINE_STYLES.get(str(event.get("status")), "")), soft_wrap=True)


def taken_over_line(status: dict[str, Any]) -> str | None:
    """Who took the job over from a lost worker, if anyone: `taken over by w2 from lost worker w1`."""
    if status.get("taken_over_from"):
        return f"taken over by {status.get('worker_id') or '?'} from lost worker {status['taken_over_from']}"
    if status.get("taken_over_by"):
        return f"taken over by {status['taken_over_by']}: it had started on a lost worker, and was not run again"
    return None


def source_line(status: dict[str, Any]) -> str | None:
    """What the job ran from, in 80 columns: `from project site at commit 1a2b…`, `shipped sha256 …`."""
    if status.get("content_sha256"):
        return f"shipped sha256 {status['content_sha256']}"
    where = f"project {status['project']}" if status.get("project") else None
    if status.get("revision"):
        return f"from {where + ' at ' if where else ''}commit {status['revision']}"
    return f"from {where}" if where else None


def summary(status: dict[str, Any]) -> RenderableType:
    """A few lines that say how a job ended (or where it is)."""
    state = str(status.get("state"))
    head = Text()
    head.append(state, style=f"bold {STATE_STYLES.get(state, '')}")
    head.append(f"  {status.get('task_id')}")
    if status.get("playbook"):
        head.append(f"  {status['playbook']}", style="dim")
    elif status.get("module"):
        head.append(f"  ad-hoc {status['module']}", style="dim")
    if status.get("worker_id"):
        head.append(f"  on {status['worker_id']}")
    if isinstance(status.get("duration_seconds"), int | float):
        head.append(f"  in {status['duration_seconds']:.1f}s")
    top = Table.grid(padding=(0, 2))
    top.add_row(head)
    grid = Table.grid(padding=(0, 2))
    grid.add_row(counts(status))
    if status.get("error_message"):
        grid.add_row(Text(str(status["error_message"]), style="red"))
    if status.get("output"):
        grid.add_row(Text(f"output: {json.dumps(status['output'])}"))
    if status.get("events_dropped"):
        grid.add_row(Text(f"{status['events_dropped']} live events were dropped (rate limit)", style="dim"))
    taken = taken_over_line(status)
    if taken is not None:
        grid.add_row(Text(taken, style="yellow"))
    source = source_line(status)
    if source is None:
        return Group(top, grid)
    # Outside the table and never cut: a digest or commit id is copied whole.
    return Group(top, Text(source, style="dim", no_wrap=True, overflow="ignore"), grid)


def workers_table(workers: list[dict[str, Any]], now: datetime | None = None) -> Table:
    """A table of the workers' presence messages, with each heartbeat's age as of `now` (default: this moment)."""
    now = now or datetime.now(UTC)
    table = Table(box=None, header_style="bold")
    for column in ("WORKER", "HOST", "STATE", "CAPACITY", "RUNNING", "QUEUED", "DONE", "HEARTBEAT"):
        table.add_column(column, justify="right" if column in ("CAPACITY", "RUNNING", "QUEUED", "DONE") else "left")
    for worker in workers:
        state = str(worker.get("state", "?"))
        if state == "offline" and worker.get("stopped") == "lost":
            # Its will: it vanished without a clean stop.
            state = "offline (lost)"
        beat = parse_time(worker.get("heartbeat_at"))
        age = f"{max(0, int((now - beat).total_seconds()))}s ago" if beat else "?"
        table.add_row(
            str(worker.get("worker_id", "?")),
            str(worker.get("hostname", "?")),
            Text(state, style=STATE_STYLES.get(state.split()[0], "")),
            str(worker.get("capacity", "?")),
            str(worker.get("running", "?")),
            str(worker.get("queued", "?")),
            str(worker.get("jobs_done", "?")),
            age,
        )
    return table


def job_row(status: dict[str, Any]) -> dict[str, Any]:
    """One job as a `jobs --json` line: what the table shows, in plain values."""
    return {
        "task_id": status.get("task_id"),
        "state": status.get("state"),
        "playbook": status.get("playbook"),
        "module": status.get("module"),
        "worker_id": status.get("worker_id"),
        "created_at": status.get("created_at"),
        "started_at": status.get("started_at"),
        "duration_seconds": status.get("duration_seconds"),
        "ok": status.get("tasks_ok", 0),
        "changed": status.get("tasks_changed", 0),
        "failed": status.get("tasks_failed", 0),
        "skipped": status.get("tasks_skipped", 0),
        "unreachable": status.get("tasks_unreachable", 0),
        "record_bytes": (status.get("record") or {}).get("bytes"),
        "waiting_for": status.get("waiting_for"),
    }


def waiting_text(waiting: object) -> str:
    """Why a job waits, in words: `waiting for web3 (held by deploy-41 on w2)`; "" when it does not."""
    if not isinstance(waiting, dict) or not waiting:
        return ""
    if "held_by" in waiting:
        locks = waiting.get("locks") or []
        names = ", ".join(str(name) for name in locks) if isinstance(locks, list) and locks else "its max_concurrent"
        return f"waiting for {names} (held by {waiting['held_by']})"
    if "locks_sync" in waiting:
        workers = waiting["locks_sync"]
        names = ", ".join(str(name) for name in workers) if isinstance(workers, list) and workers else "the group"
        return f"waiting to hear which locks {names} hold"
    if "queue_position" in waiting:
        return f"waiting in the queue: #{waiting['queue_position']} for {waiting.get('concurrency', '?')} slots"
    if "project_fetch" in waiting:
        return f"waiting for a fetch of {waiting['project_fetch']}"
    if "warm_parent" in waiting:
        return "waiting for a warm Ansible parent to start"
    return "waiting for " + ", ".join(f"{key}={value}" for key, value in waiting.items())


def jobs_table(statuses: list[dict[str, Any]]) -> Table:
    """The job list as a table for a terminal."""
    table = Table(box=None, header_style="bold")
    numeric = ("DURATION", "OK", "CHANGED", "FAILED", "SKIPPED", "UNREACH")
    for column in ("TASK ID", "STATE", "PLAYBOOK", "WORKER", "STARTED", *numeric):
        table.add_column(column, justify="right" if column in numeric else "left")
    for status in statuses:
        row = job_row(status)
        state = str(row["state"])
        began = parse_time(row["started_at"]) or parse_time(row["created_at"])
        duration = row["duration_seconds"]
        waiting = waiting_text(row["waiting_for"])
        table.add_row(
            str(row["task_id"]),
            Text(state + (f" ({waiting})" if waiting else ""), style=STATE_STYLES.get(state.split()[0], "")),
            str(row["playbook"] or (f"ad-hoc {row['module']}" if row["module"] else "?")),
            str(row["worker_id"] or "?"),
            began.strftime("%Y-%m-%d %H:%M:%S") if began else "?",
            f"{duration:.1f}s" if isinstance(duration, int | float) else "",
            *(str(row[key]) for key in ("ok", "changed", "failed", "skipped", "unreachable")),
        )
    return table
