"""Write a job's record as ansible-runner's artifact directory, for the tools that read runner's output."""

from __future__ import annotations

import json
import uuid
from datetime import UTC
from pathlib import Path
from typing import Any

from ansible_worker.controller.job_filter import parse_time
from ansible_worker.protocol.topics import is_task_id

# Runner's words for how a run ended (`status` file), by the job's terminal state.
RUNNER_STATUS = {"success": "successful", "failed": "failed", "cancelled": "canceled", "timeout": "timeout"}
# Names every event's uuid from the task id and its number, so that writing twice writes the same files.
_NAMESPACE = uuid.UUID("6f0d2b8e-3c1a-4f43-9d0e-5b7f2f6b1a42")
_RESULT_EVENTS_PREFIX = "runner_"
_STATS_KEYS = {
    "ok": "ok",
    "changed": "changed",
    "failures": "failures",
    "dark": "unreachable",
    "skipped": "skipped",
    "rescued": "rescued",
    "ignored": "ignored",
}


def runner_events(task_id: str, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's events as ansible-runner job events of `task_id`, with uuids, parents and line numbers."""
    playbook = str(record.get("status", {}).get("playbook") or "")
    playbook_uuid = str(uuid.uuid5(_NAMESPACE, f"{task_id}/playbook"))
    play_uuid: str | None = None
    task_uuid: str | None = None
    line = 0
    converted = []
    for position, event in enumerate(record.get("events", []), 1):
        if not isinstance(event, dict):
            continue
        # It names a file: only a number will do, whatever the payload said.
        seq = event.get("seq") if type(event.get("seq")) is int and event["seq"] > 0 else position
        kind = str(event.get("event", ""))
        own_uuid = playbook_uuid if kind == "playbook_on_start" else str(uuid.uuid5(_NAMESPACE, f"{task_id}/{seq}"))
        parent: str | None = None
        if kind == "playbook_on_play_start":
            play_uuid, task_uuid, parent = own_uuid, None, playbook_uuid
        elif kind in ("playbook_on_task_start", "playbook_on_handler_task_start"):
            task_uuid, parent = own_uuid, play_uuid
        elif kind.startswith(_RESULT_EVENTS_PREFIX):
            parent = task_uuid
        elif kind != "playbook_on_start":
            parent = playbook_uuid
        stdout = str(event.get("line") or "")
        lines = stdout.count("\n") + 1 if stdout else 0
        data: dict[str, Any] = {"playbook": playbook, "playbook_uuid": playbook_uuid}
        for key in ("play", "task", "host", "duration"):
            if event.get(key) is not None:
                data[key] = event[key]
        if event.get("action") is not None:
            data["task_action"] = event["action"]
        if event.get("host") is not None:
            data["remote_addr"] = event["host"]
        if play_uuid is not None:
            data["play_uuid"] = play_uuid
        if task_uuid is not None and kind != "playbook_on_play_start":
            data["task_uuid"] = task_uuid
        if kind.startswith(_RESULT_EVENTS_PREFIX):
            data["res"] = _result(event)
        if kind == "playbook_on_stats":
            data.update(_stats(event.get("hosts")))
        converted.append(
            {
                "uuid": own_uuid,
                "counter": seq,
                "event": kind,
                "stdout": stdout,
                "start_line": line,
                "end_line": line + lines,
                "runner_ident": task_id,
                "created": _created(event.get("time")),
                "parent_uuid": parent,
                "event_data": data,
            }
        )
        line += lines
    return converted


def write_artifacts(directory: Path, task_id: str, record: dict[str, Any]) -> Path:
    """Write `record`, the record of job `task_id`, as `directory/<task_id>/` in ansible-runner's layout.

    Returns the job's directory: `job_events/<counter>-<uuid>.json`, `stdout` (Ansible's
    output as the record keeps it), `rc` and `status` (runner's words: successful, failed,
    canceled, timeout). Files of an earlier write of the same job are replaced. Everything
    is named by `task_id`, the job that was asked for, never by what the record says of
    itself (`Client.record` refuses a record of another job).

    Errors: `OSError` when the directory cannot be written; `ValueError` when `task_id`
    cannot name a directory.
    """
    if not is_task_id(task_id) or task_id in (".", ".."):
        raise ValueError(f"the task id cannot name a directory: {task_id!r}")
    job_dir = directory / task_id
    events_dir = job_dir / "job_events"
    events_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for event in runner_events(task_id, record):
        path = events_dir / f"{event['counter']}-{event['uuid']}.json"
        path.write_text(json.dumps(event, default=str), encoding="utf-8")
    status = record.get("status", {})
    (job_dir / "stdout").write_text(str(record.get("output", "")), encoding="utf-8")
    return_code = status.get("return_code")
    (job_dir / "rc").write_text("" if return_code is None else str(return_code), encoding="utf-8")
    (job_dir / "status").write_text(RUNNER_STATUS.get(str(status.get("state")), "failed"), encoding="utf-8")
    return job_dir


def _result(event: dict[str, Any]) -> dict[str, Any]:
    if event.get("no_log"):
        return {"censored": "the output has been hidden due to no_log: true", "_ansible_no_log": True}
    given = event.get("result")
    # A record is what a worker published: anything but an object is kept whole, under a key.
    result: dict[str, Any] = dict(given) if isinstance(given, dict) else {} if given is None else {"result": given}
    result["changed"] = event.get("status") == "changed"
    if event.get("status") == "failed":
        result["failed"] = True
    if event.get("status") == "unreachable":
        result["unreachable"] = True
    result["_ansible_no_log"] = False
    return result


def _stats(hosts: object) -> dict[str, dict[str, int]]:
    stats: dict[str, dict[str, int]] = {key: {} for key in (*_STATS_KEYS, "processed")}
    if not isinstance(hosts, dict):
        return stats
    for host, summary in hosts.items():
        if not isinstance(summary, dict):
            continue
        stats["processed"][host] = 1
        for runner_key, our_key in _STATS_KEYS.items():
            value = summary.get(our_key, 0)
            if isinstance(value, int) and value:
                stats[runner_key][host] = value
    return stats


def _created(value: object) -> str | None:
    # Runner writes naive UTC times (`datetime.utcnow().isoformat()`).
    moment = parse_time(value)
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat()
