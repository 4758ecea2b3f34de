"""Write one JSON object per Ansible callback to the FIFO named by ANSIBLE_WORKER_EVENT_FIFO.

This file runs inside ansible-playbook, not inside the worker: it may import only the
standard library and Ansible. Without the variable it does nothing, so the plugin is
harmless on a plugin path that other runs share.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: ansible_worker_events
    type: notification
    short_description: JSON-lines events for ansible-worker
    description:
      - Writes one JSON object per callback to the FIFO named by ANSIBLE_WORKER_EVENT_FIFO.
"""

FIFO_VARIABLE = "ANSIBLE_WORKER_EVENT_FIFO"
TEXT_LIMIT = 4096
OUTPUT_LIMIT = 2048
_STATS_KEYS = ("ok", "failures", "unreachable", "changed", "skipped", "rescued", "ignored")


def _text(value: Any, limit: int = TEXT_LIMIT) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + "...[truncated]"


def _part(result: Any, name: str) -> Any:
    # ansible-core 2.19 made `host`, `task` and `result` public; older releases only
    # have the underscored names, which 2.19 still keeps.
    try:
        return getattr(result, name)
    except AttributeError:
        return getattr(result, "_" + name)


class CallbackModule(CallbackBase):  # type: ignore[misc]
    """Stream events to the worker; never disturb the playbook if the worker stops listening."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "ansible_worker_events"
    # Loaded from the plugin path without being listed in callbacks_enabled, so the worker
    # need not override an operator's own list.
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self) -> None:
        super().__init__()
        self._path = os.environ.get(FIFO_VARIABLE)
        self._fd: int | None = None
        self._broken = False
        self._counter = 0
        self._play: str | None = None
        self._task: str | None = None
        self._started: dict[tuple[str, str], float] = {}

    # -- writing ---------------------------------------------------------------------

    def _emit(self, event: str, **fields: Any) -> None:
        if self._path is None or self._broken:
            return
        self._counter += 1
        record = {"event": event, "counter": self._counter, "time": time.time(), **fields}
        line = json.dumps(record, default=str, separators=(",", ":")) + "\n"
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_WRONLY | os.O_CLOEXEC)
            data = line.encode("utf-8", "replace")
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError:
            # The worker went away or the FIFO is gone: keep Ansible running unharmed.
            self._broken = True

    # -- playbook structure ----------------------------------------------------------

    def v2_playbook_on_start(self, playbook: Any) -> None:
        self._emit("playbook_on_start", playbook=os.path.basename(str(getattr(playbook, "_file_name", ""))))

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._play = play.get_name().strip()
        self._emit("playbook_on_play_start", play=self._play)

    def v2_playbook_on_task_start(self, task: Any, is_conditional: Any) -> None:
        self._task = task.get_name().strip()
        self._emit("playbook_on_task_start", play=self._play, task=self._task, action=task.action)

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._task = task.get_name().strip()
        self._emit("playbook_on_handler_task_start", play=self._play, task=self._task, action=task.action)

    def v2_playbook_on_no_hosts_matched(self) -> None:
        self._emit("playbook_on_no_hosts_matched", play=self._play)

    def v2_playbook_on_no_hosts_remaining(self) -> None:
        self._emit("playbook_on_no_hosts_remaining", play=self._play)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        hosts = {
            host: {key: stats.summarize(host).get(key, 0) for key in _STATS_KEYS} for host in sorted(stats.processed)
        }
        self._emit("playbook_on_stats", hosts=hosts)

    # -- host results ----------------------------------------------------------------

    def v2_runner_on_start(self, host: Any, task: Any) -> None:
        self._started[(host.get_name(), task._uuid)] = time.time()

    def _runner(self, event: str, result: Any, **extra: Any) -> None:
        data = _part(result, "result")
        task = _part(result, "task")
        host = _part(result, "host").get_name()
        no_log = bool(data.get("_ansible_no_log")) or "censored" in data
        fields: dict[str, Any] = {
            "play": self._play,
            "task": task.get_name().strip(),
            "action": task.action,
            "host": host,
            "changed": bool(data.get("changed", False)),
            "no_log": no_log,
            **extra,
        }
        started = self._started.get((host, task._uuid))
        if started is not None:
            fields["duration"] = round(time.time() - started, 3)
            if not event.startswith("runner_item") and event != "runner_retry":
                del self._started[(host, task._uuid)]
        if not no_log:
            if "item" in data or "_ansible_item_label" in data:
                fields["item"] = _text(data.get("_ansible_item_label", data.get("item")), 256)
            fields["msg"] = _text(data.get("msg"))
            if "rc" in data:
                fields["rc"] = data.get("rc")
            # A task started in the background (`async`, ad-hoc -B): what async_status needs.
            for key in ("ansible_job_id", "finished"):
                if key in data:
                    fields[key] = data.get(key)
            for stream in ("stdout", "stderr"):
                if data.get(stream):
                    fields[stream] = _text(data.get(stream), OUTPUT_LIMIT)
            stats = data.get("ansible_stats")
            if task.action in ("set_stats", "ansible.builtin.set_stats") and isinstance(stats, dict):
                fields["stats"] = {"data": stats.get("data") or {}, "per_host": bool(stats.get("per_host"))}
        self._emit(event, **fields)

    def v2_runner_on_ok(self, result: Any) -> None:
        self._runner("runner_on_ok", result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._runner("runner_on_failed", result, ignore_errors=bool(ignore_errors))

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._runner("runner_on_skipped", result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        ignore = bool(getattr(_part(result, "task"), "ignore_unreachable", False))
        self._runner("runner_on_unreachable", result, ignore_unreachable=ignore)

    def v2_runner_item_on_ok(self, result: Any) -> None:
        self._runner("runner_item_on_ok", result)

    def v2_runner_item_on_failed(self, result: Any) -> None:
        self._runner("runner_item_on_failed", result)

    def v2_runner_item_on_skipped(self, result: Any) -> None:
        self._runner("runner_item_on_skipped", result)

    def v2_runner_retry(self, result: Any) -> None:
        self._runner("runner_retry", result)
