"""What starting a command of a run takes (`Launch`), what it leaves (`ExitRecord`), and who starts it."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Launch:
    """One command of a run, as a cold and a warm start both take it.

    `output_fd` takes its stdout and stderr (discarded until `run_with_output` gives it a
    pipe); `kill_grace` is the time between SIGTERM and SIGKILL when the run is ended;
    `marker` is a variable unique to the run (`NAME`, `VALUE`), set in `env`, that finds its
    processes once they have left its process group.
    """

    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    kill_grace: float
    marker: tuple[str, str] | None = None
    output_fd: int = subprocess.DEVNULL

    def __post_init__(self) -> None:
        # Frozen through and through: a starter may hand `env` on, never change it.
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    def writing_to(self, output_fd: int) -> Launch:
        """The same command with its stdout and stderr on `output_fd`."""
        return replace(self, output_fd=output_fd)


@dataclass
class ExitRecord:
    """Filled in when the process has ended, also when the run was cancelled."""

    returncode: int | None = None
    signalled_group: bool = False


class ProcessStarter(Protocol):
    """What runs a job's command: `run_process_group`, or a warm start with the same contract."""

    async def __call__(self, launch: Launch, record: ExitRecord) -> int:
        """Run `launch` to its end and return its exit code (negative for a signal); `record` holds it too.

        Cancellation: ends the run's whole process group before it returns.
        """
        ...
