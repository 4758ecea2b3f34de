"""A worker started by its full path from a virtualenv, with the venv's bin not on PATH (issue 11, item 14)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import trio

from ansible_worker.run.executables import (
    DEFAULT_ANSIBLE_PLAYBOOK,
    find_ansible_playbook,
    find_executable,
    own_scripts_directories,
)
from tests.conftest import Broker, client_for, worker_config, worker_process

OWN_BIN = Path(sys.executable).parent
OWN_ANSIBLE_PLAYBOOK = str(OWN_BIN / "ansible-playbook")
# What a systemd unit or a container entry point typically has: no virtualenv on it.
BARE_PATH = "/usr/bin:/bin"


def bare_environment() -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if name != "VIRTUAL_ENV"}
    environment["PATH"] = BARE_PATH
    return environment


def default_config(path: Path, broker: Broker, playbook_dir: Path, group: str) -> Path:
    """A worker config that leaves `worker.ansible_playbook_path` at its default."""
    worker_config(path, broker, playbook_dir, group, worker_id="own-env")
    values = json.loads(path.read_text())
    del values["worker"]["ansible_playbook_path"]
    path.write_text(json.dumps(values))
    return path


async def test_worker_started_by_its_full_path_runs_its_own_ansible_playbook(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    assert shutil.which("ansible-playbook", path=BARE_PATH) is None, "another ansible-playbook is on the bare PATH"
    assert str(OWN_BIN) not in BARE_PATH.split(os.pathsep)
    assert os.access(OWN_ANSIBLE_PLAYBOOK, os.X_OK), "ansible-core is not installed beside the worker"
    config = default_config(tmp_path / "worker.json", broker, playbook_dir, group)
    environment = bare_environment()
    async with worker_process("run", "-c", str(config), env=environment) as worker:
        async with client_for(broker, group) as client:
            with trio.fail_after(30):
                await client.wait_for_worker("own-env")
            handle = await client.submit({"task_id": "own-env-1", "playbook": "quick.yml", "inventory": "one_host.ini"})
            async with handle:
                with trio.fail_after(120):
                    final = await handle.wait()
        await worker.stop()
    assert final["state"] == "success", final.get("error_message")
    assert final["tasks_ok"] == 1
    assert any(f"jobs run {OWN_ANSIBLE_PLAYBOOK} (from the worker's own environment)" in line for line in worker.lines)

    # `validate` names the one it will run, whichever way the worker is started.
    for launcher in ([str(OWN_BIN / "ansible-worker")], [sys.executable, "-m", "ansible_worker"]):
        with trio.fail_after(60):
            validated = await trio.run_process(
                [*launcher, "validate", "-c", str(config)], env=environment, capture_stdout=True, capture_stderr=True
            )
        text = validated.stdout.decode()
        assert validated.returncode == 0, validated.stderr.decode()
        assert f"executables   {OWN_ANSIBLE_PLAYBOOK} (from the worker's own environment)" in text, text
        assert "problem:" not in text, text


async def test_validate_says_when_no_ansible_playbook_is_found(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    config = worker_config(tmp_path / "worker.json", broker, playbook_dir, group, ansible_playbook_path="no-such-ap")
    with trio.fail_after(60):
        validated = await trio.run_process(
            [str(OWN_BIN / "ansible-worker"), "validate", "-c", str(config)],
            env=bare_environment(),
            capture_stdout=True,
            capture_stderr=True,
        )
    text = validated.stdout.decode()
    assert (
        f"problem: worker.ansible_playbook_path: 'no-such-ap' not found (PATH {BARE_PATH}): every job will fail" in text
    ), text


def _script(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / name
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    return script


def test_which_ansible_playbook_is_chosen(tmp_path: Path) -> None:
    on_path = _script(tmp_path / "path-bin", DEFAULT_ANSIBLE_PLAYBOOK)
    own = _script(tmp_path / "own-bin", DEFAULT_ANSIBLE_PLAYBOOK)
    _script(tmp_path / "own-bin", "custom-ap")
    empty = tmp_path / "empty"
    empty.mkdir()

    # PATH first, as exec would; then the worker's own environment.
    first = find_executable(DEFAULT_ANSIBLE_PLAYBOOK, search_path=str(on_path.parent), fallback=[own.parent])
    assert (first.path, first.source) == (str(on_path), "PATH")
    second = find_executable(DEFAULT_ANSIBLE_PLAYBOOK, search_path=str(empty), fallback=[empty, own.parent])
    assert (second.path, second.source) == (str(own), "the worker's own environment")
    assert second.command == str(own)
    assert second.describe() == f"{own} (from the worker's own environment)"

    # Nothing found: the setting is run as given (and fails with the usual message).
    missing = find_executable(DEFAULT_ANSIBLE_PLAYBOOK, search_path=str(empty), fallback=[empty])
    assert missing.path is None
    assert missing.command == DEFAULT_ANSIBLE_PLAYBOOK
    assert str(empty) in missing.describe()

    # A path that an operator configured is used as given, never swapped for another program.
    configured = find_executable(str(on_path), search_path="", fallback=[own.parent])
    assert (configured.path, configured.source) == (str(on_path), "as configured")
    assert find_executable(str(empty / "nope"), search_path="", fallback=[own.parent]).path is None


def test_a_relative_path_is_the_worker_s_never_the_job_tree_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    worker_directory = tmp_path / "worker"
    own = _script(worker_directory / "bin", "ansible-playbook")
    monkeypatch.chdir(worker_directory)
    found = find_executable("bin/ansible-playbook", search_path="", fallback=[])
    assert (found.path, found.command) == (str(own), str(own))
    # Not there: what runs (and fails) is still the worker's path, whatever the job's directory holds.
    missing = find_executable("other/ansible-playbook", search_path="", fallback=[])
    assert missing.path is None
    assert missing.command == str(worker_directory / "other" / "ansible-playbook")


def test_only_the_default_name_falls_back_to_the_own_environment(tmp_path: Path) -> None:
    assert OWN_BIN in own_scripts_directories()
    bare = {"PATH": str(tmp_path)}
    assert find_ansible_playbook(DEFAULT_ANSIBLE_PLAYBOOK, bare).path == OWN_ANSIBLE_PLAYBOOK
    # An operator's own name is looked up on PATH only.
    assert find_ansible_playbook("ansible-playbook-2.19", bare).path is None
    # The PATH that jobs get (worker.environment included) is the one searched.
    elsewhere = _script(tmp_path / "elsewhere", DEFAULT_ANSIBLE_PLAYBOOK)
    assert find_ansible_playbook(DEFAULT_ANSIBLE_PLAYBOOK, {"PATH": str(elsewhere.parent)}).path == str(elsewhere)
