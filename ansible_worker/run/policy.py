"""What a job may ask of this worker: allowed playbooks and inventories, verbosity, extra_vars size and names."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ansible_worker.protocol.models import TaskRequest
from ansible_worker.run.errors import JobRefusedError
from ansible_worker.run.special_vars import SETTING, refused_names, show_name


@dataclass(frozen=True, slots=True)
class JobPolicy:
    """Limits an operator sets on what a message can make the worker do.

    Patterns are shell-style globs matched against the path relative to the playbook
    directory after symlinks are resolved (`*` also crosses `/`); None allows everything
    inside the directory, which is the default.
    """

    allowed_playbooks: Sequence[str] | None = None
    allowed_inventories: Sequence[str] | None = None
    allow_inline_inventory: bool = True
    max_verbosity: int = 4
    max_extra_vars_bytes: int = 65536
    max_extra_vars_depth: int = 10
    # Top-level extra_vars names let through although Ansible reads them (special_vars.py).
    allowed_special_vars: Collection[str] = ()

    def check_request(self, job: TaskRequest) -> None:
        """Checks that need no file system; `JobRefusedError` says what is not allowed."""
        _check_special_vars(job.extra_vars, self.allowed_special_vars)
        if job.verbosity > self.max_verbosity:
            raise JobRefusedError(f"verbosity {job.verbosity} is above this worker's limit ({self.max_verbosity})")
        size = len(json.dumps(job.extra_vars))
        if size > self.max_extra_vars_bytes:
            limit = self.max_extra_vars_bytes
            raise JobRefusedError(f"extra_vars are {size} bytes, above this worker's limit ({limit})")
        depth = _depth(job.extra_vars)
        if depth > self.max_extra_vars_depth:
            limit = self.max_extra_vars_depth
            raise JobRefusedError(f"extra_vars nest {depth} levels deep, above this worker's limit ({limit})")
        if "," in job.inventory and not self.allow_inline_inventory:
            raise JobRefusedError("inline inventories (host lists) are not allowed on this worker")

    def check_paths(self, base: Path, playbook: Path, inventory: str) -> None:
        """Checks on the resolved playbook and inventory paths."""
        _allowed(base, playbook, self.allowed_playbooks, "playbook", "worker.allowed_playbooks")
        if "," not in inventory:
            _allowed(base, Path(inventory), self.allowed_inventories, "inventory", "worker.allowed_inventories")


def _check_special_vars(extra_vars: dict[str, Any], allowed: Collection[str]) -> None:
    refused = refused_names(extra_vars, allowed)
    if not refused:
        return
    (name, reason), rest = refused[0], refused[1:]
    also = ""
    if rest:
        shown = ", ".join(show_name(other) for other, _ in rest[:5])
        also = f"; also {shown}" + (f" and {len(rest) - 5} more" if len(rest) > 5 else "")
    them = "them" if rest else "it"
    raise JobRefusedError(f"extra_vars must not set {show_name(name)}: {reason}{also} (allow {them} with {SETTING})")


def _allowed(base: Path, path: Path, patterns: Sequence[str] | None, what: str, setting: str) -> None:
    if patterns is None:
        return
    relative = path.relative_to(base).as_posix()
    if not any(fnmatchcase(relative, pattern) for pattern in patterns):
        raise JobRefusedError(f"{what} {relative!r} is not allowed on this worker ({setting})")


def _depth(value: Any, level: int = 0) -> int:
    if isinstance(value, dict):
        return max((_depth(item, level + 1) for item in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(item, level + 1) for item in value), default=level + 1)
    return level
