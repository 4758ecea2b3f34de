"""Find the programs a run starts (`ansible-playbook`, git) as exec would, and say where they were found."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ANSIBLE_PLAYBOOK = "ansible-playbook"


@dataclass(frozen=True)
class Executable:
    """The program that a setting such as `worker.ansible_playbook_path` names, as found once."""

    setting: str
    path: str | None  # what will run; None when nothing was found
    source: str  # where it was found: "PATH", "the worker's own environment", "as configured"
    searched: str  # where it was looked for, for a message when nothing was found

    @property
    def command(self) -> str:
        """What to start: the path found, else the setting as given (which then fails clearly)."""
        return self.path or self.setting

    def describe(self) -> str:
        """One line for `validate` and the log: the full path and where it came from."""
        if self.path is None:
            return f"{self.setting!r} not found ({self.searched})"
        if self.source == "as configured":
            return self.path
        return f"{self.path} (from {self.source})"


def own_scripts_directories() -> list[Path]:
    """Where the worker's own Python environment keeps its scripts (a virtualenv's `bin`).

    The directory of `sys.executable` (not resolved: a venv's `python` is a symlink out of
    it) and sysconfig's `scripts` path, in that order, without repeats.
    """
    candidates = [Path(sys.executable).parent] if sys.executable else []
    candidates.append(Path(sysconfig.get_path("scripts")))
    unique: list[Path] = []
    for directory in candidates:
        if directory not in unique:
            unique.append(directory)
    return unique


def find_executable(setting: str, *, search_path: str, fallback: Sequence[Path] = ()) -> Executable:
    """Resolve `setting` as exec would, with `search_path` as PATH; then try `fallback` directories.

    A setting with a `/` is a path, taken from the worker's working directory, never from the
    job's (a relative one would otherwise name a file of the job's tree). A bare name is looked
    up on `search_path` (the PATH that the job's processes get), and, only if it is not there,
    in `fallback`. The result is an absolute path, so that what runs is what was reported.
    """
    if "/" in setting:
        absolute = os.path.abspath(setting)
        found = shutil.which(absolute)
        return Executable(absolute, absolute if found else None, "as configured", "not an executable file")
    on_path = shutil.which(setting, path=search_path)
    if on_path is not None:
        return Executable(setting, os.path.abspath(on_path), "PATH", search_path)
    for directory in fallback:
        candidate = directory / setting
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return Executable(setting, str(candidate.absolute()), "the worker's own environment", search_path)
    searched = f"PATH {search_path or '(empty)'}"
    if fallback:
        searched += "; the worker's own environment: " + os.pathsep.join(str(directory) for directory in fallback)
    return Executable(setting, None, "", searched)


def find_ansible_playbook(setting: str, environment: Mapping[str, str]) -> Executable:
    """The `ansible-playbook` a job runs, given the jobs' environment (from `child_environment`).

    The default name falls back to the `ansible-playbook` installed beside the worker (it is
    a dependency), so a worker started by its full path from a virtualenv whose `bin` is not
    on PATH (a systemd unit, a container entry point) still finds it. A name or path that an
    operator set is never replaced by another program.
    """
    fallback = own_scripts_directories() if setting == DEFAULT_ANSIBLE_PLAYBOOK else []
    return find_executable(setting, search_path=environment.get("PATH", os.defpath), fallback=fallback)


def find_ansible_inventory(ansible_playbook: Executable, environment: Mapping[str, str]) -> Executable:
    """The `ansible-inventory` that resolves jobs' hosts for their locks: beside `ansible-playbook`, else as
    `ansible-playbook`'s default name is found (the jobs' PATH, then the worker's own environment)."""
    beside = find_ansible_beside(ansible_playbook, "ansible-inventory")
    if beside.path is not None:
        return beside
    name = "ansible-inventory"
    return find_executable(name, search_path=environment.get("PATH", os.defpath), fallback=own_scripts_directories())


def find_ansible_beside(ansible_playbook: Executable, setting: str = "ansible") -> Executable:
    """Another Ansible CLI (`ansible`, `ansible-inventory`): the one installed beside the `ansible-playbook` jobs run.

    The same installation of Ansible serves every kind of job; a wrapper script named by
    `worker.ansible_playbook_path` with nothing beside it means no ad-hoc commands, and no
    host locks resolved from inventories.
    """
    if ansible_playbook.path is None:
        return Executable(
            setting, None, "", f"beside ansible-playbook, which was not found ({ansible_playbook.searched})"
        )
    candidate = Path(ansible_playbook.path).with_name(setting)
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return Executable(setting, str(candidate), f"beside {ansible_playbook.path}", str(candidate.parent))
    return Executable(setting, None, "", f"not beside {ansible_playbook.path}")
