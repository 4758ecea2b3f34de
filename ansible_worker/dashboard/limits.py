"""How much the dashboard keeps: how many jobs, and how many bytes of each job's status, request and output.

Whoever may publish on the group's tasks topic can make up task_ids, and a worker answers each
with a refusal: without these bounds, each one would stay in memory and in the first message
of every stream for as long as the dashboard runs.
"""

from __future__ import annotations

from typing import Any

# The job list keeps this many jobs. Past that the lowest ranked go (see `eviction_rank`), this
# many at once, so that making room costs one sort per batch, not one per status.
MAX_JOBS = 2000
EVICT_BATCH = 200
# A status (as its worker sent it) up to this size is kept whole; a bigger one by its main fields.
STATUS_BYTES = 16 * 1024
# Text in a list line or an output line's task name is cut to this many characters.
ROW_TEXT = 256
# Live output: the newest lines of a job, by count and by size, for the jobs heard from last.
OUTPUT_LINES = 5000
OUTPUT_BYTES = 512 * 1024
OUTPUT_JOBS = 100
LINE_CHARS = 16 * 1024
# A job's page (hosts, tasks, results; see `job_view`). Live, from the events heard: each
# job's results kept whole up to LIVE_DETAIL_BYTES, all jobs' pages together up to
# LIVE_VIEWS_BYTES and OUTPUT_JOBS pages, the longest silent out first. Finished, from the record: the pages of the
# RECORD_PAGES jobs opened last, each with results up to RECORD_DETAIL_BYTES and the newest
# RECORD_LINES lines (RECORD_OUTPUT_CHARS characters) of Ansible's output.
LIVE_DETAIL_BYTES = 256 * 1024
LIVE_VIEWS_BYTES = 64 * 1024 * 1024
RECORD_PAGES = 4
RECORD_DETAIL_BYTES = 8 * 1024 * 1024
RECORD_LINES = 20_000
RECORD_OUTPUT_CHARS = 2 * 1024 * 1024
# Hosts known per job for the list's host filter, and for all jobs together (oldest jobs' out first).
JOB_HOSTS = 1000
ALL_JOB_HOSTS = 200_000
# Requests kept for "run again", oldest out first: by count, and by their size as published.
REQUESTS = MAX_JOBS
REQUESTS_BYTES = 16 * 1024 * 1024
# A status too big to keep whole keeps these fields (text cut to a KiB).
_BIG_STATUS_KEYS = (
    "task_id",
    "state",
    "refused",
    "playbook",
    "worker_id",
    "created_at",
    "started_at",
    "completed_at",
    "duration_seconds",
    "return_code",
    "error_message",
    "current_task",
    "tasks_total",
    "tasks_ok",
    "tasks_changed",
    "tasks_failed",
    "tasks_skipped",
    "tasks_unreachable",
)
# The states of a job that has not ended.
STILL_GOING = frozenset({"queued", "running"})


def cut(value: Any, limit: int = ROW_TEXT) -> Any:
    """A field as a list line shows it: text cut to `limit` characters; other than text, numbers and null: null."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "…"
    if value is None or isinstance(value, bool | int | float):
        return value
    return None


def cut_line(line: str) -> str:
    """An output line of at most `LINE_CHARS` characters (Ansible's own output, in the record, is whole)."""
    if len(line) <= LINE_CHARS:
        return line
    return f"{line[:LINE_CHARS]} … [{len(line) - LINE_CHARS:,} more characters]"


def kept_status(task_id: str, status: dict[str, Any], size: int) -> dict[str, Any]:
    """The status to keep of one that was `size` bytes on the wire: itself, or its main fields and why."""
    if size <= STATUS_BYTES:
        return status
    kept = {key: cut(status[key], 1024) for key in _BIG_STATUS_KEYS if key in status}
    kept["dashboard_note"] = (
        f"this status is {size:,} bytes; the dashboard keeps statuses of up to {STATUS_BYTES // 1024} KiB"
        f" whole, so only its main fields are shown: `ansible-worker status {task_id}` prints all of it"
    )
    return kept


def when(status: dict[str, Any]) -> str:
    """The moment a job is listed by: created, else started (RFC 3339 text sorts in time order)."""
    return str(status.get("created_at") or status.get("started_at") or "")


def eviction_rank(status: dict[str, Any], first_seen: int) -> tuple[bool, bool, str, int]:
    """The lowest ranked job goes first: refusals, then finished jobs, oldest first; queued and running ones last.

    A refusal answers a message that never became a job; it is not retained, so a dashboard
    started later would not list it either.
    """
    return (status.get("state") in STILL_GOING, not status.get("refused"), when(status), first_seen)
