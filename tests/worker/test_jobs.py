"""Jobs end to end: a real broker, an in-process worker, real ansible-playbook, statuses on the wire."""

from __future__ import annotations

import re
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ANSIBLE_PLAYBOOK, Broker, make_settings, open_controller, running_worker
from tests.deployment import Deployment, lane

RECAP_LINE = re.compile(r"^(\S+)\s+:\s+(ok=.*)$")


def play_recap(playbook_dir: Path, playbook: str, inventory: str) -> dict[str, int]:
    """Run ansible-playbook directly and add up its PLAY RECAP over all hosts."""
    result = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", inventory, playbook],
        cwd=playbook_dir,
        capture_output=True,
        text=True,
        check=False,
        env={"ANSIBLE_NOCOLOR": "1", "PATH": "/usr/bin:/bin"},
    )
    recap = result.stdout.split("PLAY RECAP")[1]
    totals: dict[str, int] = {}
    for line in recap.splitlines():
        match = RECAP_LINE.match(line.strip())
        if match is None:
            continue
        for pair in match.group(2).split():
            key, value = pair.split("=")
            totals[key] = totals.get(key, 0) + int(value)
    return totals


@lane
@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
async def test_success_status_has_every_field_and_recap_counts(
    broker: Broker, playbook_dir: Path, group: str, deployment: Deployment, warm: bool
) -> None:
    recap = play_recap(playbook_dir, "recap.yml", "inventory.ini")
    settings = make_settings(broker.port, playbook_dir, group, warm_start=warm)
    async with open_controller(broker, group) as controller, deployment.running(settings) as worker:
        await controller.submit({"task_id": "recap-1", "playbook": "recap.yml", "inventory": "inventory.ini"})
        final = await controller.wait_terminal("recap-1")
        assert await worker.starts(jobs_done=1) == ((1, 0) if warm else (0, 1))

    states = [status["state"] for status in controller.statuses["recap-1"]]
    assert states[0] == "queued"
    assert states[1] == "running"
    assert states[-1] == "success"
    assert states.count("success") == 1
    # Counters climb while Ansible works: some running status shows partial progress.
    running_totals = [s["tasks_total"] for s in controller.statuses["recap-1"] if s["state"] == "running"]
    assert any(0 < total < final["tasks_total"] for total in running_totals)

    assert final["tasks_ok"] + final["tasks_changed"] == recap["ok"]
    assert final["tasks_changed"] == recap["changed"]
    assert final["tasks_failed"] == recap["failed"]
    assert final["tasks_skipped"] == recap["skipped"]
    assert final["tasks_unreachable"] == recap["unreachable"]
    assert final["tasks_ignored"] == recap["ignored"] == 2
    assert final["tasks_total"] == sum(
        final[key] for key in ("tasks_ok", "tasks_changed", "tasks_failed", "tasks_skipped", "tasks_unreachable")
    )
    # 6 tasks on 2 hosts; recap: ok=4 changed=1 skipped=1 (host1) / skipped=2 (host2).
    assert final["tasks_total"] == 12

    for key in ("created_at", "started_at", "completed_at"):
        assert final[key].endswith("Z")
        datetime.fromisoformat(final[key])
    assert final["created_at"] <= final["started_at"] <= final["completed_at"]
    assert isinstance(final["duration_seconds"], float)
    assert final["duration_seconds"] > 0
    assert final["return_code"] == 0
    assert final["error_message"] is None
    assert final["output"] == {}
    assert final["worker_id"] == settings.worker.worker_id
    assert final["task_id"] == "recap-1"


async def test_failing_playbook_names_task_host_and_message(broker: Broker, playbook_dir: Path, group: str) -> None:
    async with (
        open_controller(broker, group) as controller,
        running_worker(make_settings(broker.port, playbook_dir, group)),
    ):
        await controller.submit({"task_id": "fail-1", "playbook": "fail.yml", "inventory": "one_host.ini"})
        final = await controller.wait_terminal("fail-1")
    assert final["state"] == "failed"
    assert final["return_code"] == 2
    assert final["error_message"] == "task 'Break here' failed on host 'host1': boom on host1"
    assert final["tasks_ok"] == 1
    assert final["tasks_failed"] == 1


async def test_set_stats_calls_merge_later_key_wins(broker: Broker, playbook_dir: Path, group: str) -> None:
    async with (
        open_controller(broker, group) as controller,
        running_worker(make_settings(broker.port, playbook_dir, group)),
    ):
        await controller.submit({"task_id": "stats-1", "playbook": "stats.yml", "inventory": "inventory.ini"})
        final = await controller.wait_terminal("stats-1")
    assert final["state"] == "success"
    assert final["output"] == {"counter": 106, "first": "one", "second": "two", "mine": "host1"}
    assert final["output_per_host"] == {"host1": {"mine": "host1"}}


