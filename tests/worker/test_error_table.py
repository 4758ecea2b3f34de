"""Every row of the error table, as a controller sees it on the wire."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Broker, make_settings, open_controller, processes_mentioning, running_worker

QUICK = {"playbook": "quick.yml", "inventory": "one_host.ini"}


async def run_jobs(
    broker: Broker, playbook_dir: Path, group: str, *jobs: dict[str, Any], **worker: Any
) -> list[dict[str, Any]]:
    settings = make_settings(broker.port, playbook_dir, group, **worker)
    async with open_controller(broker, group) as controller, running_worker(settings):
        for job in jobs:
            await controller.submit(job)
        return [await controller.wait_terminal(job["task_id"]) for job in jobs]


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (
            {"task_id": "e-missing"},
            "invalid task: playbook: required key is missing; inventory: required key is missing",
        ),
        (
            {"task_id": "e-type", **QUICK, "forks": "5"},
            "invalid task: forks: Input should be a valid integer (got '5')",
        ),
        (
            {"task_id": "e-verbosity", **QUICK, "verbosity": 5},
            "invalid task: verbosity: Input should be less than or equal to 4 (got 5)",
        ),
        (
            {"task_id": "e-notfound", "playbook": "nope.yml", "inventory": "one_host.ini"},
            "playbook not found: 'nope.yml'",
        ),
        (
            {"task_id": "e-dotdot", "playbook": "../../etc/passwd", "inventory": "one_host.ini"},
            "playbook must not contain '..': '../../etc/passwd'",
        ),
        (
            {"task_id": "e-absolute", "playbook": "/etc/passwd", "inventory": "one_host.ini"},
            "playbook must be relative to the playbook directory: '/etc/passwd'",
        ),
        (
            {"task_id": "e-inventory", "playbook": "quick.yml", "inventory": "../inv"},
            "inventory must not contain '..': '../inv'",
        ),
        (
            {"task_id": "e-limit", **QUICK, "limit": "--list-hosts"},
            "invalid task: limit: must not start with '-' or '@'",
        ),
        (
            {"task_id": "e-limitfile", **QUICK, "limit": "@/etc/hosts"},
            "invalid task: limit: must not start with '-' or '@'",
        ),
        (
            # JSON can say it ("\\ud800"); no file, argument or Ansible can take it.
            {"task_id": "e-surrogate", **QUICK, "extra_vars": {"v": ["ok", "\ud800"]}},
            "invalid task: extra_vars.v.1: it holds a lone surrogate, which is not text Ansible can read (got '\\ud800')",
        ),
    ],
)
async def test_invalid_job_gets_failed_status_with_reason(
    broker: Broker, playbook_dir: Path, group: str, job: dict[str, Any], message: str
) -> None:
    (final,) = await run_jobs(broker, playbook_dir, group, job)
    assert final["state"] == "failed"
    assert final["error_message"] == message
    assert final["tasks_total"] == 0


async def test_symlink_escaping_the_playbook_directory_is_refused(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.yml"
    outside.write_text((playbook_dir / "quick.yml").read_text())
    (playbook_dir / "escape.yml").symlink_to(outside)
    (final,) = await run_jobs(
        broker, playbook_dir, group, {"task_id": "e-symlink", "playbook": "escape.yml", "inventory": "one_host.ini"}
    )
    assert final["state"] == "failed"
    assert final["error_message"] == "playbook resolves outside the playbook directory: 'escape.yml'"


async def test_messages_without_usable_task_id_are_dropped_and_worker_goes_on(
    broker: Broker, playbook_dir: Path, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"playbook": "quick.yml"}',
        b'{"task_id": 7}',
        b'{"task_id": "has space"}',
        b"",
    ]
    settings = make_settings(broker.port, playbook_dir, group)
    async with open_controller(broker, group) as controller, running_worker(settings):
        for payload in garbage:
            await controller.submit(payload)
        await controller.submit({"task_id": "after-garbage", **QUICK})
        final = await controller.wait_terminal("after-garbage")
    assert final["state"] == "success"
    assert set(controller.statuses) == {"after-garbage"}
    dropped = [record.getMessage() for record in caplog.records if "dropped a task message" in record.getMessage()]
    assert len(dropped) == len(garbage)
    assert any("invalid JSON" in line for line in dropped)
    assert any("task_id is a JSON number" in line for line in dropped)


async def test_oversized_message_is_refused(broker: Broker, playbook_dir: Path, group: str) -> None:
    job = {"task_id": "e-big", **QUICK, "extra_vars": {"blob": "x" * 5000}}
    (final,) = await run_jobs(broker, playbook_dir, group, job, max_message_bytes=4096)
    assert final["state"] == "failed"
    assert final["error_message"] == f"message too large ({len(json.dumps(job))} bytes, max 4096)"


async def test_missing_executable_fails_the_job_not_the_worker(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group, ansible_playbook_path="/nonexistent/ansible-playbook")
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        await controller.submit({"task_id": "e-exe-1", **QUICK})
        first = await controller.wait_terminal("e-exe-1")
        await controller.submit({"task_id": "e-exe-2", **QUICK})
        second = await controller.wait_terminal("e-exe-2")
        assert worker.session.connected
    for final in (first, second):
        assert final["state"] == "failed"
        assert final["error_message"] == "cannot start: No such file or directory: /nonexistent/ansible-playbook"


async def test_broken_playbook_reports_ansibles_error(broker: Broker, playbook_dir: Path, group: str) -> None:
    (final,) = await run_jobs(
        broker, playbook_dir, group, {"task_id": "e-broken", "playbook": "broken.yml", "inventory": "one_host.ini"}
    )
    assert final["state"] == "failed"
    assert final["return_code"] == 4
    assert final["error_message"].startswith("ansible-playbook exited with code 4: ")
    assert "no_such_module_anywhere" in final["error_message"]


async def test_queue_full_fails_the_extra_job(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group, max_queue_size=1, kill_grace=1)
    sleeper = {"playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": 60}}
    async with open_controller(broker, group) as controller, running_worker(settings):
        await controller.submit({"task_id": "q-running", **sleeper})
        await controller.wait_for("q-running", {"running"})
        await controller.submit({"task_id": "q-queued", **sleeper})
        await controller.wait_for("q-queued", {"queued"})
        await controller.submit({"task_id": "q-refused", **sleeper})
        refused = await controller.wait_terminal("q-refused")
    assert refused["state"] == "failed"
    assert refused["error_message"] == "queue full (max 1)"
    assert refused["refused"] is True  # live only: the job never was this worker's
    assert [s["state"] for s in controller.statuses["q-refused"]] == ["failed"]


async def test_timeout_ends_the_whole_process_group(broker: Broker, playbook_dir: Path, group: str) -> None:
    job = {
        "task_id": "t-out",
        "playbook": "sleep.yml",
        "inventory": "one_host.ini",
        "extra_vars": {"seconds": 317},
        "timeout": 2,
    }
    settings = make_settings(broker.port, playbook_dir, group, kill_grace=5)
    runs = settings.worker.run_directory
    assert runs is not None
    async with open_controller(broker, group) as controller, running_worker(settings):
        await controller.submit(job)
        await controller.wait_for("t-out", {"running"})
        (run_dir,) = runs.iterdir()
        assert run_dir.stat().st_mode & 0o777 == 0o700
        assert (run_dir / "events.fifo").is_fifo()
        assert "seconds" in (run_dir / "extra_vars.yml").read_text()
        final = await controller.wait_terminal("t-out")
        assert processes_mentioning(str(playbook_dir)) == []
        assert processes_mentioning("sleep 317") == []
        assert list(runs.iterdir()) == []
    assert final["state"] == "timeout"
    assert final["error_message"] == "timed out after 2s"
    assert final["return_code"] is not None
    assert final["return_code"] != 0
    assert 2 <= final["duration_seconds"] < 2 + 5


def git(directory: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


@pytest.fixture
def git_playbooks(tmp_path: Path, playbook_dir: Path) -> tuple[Path, Path]:
    """A bare 'origin' and a clone of it as the worker's playbook directory."""
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "--bare", "-b", "main", str(origin))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", str(origin), str(seed))
    for item in playbook_dir.iterdir():
        (seed / item.name).write_bytes(item.read_bytes())
    git(seed, "add", ".")
    git(seed, "commit", "-m", "playbooks")
    git(seed, "push", "origin", "HEAD:main")
    checkout = tmp_path / "checkout"
    git(tmp_path, "clone", "-b", "main", str(origin), str(checkout))
    return seed, checkout


