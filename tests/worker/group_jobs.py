"""Jobs whose runs a test can count, shared by the tests of claims and of hand-backs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

QUICK = {"playbook": "quick.yml", "inventory": "one_host.ini"}


def append_job(task_id: str, runs: Path) -> dict[str, Any]:
    """A job that adds a line to `runs/<task_id>` each time it runs."""
    return {
        "task_id": task_id,
        "playbook": "append.yml",
        "inventory": "one_host.ini",
        "extra_vars": {"marker": str(runs / task_id)},
    }


def run_count(task_id: str, runs: Path) -> int:
    path = runs / task_id
    return len(path.read_text().splitlines()) if path.exists() else 0
