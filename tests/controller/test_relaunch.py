"""`ansible-worker relaunch`: a finished job's request published again from its record, on every host or only on those that failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_worker.controller.relaunch import RelaunchError, failed_hosts, relaunch_request
from tests.conftest import Broker, client_for, make_settings, running_worker
from tests.controller.test_controller_cli import cli, json_lines
from tests.run.test_retry import FLAKY


async def test_relaunch_failed_runs_only_the_host_that_failed(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    (playbook_dir / "flaky.yml").write_text(FLAKY)
    logs = tmp_path / "logs"
    logs.mkdir()
    async with running_worker(make_settings(broker.port, playbook_dir, group)):
        first = await cli(
            broker, group, "submit", "flaky.yml", "-i", "inventory.ini", "-e", f"log_dir={logs}",
            "--task-id", "flaky-1", "--wait",
        )  # fmt: skip
        again = await cli(broker, group, "relaunch", "flaky-1", "--failed", "--task-id", "flaky-2", "--wait", "--json")
        whole = await cli(broker, group, "relaunch", "flaky-2", "--task-id", "flaky-3", "--wait")
        async with client_for(broker, group) as client:
            record = await client.record("flaky-2")
    assert first.returncode == 1, first.stderr.decode()
    assert again.returncode == 0, again.stderr.decode()
    final = json_lines(again, "relaunch --json")[-1]["data"]
    assert (final["task_id"], final["state"], final["tasks_total"]) == ("flaky-2", "success", 2)
    assert record is not None
    assert record["request"]["limit"] == "host2"
    assert record["request"]["extra_vars"] == {"log_dir": str(logs)}
    # The relaunch of a relaunch is the same request again: host2 alone, as flaky-2 ran.
    assert whole.returncode == 0, whole.stderr.decode()
    assert b"relaunching flaky-2 as flaky-3" in whole.stdout
    assert (logs / "runs.log").read_text().split() in (
        ["host1", "host2", "host2", "host2"],
        ["host2", "host1", "host2", "host2"],
    )


async def test_relaunch_of_a_job_without_a_record_says_so(broker: Broker, group: str) -> None:
    result = await cli(broker, group, "relaunch", "never-ran")
    assert result.returncode == 5
    assert b"never-ran left no record to relaunch it from" in result.stderr


def test_failed_hosts_come_from_the_attempts_else_the_recap() -> None:
    recap = {"event": "playbook_on_stats", "hosts": {"a": {"failures": 1}, "b": {"unreachable": 2}, "c": {"ok": 3}}}
    assert failed_hosts({"status": {}, "events": [recap]}) == ["a", "b"]
    attempts = [
        {"hosts": ["a", "b"], "failed": ["a"], "unreachable": ["b"]},
        {"hosts": ["b"], "failed": [], "unreachable": []},
    ]
    assert failed_hosts({"status": {"attempts": attempts}, "events": [recap]}) == ["a"]
    with pytest.raises(RelaunchError, match="no recap"):
        failed_hosts({"status": {}, "events": []})


def test_a_relaunch_leaves_the_signature_behind_and_needs_a_failed_host() -> None:
    original = {
        "task_id": "t",
        "playbook": "p.yml",
        "inventory": "i",
        "limit": "web",
        "issued_at": "x",
        "signature": {},
    }
    job = relaunch_request(original, only_hosts=["web2"])
    assert job["task_id"] != "t"
    assert "signature" not in job
    assert "issued_at" not in job
    assert {**job, "task_id": "t"} == {"task_id": "t", "playbook": "p.yml", "inventory": "i", "limit": "web2"}
    with pytest.raises(RelaunchError, match="no host failed"):
        relaunch_request(original, only_hosts=[])
