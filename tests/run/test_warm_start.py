"""Warm starts: jobs forked from a pre-imported Ansible behave exactly as a fresh ansible-playbook does.

The pool and the JobRunner are tested without a broker (`runs.py`); what a worker shows of
its warm starts on the wire (presence, metrics) with one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.run.argv import FIFO_VARIABLE, ansible_environment, child_environment
from ansible_worker.run.process.process_group import run_process_group
from ansible_worker.run.warm.pool import Configuration, WarmPolicy, WarmPool
from tests.conftest import (
    ANSIBLE_PLAYBOOK,
    Broker,
    make_settings,
    open_controller,
    processes_mentioning,
    running_worker,
)
from tests.ops.test_operations import http_get, metric
from tests.run.runs import open_runs


async def test_worker_reports_warm_starts_and_same_statuses(broker: Broker, playbook_dir: Path, group: str) -> None:
    finals: dict[bool, dict[str, Any]] = {}
    for warm in (True, False):
        settings = make_settings(broker.port, playbook_dir, group, warm_start=warm)
        async with open_controller(broker, group) as controller, running_worker(settings) as worker:
            task_id = f"stats-{warm}"
            await controller.submit({"task_id": task_id, "playbook": "stats.yml", "inventory": "inventory.ini"})
            finals[warm] = await controller.wait_terminal(task_id)
            assert worker.metrics.warm_starts == (1 if warm else 0)
            assert worker.metrics.cold_starts == (0 if warm else 1)
            presence = json.loads(worker.presence.message())
            assert presence["warm_starts"] == (1 if warm else 0)
            assert presence["cold_starts"] == (0 if warm else 1)
            assert presence["warm_pool_size"] == (1 if warm else 0)
    keys = ("state", "return_code", "output", "output_per_host", "tasks_total", "tasks_ok", "tasks_changed")
    assert {k: finals[True][k] for k in keys} == {k: finals[False][k] for k in keys}
    assert finals[True]["state"] == "success"


async def test_cancel_ends_a_warm_jobs_whole_process_group(playbook_dir: Path) -> None:
    marker = "7391.5"
    async with open_runs(playbook_dir, kill_grace=2) as runs:
        job = runs.start(
            {
                "task_id": "sleepy",
                "playbook": "sleep.yml",
                "inventory": "inventory.ini",
                "extra_vars": {"seconds": marker},
            }
        )
        with trio.fail_after(60):
            while not processes_mentioning(f"sleep {marker}"):  # noqa: ASYNC110
                await trio.sleep(0.05)
        runs.cancel(job)
        final = await runs.wait_terminal(job)
        assert runs.metrics.warm_starts == 1
    assert final["state"] == "cancelled"
    assert processes_mentioning(f"sleep {marker}") == []


async def test_a_warm_parent_that_dies_fails_its_jobs_and_is_replaced(playbook_dir: Path) -> None:
    marker = "7392.5"
    async with open_runs(playbook_dir) as runs:
        job = runs.start(
            {
                "task_id": "orphan",
                "playbook": "sleep.yml",
                "inventory": "inventory.ini",
                "extra_vars": {"seconds": marker},
            }
        )
        with trio.fail_after(60):
            while not processes_mentioning(f"sleep {marker}"):  # noqa: ASYNC110
                await trio.sleep(0.05)
        (parent,) = runs.runner.warm_pool._parents.values()
        assert parent.pid is not None
        os.kill(parent.pid, signal.SIGKILL)
        final = await runs.wait_terminal(job)
        assert processes_mentioning(f"sleep {marker}") == []
        after = await runs.run({"task_id": "after", "playbook": "quick.yml", "inventory": "inventory.ini"})
        assert runs.metrics.warm_parents_lost == 1
        assert runs.metrics.warm_starts == 2
    assert final["state"] == "failed"
    assert "warm Ansible parent" in final["error_message"]
    assert after["state"] == "success"


async def test_a_wrapper_script_starts_cold_and_says_why(
    playbook_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrapper = tmp_path / "ansible-playbook-wrapper"
    wrapper.write_text(f'#!/bin/sh\nexec {ANSIBLE_PLAYBOOK} "$@"\n')
    wrapper.chmod(0o755)
    with caplog.at_level(logging.INFO, logger="ansible_worker.run.warm.pool"):
        async with open_runs(playbook_dir, ansible_playbook_path=str(wrapper)) as runs:
            final = await runs.run({"task_id": "wrapped", "playbook": "stats.yml", "inventory": "inventory.ini"})
            assert (runs.metrics.warm_starts, runs.metrics.cold_starts) == (0, 1)
    assert final["state"] == "success"
    assert any(
        "cold start:" in record.getMessage() and "not the standard ansible-playbook script" in record.getMessage()
        for record in caplog.records
    )


async def test_a_warm_job_past_its_timeout_ends_with_its_whole_group(playbook_dir: Path) -> None:
    marker = "7393.5"
    job = {"task_id": "late", "playbook": "sleep.yml", "inventory": "inventory.ini", "timeout": 3}
    async with open_runs(playbook_dir, kill_grace=2) as runs:
        final = await runs.run({**job, "extra_vars": {"seconds": marker}})
        assert runs.metrics.warm_starts == 1
    assert final["state"] == "timeout"
    assert processes_mentioning(f"sleep {marker}") == []


async def test_a_parent_is_replaced_after_its_forks(playbook_dir: Path) -> None:
    async with open_runs(playbook_dir, warm_max_forks=1) as runs:
        pids = []
        for index in range(2):
            final = await runs.run({"task_id": f"q-{index}", "playbook": "quick.yml", "inventory": "inventory.ini"})
            assert final["state"] == "success"
            pids.append([parent.pid for parent in runs.runner.warm_pool._parents.values()])
        assert runs.metrics.warm_starts == 2
        assert runs.metrics.warm_parents_started == 2
        assert runs.metrics.warm_parents_lost == 0
    # Each job retired the parent it came from; the next one found a new parent.
    assert pids == [[], []]


async def test_a_parent_that_cannot_start_means_cold_starts_with_the_reason(tmp_path: Path) -> None:
    script = tmp_path / "ansible-playbook"
    script.write_text(
        f"#!{tmp_path}/missing/python3\nimport sys\nfrom ansible.cli.playbook import main\n"
        "if __name__ == '__main__':\n    sys.exit(main())\n"
    )
    script.chmod(0o755)
    metrics = WorkerMetrics()
    env = ansible_environment(child_environment(os.environ), tmp_path / "x.fifo")
    policy = WarmPolicy(size=2, max_forks=100, max_rss_kib=1 << 20, start_timeout=30)
    async with WarmPool(policy, metrics=metrics, late=(FIFO_VARIABLE,)).open() as pool:
        first = await pool.starter(Configuration(str(script), tmp_path, env))
        second = await pool.starter(Configuration(str(script), tmp_path, env))
    assert first is run_process_group
    assert second is run_process_group
    assert (metrics.cold_starts, metrics.warm_starts) == (2, 0)
    # One attempt, not one per job.
    assert metrics.warm_parents_started == 1


async def test_metrics_show_warm_starts(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group, http={"port": 0, "host": "127.0.0.1"})
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        await controller.submit({"task_id": "seen", "playbook": "quick.yml", "inventory": "one_host.ini"})
        assert (await controller.wait_terminal("seen"))["state"] == "success"
        port = worker.http_port
        assert port is not None
        body = (await http_get(port, "/metrics"))[1]
    assert metric(body, "ansible_worker_warm_starts_total") == 1
    assert metric(body, "ansible_worker_cold_starts_total") == 0
    assert metric(body, "ansible_worker_warm_pool_size") == 1
    assert metric(body, "ansible_worker_warm_parents_started_total") == 1
    assert metric(body, "ansible_worker_warm_parents_lost_total") == 0
