"""Turn a job into the exact `ansible-playbook` or `ansible` argument list and environment, refusing what is unsafe."""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from ansible_worker.protocol.models import TaskRequest
from ansible_worker.run.errors import JobRefusedError
from ansible_worker.run.executables import Executable

PLUGIN_DIRECTORY = Path(__file__).parent / "plugins" / "callback"
FIFO_VARIABLE = "ANSIBLE_WORKER_EVENT_FIFO"
# The worker's own settings may arrive as ANSIBLE_WORKER_* variables (the broker password
# among them): a playbook could read them with lookup('env', ...), so they stay here.
_WORKER_VARIABLE_PREFIX = "ANSIBLE_WORKER_"
_ANSIBLE_DEFAULT_CALLBACK_PATH = "~/.ansible/plugins/callback:/usr/share/ansible/plugins/callback"


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
    argv += _output_and_mode(job)
    argv += ["--", str(playbook)]
    return argv


def build_adhoc_argv(
    job: TaskRequest,
    *,
    executable: str,
    inventory: str,
    extra_vars_file: Path | None,
) -> list[str]:
    """The `ansible` argument list of an ad-hoc command: as `build_argv`, with the host pattern after `--`."""
    assert job.module is not None, "not an ad-hoc command"
    argv = [executable, f"--inventory={inventory}", f"--module-name={job.module}"]
    if job.module_args is not None:
        argv.append(f"--args={module_arguments(job.module_args)}")
    if extra_vars_file is not None:
        argv.append(f"--extra-vars=@{extra_vars_file}")
    if job.limit is not None:
        argv.append(f"--limit={job.limit}")
    argv.append(f"--forks={job.forks}")
    if job.background is not None:
        argv.append(f"--background={job.background}")
        argv.append(f"--poll={job.poll if job.poll is not None else _ANSIBLE_DEFAULT_POLL}")
    argv += _output_and_mode(job)
    argv += ["--", job.hosts]
    return argv


def _output_and_mode(job: TaskRequest) -> list[str]:
    """The options both CLIs take alike: verbosity, check mode and diff mode."""
    options = ["-" + "v" * job.verbosity] if job.verbosity else []
    if job.check_mode:
        options.append("--check")
    if job.diff_mode:
        options.append("--diff")
    return options


# `ansible -B N` without `-P` polls every 15 seconds; said here so the argument list shows it.
_ANSIBLE_DEFAULT_POLL = 15


def job_argv(
    request: TaskRequest,
    *,
    playbook: Path | None,
    inventory: str,
    extra_vars_file: Path | None,
    ansible_playbook: Executable,
    ansible: Executable | None,
) -> list[str]:
    """The command line of a job: `ansible-playbook` with its resolved `playbook`, or `ansible` for an ad-hoc command.

    Errors: `JobRefusedError` for an ad-hoc command when Ansible's `ansible` CLI was not found.
    """
    if playbook is not None:
        return build_argv(
            request,
            executable=ansible_playbook.command,
            playbook=playbook,
            inventory=inventory,
            extra_vars_file=extra_vars_file,
        )
    if ansible is None or ansible.path is None:
        where = ansible.describe() if ansible is not None else "not looked for"
        raise JobRefusedError(f"ad-hoc commands need Ansible's `ansible` CLI: {where}")
    return build_adhoc_argv(request, executable=ansible.path, inventory=inventory, extra_vars_file=extra_vars_file)


def module_arguments(value: str | dict[str, Any]) -> str:
    """The `--args` value of an ad-hoc command: a string as given, an object as JSON whose strings are data.

    Ansible templates a task's arguments on the worker. Every string value of an object becomes
    `{"__ansible_unsafe": ...}`, which Ansible's JSON decoder reads as data that is never
    templated; the models refuse keys, and strings given whole, that could spell a template.
    """
    if isinstance(value, str):
        return value
    return json.dumps(_unsafe(value), separators=(",", ":"))


def _unsafe(value: Any) -> Any:
    if isinstance(value, str):
        return {"__ansible_unsafe": value}
    if isinstance(value, dict):
        return {key: _unsafe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unsafe(item) for item in value]
    return value


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


def ansible_environment(base: Mapping[str, str], fifo: Path, *, ad_hoc: bool = False) -> dict[str, str]:
    """A child environment (from `child_environment`) plus what enables the event plugin.

    An operator's own `ANSIBLE_CALLBACK_PLUGINS` is kept after ours; without it Ansible's
    default search path is kept, so other callback plugins still load. The ad-hoc CLI loads
    no callback plugin but its output's unless `ANSIBLE_LOAD_CALLBACK_PLUGINS` is on.
    """
    env = dict(base)
    if ad_hoc:
        env["ANSIBLE_LOAD_CALLBACK_PLUGINS"] = "1"
    others = env.get("ANSIBLE_CALLBACK_PLUGINS") or _ANSIBLE_DEFAULT_CALLBACK_PATH
    env["ANSIBLE_CALLBACK_PLUGINS"] = os.pathsep.join((str(PLUGIN_DIRECTORY), others))
    env[FIFO_VARIABLE] = str(fifo)
    # Human output goes to a pipe, not a terminal: colour codes would only clutter it.
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    return env