@lane
async def test_extra_vars_are_data_not_templates(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    marker = tmp_path / "pwned"
    attack = "{{ lookup('pipe', 'touch " + str(marker) + "') }}"
    # Strings that YAML would read as another type, were they written bare: they stay strings.
    look_alikes = ["1.10", "007", "yes", "off", "null", "~", "", "2001-12-14", "1e3", "0x1F", "1:30", "<<", "="]
    nested = {"list": [attack, 3, True, None], "look_alikes": look_alikes, "010": "1.50"}
    job = {
        "task_id": "vars-1",
        "playbook": "options.yml",
        "inventory": "one_host.ini",
        "extra_vars": {"greeting": "1.10", "nested": nested},
    }
    async with (
        open_controller(broker, group) as controller,
        deployment.running(make_settings(broker.port, playbook_dir, group)),
    ):
        await controller.submit(job)
        final = await controller.wait_terminal("vars-1")
    assert final["state"] == "success", final["error_message"]
    assert final["output"]["greeting"] == "1.10"
    assert final["output"]["nested"] == nested
    assert not marker.exists()


async def test_job_options_reach_ansible(broker: Broker, playbook_dir: Path, group: str) -> None:
    base = {"playbook": "options.yml", "inventory": "inventory.ini"}
    jobs: dict[str, dict[str, Any]] = {
        "opt-defaults": {},
        "opt-flags": {"check_mode": True, "diff_mode": True, "verbosity": 3, "forks": 7},
        "opt-limit": {"limit": "host2"},
        "opt-tags": {"tags": ["red"]},
        "opt-skip": {"skip_tags": ["red"]},
    }
    settings = make_settings(broker.port, playbook_dir, group, concurrency=2)
    async with open_controller(broker, group) as controller, running_worker(settings):
        for task_id, options in jobs.items():
            await controller.submit({"task_id": task_id, **base, **options})
        finals = {task_id: await controller.wait_terminal(task_id) for task_id in jobs}

    for task_id, final in finals.items():
        assert final["state"] == "success", (task_id, final["error_message"])
    defaults = finals["opt-defaults"]["output"]
    assert (defaults["check_mode"], defaults["diff_mode"], defaults["verbosity"], defaults["forks"]) == (
        False,
        False,
        0,
        5,
    )
    assert defaults["red"] is True
    assert defaults["blue"] is True
    flags = finals["opt-flags"]["output"]
    assert (flags["check_mode"], flags["diff_mode"], flags["verbosity"], flags["forks"]) == (True, True, 3, 7)
    assert finals["opt-limit"]["output"]["host"] == "host2"
    assert finals["opt-limit"]["tasks_total"] == 4
    assert finals["opt-defaults"]["tasks_total"] == 8
    assert "blue" not in finals["opt-tags"]["output"]
    assert finals["opt-tags"]["output"]["red"] is True
    assert "red" not in finals["opt-skip"]["output"]
    assert finals["opt-skip"]["output"]["blue"] is True


async def test_concurrency_two_runs_two_jobs_at_once(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group, concurrency=2)
    job = {"playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": 2}}
    async with open_controller(broker, group) as controller, running_worker(settings):
        await controller.submit({"task_id": "par-1", **job})
        await controller.submit({"task_id": "par-2", **job})
        first = await controller.wait_terminal("par-1")
        second = await controller.wait_terminal("par-2")
    assert first["state"] == second["state"] == "success"
    # Each started before the other finished.
    assert second["started_at"] < first["completed_at"]
    assert first["started_at"] < second["completed_at"]


async def test_two_workers_share_ten_jobs_each_run_once(broker: Broker, playbook_dir: Path, group: str) -> None:
    first = make_settings(broker.port, playbook_dir, group, worker_id="worker-a")
    second = make_settings(broker.port, playbook_dir, group, worker_id="worker-b")
    task_ids = [f"shared-{index}" for index in range(10)]
    async with open_controller(broker, group) as controller:
        async with running_worker(first), running_worker(second):
            for task_id in task_ids:
                await controller.submit({"task_id": task_id, "playbook": "quick.yml", "inventory": "one_host.ini"})
            finals = [await controller.wait_terminal(task_id, within=120) for task_id in task_ids]
        # Both workers have stopped and flushed; a duplicate run would be on the wire by now.
        await controller.sync()

    assert all(final["state"] == "success" for final in finals)
    for task_id in task_ids:
        statuses = controller.statuses[task_id]
        assert len(controller.terminal_statuses(task_id)) == 1
        assert len({status["worker_id"] for status in statuses}) == 1, statuses
        assert [status["state"] for status in statuses].count("running") >= 1
    holders = {final["worker_id"] for final in finals}
    assert holders == {"worker-a", "worker-b"}


async def test_duplicate_task_id_is_ignored_while_held(broker: Broker, playbook_dir: Path, group: str) -> None:
    job = {"task_id": "dup-1", "playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": 2}}
    async with (
        open_controller(broker, group) as controller,
        running_worker(make_settings(broker.port, playbook_dir, group)),
    ):
        await controller.submit(job)
        await controller.wait_for("dup-1", {"running"})
        await controller.submit(job)
        await controller.submit({"task_id": "dup-1", "playbook": 5})
        final = await controller.wait_terminal("dup-1")
        # A later job on the same worker proves both duplicates were handled by then.
        await controller.submit({"task_id": "dup-after", "playbook": "quick.yml", "inventory": "one_host.ini"})
        await controller.wait_terminal("dup-after")
    assert final["state"] == "success"
    states = [status["state"] for status in controller.statuses["dup-1"]]
    assert states.count("queued") == 1
    assert len(controller.terminal_statuses("dup-1")) == 1