async def test_git_pull_brings_new_playbooks(broker: Broker, group: str, git_playbooks: tuple[Path, Path]) -> None:
    seed, checkout = git_playbooks
    (seed / "fresh.yml").write_text((seed / "quick.yml").read_text())
    git(seed, "add", "fresh.yml")
    git(seed, "commit", "-m", "fresh")
    git(seed, "push", "origin", "HEAD:main")
    (final,) = await run_jobs(
        broker,
        checkout,
        group,
        {"task_id": "git-ok", "playbook": "fresh.yml", "inventory": "one_host.ini", "git_pull": True},
    )
    assert final["state"] == "success", final["error_message"]


async def test_git_pull_failure_carries_gits_message(
    broker: Broker, group: str, git_playbooks: tuple[Path, Path]
) -> None:
    seed, checkout = git_playbooks
    # Diverge: a local commit and a different upstream commit cannot be fast-forwarded.
    (checkout / "local.txt").write_text("local")
    git(checkout, "add", "local.txt")
    git(checkout, "commit", "-m", "local")
    (seed / "remote.txt").write_text("remote")
    git(seed, "add", "remote.txt")
    git(seed, "commit", "-m", "remote")
    git(seed, "push", "origin", "HEAD:main")
    (final,) = await run_jobs(broker, checkout, group, {"task_id": "git-bad", **QUICK, "git_pull": True})
    assert final["state"] == "failed"
    assert final["error_message"].startswith("git pull failed (exit 128): ")
    assert "fast-forward" in final["error_message"]


