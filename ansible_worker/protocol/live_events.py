"""Turn callback events into the compact messages of the events topic, with the line Ansible would print."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ansible_worker.protocol.timestamps import from_epoch

RESULT_TEXT_LIMIT = 1024
# The callback plugin sends at most 4 KiB of `data`; masking can lengthen it a little.
DATA_LIMIT = 8192
# Ansible ids and module names are far shorter.
ID_LIMIT = 128
_RESULT_KEYS = ("msg", "rc", "stdout", "stderr", "diff", "ansible_job_id", "finished")
_DEBUG_ACTIONS = frozenset({"debug", "ansible.builtin.debug", "ansible.legacy.debug"})


def live_event(raw: Mapping[str, Any], seq: int) -> dict[str, Any]:
    """The message for one callback event; `seq` numbers the messages of one job from 1.

    Results of `no_log` tasks carry no result at all, only that they were hidden.
    """
    kind = str(raw.get("event", ""))
    event: dict[str, Any] = {"seq": seq, "event": kind, "time": _timestamp(raw.get("time"))}
    for key in ("play", "task", "host", "item", "duration"):
        if raw.get(key) is not None:
            event[key] = raw[key]
    for key in ("play_uuid", "task_uuid", "action"):
        if isinstance(raw.get(key), str):
            event[key] = raw[key][:ID_LIMIT]
    status = _status(kind, raw)
    if status is not None:
        event["status"] = status
    if raw.get("no_log"):
        event["no_log"] = True
    else:
        result = {key: _cap(raw[key]) for key in _RESULT_KEYS if raw.get(key) is not None}
        if result:
            event["result"] = result
        data = _data(raw.get("data"))
        if data is not None:
            event["data"] = data
    line = _line(kind, raw, status)
    if line is not None:
        event["line"] = line
    return event


def _status(kind: str, raw: Mapping[str, Any]) -> str | None:
    if kind in ("runner_on_ok", "runner_item_on_ok"):
        return "changed" if raw.get("changed") else "ok"
    if kind in ("runner_on_failed", "runner_item_on_failed"):
        return "ignored" if raw.get("ignore_errors") else "failed"
    if kind in ("runner_on_skipped", "runner_item_on_skipped"):
        return "skipped"
    if kind == "runner_on_unreachable":
        return "ignored" if raw.get("ignore_unreachable") else "unreachable"
    if kind == "runner_retry":
        return "retry"
    return None


def _line(kind: str, raw: Mapping[str, Any], status: str | None) -> str | None:
    """The line Ansible's default output shows for this event (its first line, for results)."""
    match kind:
        case "playbook_on_start":
            return f"PLAYBOOK: {raw.get('playbook', '')}"
        case "playbook_on_play_start":
            return f"PLAY [{raw.get('play') or ''}]"
        case "playbook_on_task_start":
            return f"TASK [{raw.get('task') or ''}]"
        case "playbook_on_handler_task_start":
            return f"RUNNING HANDLER [{raw.get('task') or ''}]"
        case "playbook_on_no_hosts_matched":
            return "skipping: no hosts matched"
        case "playbook_on_no_hosts_remaining":
            return "NO MORE HOSTS LEFT"
        case "playbook_on_stats":
            return _recap(raw.get("hosts"))
        case "runner_retry":
            return f"FAILED - RETRYING: [{raw.get('host')}]: {raw.get('task')}"
    if status is None:
        return None
    host = raw.get("host")
    item = f" (item={raw['item']})" if raw.get("item") is not None else ""
    hidden = raw.get("no_log")
    message = None if hidden else raw.get("msg")
    details = ' => {"censored": "the output has been hidden due to no_log: true"}' if hidden else ""
    if status in ("ok", "changed"):
        if message is not None and raw.get("action") in _DEBUG_ACTIONS:
            details = " => " + json.dumps({"msg": message})
        return f"{status}: [{host}]{item}{details}"
    if status == "skipped":
        return f"skipping: [{host}]{item}"
    if status == "unreachable":
        return f"fatal: [{host}]: UNREACHABLE! => " + json.dumps({"msg": message or ""})
    if not details:
        details = " => " + json.dumps({"msg": message or raw.get("stderr") or "", "rc": raw.get("rc")})
    prefix = f"failed: [{host}]{item}" if item else f"fatal: [{host}]: FAILED!"
    line = f"{prefix}{details}"
    return line + "\n...ignoring" if status == "ignored" else line


def _recap(hosts: object) -> str:
    lines = ["PLAY RECAP"]
    if isinstance(hosts, Mapping):
        for host, summary in hosts.items():
            if isinstance(summary, Mapping):
                counts = " ".join(
                    f"{key}={summary.get(source, 0)}"
                    for key, source in (
                        ("ok", "ok"),
                        ("changed", "changed"),
                        ("unreachable", "unreachable"),
                        ("failed", "failures"),
                        ("skipped", "skipped"),
                        ("rescued", "rescued"),
                        ("ignored", "ignored"),
                    )
                )
                lines.append(f"{host:<26}: {counts}")
    return "\n".join(lines)


def _data(value: object) -> dict[str, Any] | None:
    """The rest of a result as the plugin sent it, or a note when it is not an object of a bounded size."""
    if not isinstance(value, Mapping):
        return None
    size = len(json.dumps(value, separators=(",", ":"), default=str))
    if size > DATA_LIMIT:
        return {"...": f"the rest of the result is {size:,} characters of JSON: not sent"}
    return dict(value)


def _cap(value: Any) -> Any:
    if isinstance(value, str) and len(value) > RESULT_TEXT_LIMIT:
        return value[:RESULT_TEXT_LIMIT] + "...[truncated]"
    return value


def _timestamp(value: object) -> str | None:
    if not isinstance(value, int | float):
        return None
    return from_epoch(value)
