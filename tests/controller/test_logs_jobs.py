"""`logs`, `jobs` and runner artifacts, as a person or a script runs them against real workers and Ansible."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.protocol.records import decode_record
from tests.conftest import ANSIBLE_PLAYBOOK, Broker, client_for, make_settings, open_controller, running_worker
from tests.worker.test_records import client_payload

EXECUTABLE = str(Path(sys.executable).parent / "ansible-worker")
FAILING: dict[str, Any] = {
    "task_id": "logs-fail",
    "playbook": "record_fail.yml",
    "inventory": "inventory.ini",
    "forks": 1,
}


async def cli(broker: Broker, group: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = [EXECUTABLE, *args, "--broker", f"mqtt://127.0.0.1:{broker.port}", "--group", group]
    with trio.fail_after(120):
        return await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)


async def run_failing_job(broker: Broker, playbook_dir: Path, group: str) -> dict[str, Any]:
    async with (
        running_worker(make_settings(broker.port, playbook_dir, group)),
        open_controller(broker, group) as controller,
    ):
        await controller.submit(FAILING)
        return await controller.wait_terminal(FAILING["task_id"], within=90)


def without_timings(text: str) -> list[str]:
    """Ansible's lines with what differs between two runs of the same playbook taken out."""
    text = re.sub(r"\d+\.\d+s", "<time>", text)
    return [line.rstrip() for line in text.splitlines() if line.strip()]


