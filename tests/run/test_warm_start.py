"""Warm starts: jobs forked from a pre-imported Ansible behave exactly as a fresh ansible-playbook does.

The pool and the JobRunner are tested without a broker (`runs.py`); what a worker shows of
its warm starts on the wire (presence, metrics) with one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.run.argv import FIFO_VARIABLE, ansible_environment, child_environment
from ansible_worker.run.events.event_fifo import EventFifo
from ansible_worker.run.process.launch import ExitRecord, Launch, ProcessStarter
from ansible_worker.run.process.output_tail import OutputTail
from ansible_worker.run.process.process_group import run_process_group, run_with_output
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

# Durations and dates that differ between any two runs.
TIMINGS = re.compile(r"\d+\.\d+s|\d{4}-\d\d-\d\d[ T][\d:.]+|\(\d+:\d\d:\d\d\.\d+\)")

PLAYBOOKS = [
    ("recap.yml", "inventory.ini"),
    ("stats.yml", "inventory.ini"),
    ("fail.yml", "inventory.ini"),
    ("options.yml", "inventory.ini"),
    ("broken.yml", "inventory.ini"),
    ("quick.yml", "one_host.ini"),
    ("sleep.yml", "nowhere.ini"),
]


async def run_once(
    playbook_dir: Path, playbook: str, inventory: str, start: ProcessStarter, run_dir: Path
) -> tuple[int, str, list[tuple[str, str | None]]]:
    """Exit code, stdout without timings, and (event, host) pairs of one run, warm or cold."""
    fifo = EventFifo(run_dir / "events.fifo")
    env = ansible_environment(child_environment(os.environ), fifo.path)
    tail = OutputTail(1 << 20)
    events: list[dict[str, Any]] = []
    # One fork: with more, hosts finish in any order, in a cold run as in a warm one.
    argv = [
        ANSIBLE_PLAYBOOK,
        f"--inventory={playbook_dir / inventory}",
        "--forks=1",
        "--",
        str(playbook_dir / playbook),
    ]
    try:
        with trio.fail_after(120):
            code = await run_with_output(
                Launch(tuple(argv), playbook_dir, env, kill_grace=3),
                tail=tail,
                record=ExitRecord(),
                side_reader=lambda exited: fifo.read_events(events.append, exited=exited),
                start=start,
            )
    finally:
        fifo.close()
    pairs = [(event["event"], event.get("host")) for event in events]
    return code, TIMINGS.sub("T", tail.text()), pairs


async def test_warm_runs_match_fresh_ansible_playbook(playbook_dir: Path, tmp_path: Path) -> None:
    metrics = WorkerMetrics()
    env = ansible_environment(child_environment(os.environ), tmp_path / "x.fifo")
    policy = WarmPolicy(size=2, max_forks=100, max_rss_kib=1 << 20, start_timeout=60)
    async with WarmPool(policy, metrics=metrics, late=(FIFO_VARIABLE,)).open() as pool:
        for index, (playbook, inventory) in enumerate(PLAYBOOKS):
            start = await pool.starter(Configuration(ANSIBLE_PLAYBOOK, playbook_dir, env))
            assert metrics.cold_starts == 0, "the job should have started warm"
            warm_dir, cold_dir = tmp_path / f"warm{index}", tmp_path / f"cold{index}"
            warm_dir.mkdir()
            cold_dir.mkdir()
            warm = await run_once(playbook_dir, playbook, inventory, start, warm_dir)
            cold = await run_once(playbook_dir, playbook, inventory, run_process_group, cold_dir)
            assert warm[0] == cold[0], playbook
            assert warm[1] == cold[1], playbook
            assert warm[2] == cold[2], playbook
            assert "PLAY RECAP" in warm[1] or warm[0] != 0
        assert metrics.warm_starts == len(PLAYBOOKS)
        assert metrics.warm_parents_started == 1


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


async def test_a_changed_file_of_the_parent_means_a_cold_start_then_a_new_parent(
    playbook_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("GREETING = 'first'\n")
    job = {"playbook": "quick.yml", "inventory": "inventory.ini"}
    with caplog.at_level(logging.INFO, logger="ansible_worker.run.warm.pool"):
        async with open_runs(playbook_dir, environment={"PYTHONPATH": str(site)}) as runs:
            assert (await runs.run({**job, "task_id": "before"}))["state"] == "success"
            # Imported by the parent when it started: what a cold run would import now is another file.
            (site / "sitecustomize.py").write_text("GREETING = 'second, and longer'\n")
            assert (await runs.run({**job, "task_id": "changed"}))["state"] == "success"
            assert (await runs.run({**job, "task_id": "after"}))["state"] == "success"
            assert (runs.metrics.warm_starts, runs.metrics.cold_starts) == (2, 1)
            assert runs.metrics.warm_parents_started == 2
    assert any(
        "cold start:" in record.getMessage() and "sitecustomize.py" in record.getMessage() for record in caplog.records
    )


@pytest.mark.parametrize(
    ("files", "environment", "reason"),
    [
        # The parent would hold the log file open for every job, as Display opens it at import.
        ({"ansible.cfg": "[defaults]\nlog_path = ./ansible.log\n"}, {}, "left open"),
        # What Python reports on its own start-up a fork cannot report again.
        ({}, {"PYTHONPROFILEIMPORTTIME": "1"}, "report on its own start-up"),
    ],
)
async def test_what_a_fork_cannot_hand_over_means_cold_starts_with_the_reason(
    playbook_dir: Path,
    caplog: pytest.LogCaptureFixture,
    files: dict[str, str],
    environment: dict[str, str],
    reason: str,
) -> None:
    for relative, text in files.items():
        (playbook_dir / relative).write_text(text)
    with caplog.at_level(logging.INFO, logger="ansible_worker.run.warm.pool"):
        async with open_runs(playbook_dir, environment=environment) as runs:
            final = await runs.run({"task_id": "refused", "playbook": "quick.yml", "inventory": "inventory.ini"})
            assert (runs.metrics.warm_starts, runs.metrics.cold_starts) == (0, 1)
            assert runs.metrics.warm_parents_lost == 0
    assert final["state"] == "success", final["error_message"]
    assert any("cold start:" in record.getMessage() and reason in record.getMessage() for record in caplog.records)
