"""Ansible's output as the page shows it: lines of plain text, each with its kind and host, and where tasks start."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ansible_worker.dashboard.ansi import ansi_parts
from ansible_worker.dashboard.limits import LINE_CHARS, cut, cut_line

# The result lines of Ansible's default output: `ok: [web1]`, `fatal: [web1]: FAILED! => …`.
_RESULT = re.compile(r"^(ok|changed|fatal|failed|skipping): \[([^\]]{1,256})\]")
_HEADER = re.compile(r"^(PLAY|TASK|RUNNING HANDLER) \[(.*)\]")
_RECAP = re.compile(r"^(\S{1,256})\s+: ok=\d+\s+changed=\d+\s+unreachable=(\d+)\s+failed=(\d+)")
_KINDS = {"ok": "ok", "changed": "changed", "fatal": "failed", "failed": "failed", "skipping": "skipped"}
# What an event's own status makes of its line.
_STATUS_KINDS = frozenset({"ok", "changed", "failed", "unreachable", "skipped", "ignored", "retry"})


def live_line(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """The output line of one live event (the line Ansible would print), or None for an event without one."""
    line = event.get("line")
    if not isinstance(line, str):
        return None
    text, parts = ansi_parts(cut_line(line))
    status = event.get("status")
    kind = status if isinstance(status, str) and status in _STATUS_KINDS else _kind_of(text)
    host = event.get("host")
    entry: dict[str, Any] = {
        "id": cut(event.get("seq")),
        "text": text,
        "kind": kind,
        "host": cut(host) if isinstance(host, str) else None,
    }
    if parts is not None:
        entry["parts"] = parts
    return entry


def record_lines(output: str, *, max_lines: int, max_chars: int) -> tuple[list[dict[str, Any]], bool]:
    """Ansible's whole output (from a record) as lines numbered from 1, and whether older lines were left out.

    A line names its host when it is a host's result, or follows one (the indented JSON of a
    result); its kind is what Ansible's colours would say (ok, changed, failed…).
    """
    texts = output.splitlines()
    first = max(0, len(texts) - max_lines)
    total = 0
    start = len(texts)
    while start > first and total + min(len(texts[start - 1]), LINE_CHARS) <= max_chars:
        start -= 1
        total += min(len(texts[start]), LINE_CHARS)
    lines = []
    host: str | None = None
    kind: str | None = None
    for number in range(start, len(texts)):
        text, parts = ansi_parts(cut_line(texts[number]))
        if not text.strip():
            host = kind = None
        elif not text[0].isspace() and text[0] not in "}]":
            host, kind = _host_of(text), _kind_of(text)
        entry: dict[str, Any] = {"id": number + 1, "text": text, "kind": kind, "host": host}
        if parts is not None:
            entry["parts"] = parts
        lines.append(entry)
    return lines, start > 0


def task_anchors(lines: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[int | None]:
    """For each task (in the order they started), the id of its header line in `lines`, or None.

    Matched from the end, since a long output keeps its newest part: the last header belongs
    to the last task, and so on back, a header whose name differs skipped.
    """
    headers = [
        (line["id"], match.group(2))
        for line in lines
        if line.get("kind") == "task" and (match := _HEADER.match(str(line.get("text", "")))) is not None
    ]
    anchors: list[int | None] = [None] * len(names)
    position = len(headers) - 1
    for index in range(len(names) - 1, -1, -1):
        while position >= 0 and not _same_task(headers[position][1], names[index]):
            position -= 1
        if position < 0:
            break
        anchors[index] = headers[position][0]
        position -= 1
    return anchors


def _same_task(header: str, name: str) -> bool:
    # A role's task is printed as `role : name`; an empty name as the action's.
    return header == name or header.endswith(" : " + name) or name.endswith(" : " + header)


def _host_of(text: str) -> str | None:
    match = _RESULT.match(text)
    if match is not None:
        return match.group(2)
    recap = _RECAP.match(text)
    return recap.group(1) if recap is not None else None


def _kind_of(text: str) -> str | None:
    """What Ansible's colours say of a line: a result's status, a header, an error or a warning."""
    match = _RESULT.match(text)
    if match is not None:
        if match.group(1) == "fatal" and "UNREACHABLE!" in text[match.end() : match.end() + 16]:
            return "unreachable"
        return _KINDS[match.group(1)]
    if text.startswith("...ignoring"):
        return "ignored"
    header = _HEADER.match(text)
    if header is not None:
        return "play" if header.group(1) == "PLAY" else "task"
    if text.startswith("PLAY RECAP"):
        return "recap"
    recap = _RECAP.match(text)
    if recap is not None:
        return "unreachable" if int(recap.group(2)) else "failed" if int(recap.group(3)) else "ok"
    if text.startswith(("[ERROR]", "ERROR!", "FAILED - RETRYING")):
        return "error"
    if text.startswith(("[WARNING]", "[DEPRECATION WARNING]")):
        return "warning"
    return None