async def test_logs_of_a_finished_job_match_a_direct_run(broker: Broker, playbook_dir: Path, group: str) -> None:
    final = await run_failing_job(broker, playbook_dir, group)
    assert final["state"] == "failed"
    # The worker is gone: a new client reads what the broker kept.
    result = await cli(broker, group, "logs", "logs-fail")
    assert result.returncode == 1, result.stderr.decode()
    shown = result.stdout.decode()
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1"}
    with trio.fail_after(60):
        direct = await trio.run_process(
            [ANSIBLE_PLAYBOOK, "-i", "inventory.ini", "--forks=1", "record_fail.yml"],
            cwd=playbook_dir,
            env=env,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
    assert direct.returncode == 2
    assert "fatal: [host2]: FAILED!" in shown
    assert "TASK [Break on host2]" in shown
    assert without_timings(shown) == without_timings(direct.stdout.decode())


async def test_logs_events_and_watch_of_a_finished_job(broker: Broker, playbook_dir: Path, group: str) -> None:
    await run_failing_job(broker, playbook_dir, group)
    result = await cli(broker, group, "logs", "logs-fail", "--events")
    assert result.returncode == 1, result.stderr.decode()
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    failed = [event for event in events if event.get("status") == "failed"]
    assert [(event["host"], event["task"]) for event in failed] == [("host2", "Break on host2")]
    watched = await cli(broker, group, "watch", "logs-fail")
    text = watched.stdout.decode()
    assert watched.returncode == 1, watched.stderr.decode()
    # The record's output first, then the summary of how the job ended.
    assert text.index("fatal: [host2]: FAILED!") < text.index("PLAY RECAP") < text.index("failed  logs-fail")


async def test_logs_of_a_running_job_follow_it_live(broker: Broker, playbook_dir: Path, group: str) -> None:
    job = {"task_id": "logs-live", "playbook": "sleep.yml", "inventory": "inventory.ini", "extra_vars": {"seconds": 2}}
    async with (
        running_worker(make_settings(broker.port, playbook_dir, group)),
        open_controller(broker, group) as controller,
    ):
        await controller.submit(job)
        await controller.wait_for("logs-live", {"running"}, within=30)
        result = await cli(broker, group, "logs", "logs-live")
        final = await controller.wait_terminal("logs-live")
    assert final["state"] == "success"
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    assert "changed: [host1]" in text
    assert "PLAY RECAP" in text


async def test_logs_of_an_unknown_job_says_so(broker: Broker, group: str) -> None:
    result = await cli(broker, group, "logs", "never-ran")
    assert result.returncode == 5
    assert "no status and no record for never-ran" in result.stderr.decode()


def mixed_statuses(now: datetime) -> list[dict[str, Any]]:
    """Fifty retained statuses as workers leave them: every state, three playbooks, one a minute apart."""
    states = ["queued", "running", "success", "failed", "cancelled", "timeout"]
    playbooks = ["deploy/web.yml", "deploy/db.yml", "ping.yml"]
    statuses = []
    for number in range(50):
        created = now - timedelta(minutes=number)
        state = states[number % len(states)]
        terminal = state not in ("queued", "running")
        statuses.append(
            {
                "task_id": f"job-{number:02d}",
                "state": state,
                "created_at": created.isoformat().replace("+00:00", "Z"),
                "started_at": None if state == "queued" else created.isoformat().replace("+00:00", "Z"),
                "completed_at": (created + timedelta(seconds=number)).isoformat() if terminal else None,
                "duration_seconds": float(number) if state != "queued" else None,
                "playbook": playbooks[number % len(playbooks)],
                "worker_id": f"w{number % 4}",
                "tasks_ok": number,
                "tasks_failed": 1 if state == "failed" else 0,
            }
        )
    return statuses


async def test_jobs_lists_fifty_jobs_and_filters_them(broker: Broker, group: str) -> None:
    now = datetime.now(UTC)
    statuses = mixed_statuses(now)
    async with client_for(broker, group) as client:
        for status in statuses:
            await client.publish(
                client.topics.status(status["task_id"]), json.dumps(status).encode(), qos=1, retain=True
            )
        # Noise a worker never leaves: a bad payload and a cleared status are not jobs.
        await client.publish(client.topics.status("garbage"), b"{not json", qos=1, retain=True)
        listed = await client.jobs()
        assert [job["task_id"] for job in listed] == [f"job-{n:02d}" for n in range(50)]
    result = await cli(broker, group, "jobs", "--json")
    assert result.returncode == 0, result.stderr.decode()
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [row["task_id"] for row in rows] == [f"job-{n:02d}" for n in range(50)]
    by_id = {row["task_id"]: row for row in rows}
    assert by_id["job-03"] == {
        "task_id": "job-03",
        "state": "failed",
        "playbook": "deploy/web.yml",
        "worker_id": "w3",
        "created_at": statuses[3]["created_at"],
        "started_at": statuses[3]["started_at"],
        "duration_seconds": 3.0,
        "ok": 3,
        "changed": 0,
        "failed": 1,
        "skipped": 0,
        "unreachable": 0,
        "record_bytes": None,
    }

    async def ids(*args: str) -> list[str]:
        found = await cli(broker, group, "jobs", "--json", *args)
        assert found.returncode == 0, found.stderr.decode()
        return [json.loads(line)["task_id"] for line in found.stdout.decode().splitlines()]

    assert await ids("--state", "failed") == [f"job-{n:02d}" for n in range(50) if n % 6 == 3]
    assert await ids("--state", "queued,running") == [f"job-{n:02d}" for n in range(50) if n % 6 in (0, 1)]
    assert await ids("--playbook", "deploy/*") == [f"job-{n:02d}" for n in range(50) if n % 3 != 2]
    assert await ids("--playbook", "ping.yml", "--state", "success") == [
        f"job-{n:02d}" for n in range(50) if n % 3 == 2 and n % 6 == 2
    ]
    # Job 10 began ten minutes before the test's clock read, so just over ten before the command's.
    assert await ids("--since", "10m") == [f"job-{n:02d}" for n in range(10)]
    since = (now - timedelta(minutes=4, seconds=30)).isoformat()
    assert await ids("--since", since) == [f"job-{n:02d}" for n in range(5)]
    table = await cli(broker, group, "jobs", "--state", "timeout")
    lines = table.stdout.decode().splitlines()
    assert lines[0].split()[:3] == ["TASK", "ID", "STATE"]
    assert [line.split()[0] for line in lines[1:]] == [f"job-{n:02d}" for n in range(50) if n % 6 == 5]


@pytest.mark.parametrize(("args", "message"), [(["--state", "done"], "not a state"), (["--since", "soon"], "--since")])
async def test_jobs_refuses_bad_filters_by_name(broker: Broker, group: str, args: list[str], message: str) -> None:
    result = await cli(broker, group, "jobs", *args)
    assert result.returncode == 2
    assert message in result.stderr.decode()


async def test_artifact_dir_is_read_by_ansible_runner(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    from ansible_runner.config.runner import RunnerConfig
    from ansible_runner.runner import Runner

    await run_failing_job(broker, playbook_dir, group)
    artifacts = tmp_path / "artifacts"
    result = await cli(broker, group, "logs", "logs-fail", "--artifact-dir", str(artifacts))
    assert result.returncode == 1, result.stderr.decode()
    job_dir = artifacts / "logs-fail"
    assert (job_dir / "status").read_text() == "failed"
    assert (job_dir / "rc").read_text() == "2"
    assert "fatal: [host2]: FAILED!" in (job_dir / "stdout").read_text()
    names = sorted(path.name for path in (job_dir / "job_events").iterdir())
    assert all(re.fullmatch(r"\d+-[0-9a-f-]{36}\.json", name) for name in names)

    config = RunnerConfig(private_data_dir=str(tmp_path / "private"), artifact_dir=str(artifacts), ident="logs-fail")
    runner = Runner(config)
    events = list(runner.events)
    assert [event["counter"] for event in events] == list(range(1, len(events) + 1))
    for event in events:
        assert {"uuid", "counter", "event", "event_data", "stdout", "start_line", "end_line", "created"} <= set(event)
    by_uuid = {event["uuid"]: event for event in events}
    failed = [event for event in events if event["event"] == "runner_on_failed"]
    assert len(failed) == 1
    data = failed[0]["event_data"]
    assert (data["host"], data["task"], data["play"]) == (
        "host2",
        "Break on host2",
        "One host fails, the other goes on",
    )
    assert data["res"]["msg"] == "host2 broke on purpose"
    assert by_uuid[failed[0]["parent_uuid"]]["event"] == "playbook_on_task_start"
    assert failed[0]["stdout"].startswith("fatal: [host2]: FAILED!")
    assert runner.stats is not None
    assert runner.stats["failures"] == {"host2": 1}
    assert runner.stats["ok"] == {"host1": 2, "host2": 1}
    assert runner.stats["skipped"] == {"host1": 1}
    assert [event["event_data"]["task"] for event in runner.host_events("host1") if "task" in event["event_data"]][
        -1
    ] == "Carry on"
    with runner.stdout as stdout:
        assert "PLAY RECAP" in stdout.read()


async def test_a_record_that_names_another_job_is_refused_and_writes_nothing(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    await run_failing_job(broker, playbook_dir, group)
    async with client_for(broker, group) as client:
        topic = client.topics.record("logs-fail")
        # The job's own record, its status untouched, but saying at the top that it is another job's.
        document = decode_record(await client_payload(client, topic))
        forged = zlib.compress(json.dumps({**document, "task_id": "victim"}).encode())
        await client.publish(topic, forged, qos=1, retain=True)
    artifacts = tmp_path / "artifacts"
    result = await cli(broker, group, "logs", "logs-fail", "--artifact-dir", str(artifacts))
    assert result.returncode == 5, result.stderr.decode()
    assert f"error: {topic}: not a job record of logs-fail: its task ids disagree ('victim')" in result.stderr.decode()
    assert result.stdout == b""
    assert not artifacts.exists()


async def test_submit_wait_writes_artifacts(broker: Broker, playbook_dir: Path, group: str, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    async with running_worker(make_settings(broker.port, playbook_dir, group)):
        result = await cli(
            broker, group, "submit", "quick.yml", "-i", "one_host.ini", "--task-id", "art-quick", "--wait",
            "--artifact-dir", str(artifacts),
        )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert (artifacts / "art-quick" / "status").read_text() == "successful"
    assert (artifacts / "art-quick" / "rc").read_text() == "0"
    assert any(path.name.startswith("1-") for path in (artifacts / "art-quick" / "job_events").iterdir())