POLICY = {
    "allowed_playbooks": ["quick.yml", "site/*.yml"],
    "allowed_inventories": ["one_host.ini"],
    "allow_inline_inventory": False,
    "max_verbosity": 1,
    "max_extra_vars_bytes": 200,
    "max_extra_vars_depth": 3,
}


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (
            {"playbook": "fail.yml", "inventory": "one_host.ini"},
            "playbook 'fail.yml' is not allowed on this worker (worker.allowed_playbooks)",
        ),
        (
            {"playbook": "quick.yml", "inventory": "inventory.ini"},
            "inventory 'inventory.ini' is not allowed on this worker (worker.allowed_inventories)",
        ),
        (
            {"playbook": "quick.yml", "inventory": "host1,"},
            "inline inventories (host lists) are not allowed on this worker",
        ),
        ({**QUICK, "verbosity": 3}, "verbosity 3 is above this worker's limit (1)"),
        ({**QUICK, "extra_vars": {"blob": "x" * 300}}, "extra_vars are 312 bytes, above this worker's limit (200)"),
        (
            {**QUICK, "extra_vars": {"a": {"b": {"c": {"d": 1}}}}},
            "extra_vars nest 4 levels deep, above this worker's limit (3)",
        ),
    ],
)
async def test_policy_refuses_what_a_job_may_not_ask(
    broker: Broker, playbook_dir: Path, group: str, job: dict[str, Any], message: str
) -> None:
    (final,) = await run_jobs(broker, playbook_dir, group, {"task_id": "policy", **job}, **POLICY)
    assert final["state"] == "failed"
    assert final["error_message"] == message
    assert final["return_code"] is None


async def test_policy_lets_allowed_jobs_run(broker: Broker, playbook_dir: Path, group: str) -> None:
    (playbook_dir / "site").mkdir()
    (playbook_dir / "site" / "web.yml").write_text((playbook_dir / "quick.yml").read_text())
    jobs: list[dict[str, Any]] = [
        {"task_id": "allowed-1", **QUICK, "verbosity": 1, "extra_vars": {"a": {"b": 1}}},
        {"task_id": "allowed-2", "playbook": "site/web.yml", "inventory": "one_host.ini"},
    ]
    finals = await run_jobs(broker, playbook_dir, group, *jobs, **POLICY)
    assert [final["state"] for final in finals] == ["success", "success"]
