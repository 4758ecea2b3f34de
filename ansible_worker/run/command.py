"""Turn a job into the exact `ansible-playbook` argument list and environment, refusing what is unsafe."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ansible_worker.protocol.models import TaskRequest

PLUGIN_DIRECTORY = Path(__file__).parent / "plugins" / "callback"
FIFO_VARIABLE = "ANSIBLE_WORKER_EVENT_FIFO"
# The worker's own settings may arrive as ANSIBLE_WORKER_* variables (the broker password
# among them): a playbook could read them with lookup('env', ...), so they stay here.
_WORKER_VARIABLE_PREFIX = "ANSIBLE_WORKER_"
_ANSIBLE_DEFAULT_CALLBACK_PATH = "~/.ansible/plugins/callback:/usr/share/ansible/plugins/callback"
DEFAULT_ANSIBLE_PLAYBOOK = "ansible-playbook"


class JobRefusedError(Exception):
    """The job cannot run as asked; the message becomes the status's `error_message`."""


def resolve_inside(base: Path, relative: str, what: str) -> Path:
    """Resolve `relative` under `base`, symlinks included, and insist that it stays there.

    `base` must already be resolved. Absolute paths and `..` are refused outright, before
    the file system is asked, so the message does not depend on what exists outside.
    """
    pure = PurePosixPath(relative)
    if pure.is_absolute():
        raise JobRefusedError(f"{what} must be relative to the playbook directory: {relative!r}")
    if ".." in pure.parts:
        raise JobRefusedError(f"{what} must not contain '..': {relative!r}")
    candidate = base / pure
    if not candidate.exists():
        raise JobRefusedError(f"{what} not found: {relative!r}")
    resolved = candidate.resolve()
    if not resolved.is_relative_to(base):
        raise JobRefusedError(f"{what} resolves outside the playbook directory: {relative!r}")
    return resolved


def resolve_playbook(base: Path, playbook: str) -> Path:
    """The playbook's resolved path inside `base`.

    Errors: `JobRefusedError` when it is outside `base`, missing or not a file.
    """
    path = resolve_inside(base, playbook, "playbook")
    if not path.is_file():
        raise JobRefusedError(f"playbook is not a file: {playbook!r}")
    return path


def resolve_inventory(base: Path, inventory: str) -> str:
    """A path inside the playbook directory, or an inline host list such as `web1,web2,`."""
    if "," in inventory:
        return inventory
    return str(resolve_inside(base, inventory, "inventory"))


def build_argv(
    job: TaskRequest,
    *,
    executable: str,
    playbook: Path,
    inventory: str,
    extra_vars_file: Path | None,
) -> list[str]:
    """Every value from the message is glued to its option (`--limit=VALUE`) so it can
    never be read as an option of its own; the playbook path is absolute and after `--`."""
    argv = [executable, f"--inventory={inventory}"]
    if extra_vars_file is not None:
        argv.append(f"--extra-vars=@{extra_vars_file}")
    if job.limit is not None:
        argv.append(f"--limit={job.limit}")
    if job.tags:
        argv.append(f"--tags={','.join(job.tags)}")
    if job.skip_tags:
        argv.append(f"--skip-tags={','.join(job.skip_tags)}")
    argv.append(f"--forks={job.forks}")
    if job.verbosity:
        argv.append("-" + "v" * job.verbosity)
    if job.check_mode:
        argv.append("--check")
    if job.diff_mode:
        argv.append("--diff")
    argv += ["--", str(playbook)]
    return argv


# The worker's own ssh-agent is not lent to jobs: a job gets keys only from its credentials
# (or from `worker.environment`, where an operator can set SSH_AUTH_SOCK on purpose).
_NOT_INHERITED = frozenset({"SSH_AUTH_SOCK"})


def child_environment(
    base: Mapping[str, str], *, extra: Mapping[str, str] | None = None, hidden_values: Collection[str] = ()
) -> dict[str, str]:
    """The worker's environment for its child processes, plus `extra` (`worker.environment`).

    Left out: the worker's own `ANSIBLE_WORKER_*` settings, its `SSH_AUTH_SOCK`, and any
    variable whose value is one of `hidden_values` (the broker password, however the config
    file referred to it).
    """
    hidden = {value for value in hidden_values if value}
    env = {
        name: value
        for name, value in base.items()
        if not name.startswith(_WORKER_VARIABLE_PREFIX) and value not in hidden and name not in _NOT_INHERITED
    }
    env.update(extra or {})
    return env


def ansible_environment(base: Mapping[str, str], fifo: Path) -> dict[str, str]:
    """A child environment (from `child_environment`) plus what enables the event plugin.

    An operator's own `ANSIBLE_CALLBACK_PLUGINS` is kept after ours; without it Ansible's
    default search path is kept, so other callback plugins still load.
    """
    env = dict(base)
    others = env.get("ANSIBLE_CALLBACK_PLUGINS") or _ANSIBLE_DEFAULT_CALLBACK_PATH
    env["ANSIBLE_CALLBACK_PLUGINS"] = os.pathsep.join((str(PLUGIN_DIRECTORY), others))
    env[FIFO_VARIABLE] = str(fifo)
    # Human output goes to a pipe, not a terminal: colour codes would only clutter it.
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    return env


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

    A setting with a `/` is a path and is used as given. A bare name is looked up on
    `search_path` (the PATH that the job's processes get), and, only if it is not there, in
    `fallback`. The result is an absolute path, so that what runs is what was reported.
    """
    if "/" in setting:
        found = shutil.which(setting)
        return Executable(setting, setting if found else None, "as configured", "not an executable file")
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
