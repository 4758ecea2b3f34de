"""Write one JSON object per Ansible callback to the FIFO named by ANSIBLE_WORKER_EVENT_FIFO.

This file runs inside ansible-playbook, not inside the worker: it may import only the
standard library and Ansible. Without the variable it does nothing, so the plugin is
harmless on a plugin path that other runs share.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Mapping
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
# The rest of a result (`data`): at most this much JSON, its strings cut shorter until it fits.
DATA_LIMIT = 4096
_DATA_STRING_LIMITS = (1024, 256, 64)
_DATA_ITEMS = 50
_DATA_DEPTH = 8
# Sent as fields of their own, or repeated elsewhere (`stdout_lines`), or the module's
# arguments, which Ansible itself shows only at -vvv: not part of `data`.
_NOT_DATA = frozenset(
    {"msg", "rc", "stdout", "stderr", "diff", "stdout_lines", "stderr_lines", "invocation", "censored"}
)
_STATS_KEYS = ("ok", "failures", "unreachable", "changed", "skipped", "rescued", "ignored")


def _text(value: Any, limit: int = TEXT_LIMIT) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + "...[truncated]"


def _bounded(value: Any, strings: int, depth: int = 0) -> Any:
    """`value` as JSON data: strings cut to `strings` characters, containers to `_DATA_ITEMS` entries."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return _text(value, strings)
    if depth >= _DATA_DEPTH:
        return _text(json.dumps(value, default=str), strings)
    if isinstance(value, Mapping):
        kept: dict[str, Any] = {}
        for key, item in value.items():
            if len(kept) == _DATA_ITEMS:
                kept["..."] = f"{len(value) - _DATA_ITEMS} more keys"
                break
            if not str(key).startswith("_ansible"):
                kept[_text(key, 256) or ""] = _bounded(item, strings, depth + 1)
        return kept
    if isinstance(value, list | tuple | set | frozenset):
        items = [_bounded(item, strings, depth + 1) for item in list(value)[:_DATA_ITEMS]]
        if len(value) > _DATA_ITEMS:
            items.append(f"...[{len(value) - _DATA_ITEMS} more]")
        return items
    return _text(value, strings)


def _data(result: dict[str, Any]) -> dict[str, Any] | None:
    """The rest of a module's result, as JSON data of at most `DATA_LIMIT` characters, or None."""
    rest = {key: value for key, value in result.items() if key not in _NOT_DATA}
    if isinstance(rest.get("results"), list) and "item" not in result:
        # A loop's final result repeats every item's: those came as events of their own.
        rest["results"] = f"{len(rest['results'])} item results, each sent as an event of its own"
    if not rest:
        return None
    size = 0
    for strings in _DATA_STRING_LIMITS:
        data = _bounded(rest, strings)
        size = len(json.dumps(data, default=str))
        if size <= DATA_LIMIT:
            return data  # type: ignore[no-any-return]
    return {"...": f"the rest of the result is {size:,} characters of JSON even with its texts cut: not sent"}


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
        self._play_uuid: str | None = None
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
        self._play_uuid = str(getattr(play, "_uuid", "")) or None
        self._emit("playbook_on_play_start", play=self._play, play_uuid=self._play_uuid)

    def v2_playbook_on_task_start(self, task: Any, is_conditional: Any) -> None:
        self._task_start("playbook_on_task_start", task)

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._task_start("playbook_on_handler_task_start", task)

    def _task_start(self, event: str, task: Any) -> None:
        self._task = task.get_name().strip()
        self._emit(
            event,
            play=self._play,
            play_uuid=self._play_uuid,
            task=self._task,
            task_uuid=str(task._uuid),
            action=task.action,
        )

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
            "task_uuid": str(task._uuid),
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
            if data.get("diff"):
                fields["diff"] = self._diff_text(data["diff"])
            try:
                rest = _data(data)
            except Exception:  # an odd value must not cost the event: its counts matter more
                rest = {"...": "the rest of the result could not be read"}
            if rest is not None:
                fields["data"] = rest
            stats = data.get("ansible_stats")
            if task.action in ("set_stats", "ansible.builtin.set_stats") and isinstance(stats, dict):
                fields["stats"] = {"data": stats.get("data") or {}, "per_host": bool(stats.get("per_host"))}
        self._emit(event, **fields)

    def _diff_text(self, diff: Any) -> str | None:
        """The diff as Ansible's default output prints it, cut to `OUTPUT_LIMIT`; None if it cannot be read."""
        try:
            # A copy: Ansible's own diff printer rewrites the structure it is given.
            return _text(self._get_diff(copy.deepcopy(diff)), OUTPUT_LIMIT)
        except Exception:  # a module's odd diff must not break the run
            return None

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
