"""`logs`, `jobs` and runner artifacts, as a person or a script runs them against real workers and Ansible."""

from __future__ import annotations

import json
import os
import re
import signal
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
        "module": None,
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
        "waiting_for": None,
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


async def test_logs_exits_with_the_jobs_state_and_status_and_jobs_with_0(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    sleeping = {"playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": 120}}
    async with (
        running_worker(make_settings(broker.port, playbook_dir, group, kill_grace=1, concurrency=2)),
        open_controller(broker, group) as controller,
        client_for(broker, group) as client,
    ):
        await controller.submit({"task_id": "logs-timeout", **sleeping, "timeout": 1})
        await controller.submit({"task_id": "logs-cancelled", **sleeping})
        await controller.wait_for("logs-cancelled", {"running"})
        await client.cancel("logs-cancelled")
        finals = {task_id: await controller.wait_terminal(task_id) for task_id in ("logs-timeout", "logs-cancelled")}
    assert finals["logs-timeout"]["state"] == "timeout"
    assert finals["logs-cancelled"]["state"] == "cancelled"
    # `logs` shows how the job ended, as `watch` does.
    assert (await cli(broker, group, "logs", "logs-timeout")).returncode == 3
    assert (await cli(broker, group, "logs", "logs-cancelled")).returncode == 4
    # `status` and `jobs` only look a job up: whatever its state, finding it is a success.
    status = await cli(broker, group, "status", "logs-timeout")
    assert status.returncode == 0, status.stderr.decode()
    assert status.stdout.decode().startswith("timeout")
    listed = await cli(broker, group, "jobs", "--state", "timeout,cancelled", "--json")
    assert listed.returncode == 0, listed.stderr.decode()
    assert sorted(json.loads(line)["task_id"] for line in listed.stdout.decode().splitlines()) == [
        "logs-cancelled",
        "logs-timeout",
    ]
    none_yet = await cli(broker, group, "jobs", "--state", "queued")
    assert none_yet.returncode == 0
    assert "no jobs of group" in none_yet.stdout.decode()


async def test_logs_status_and_jobs_exit_codes_when_they_cannot_answer(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    job = {"task_id": "logs-unrecorded", "playbook": "quick.yml", "inventory": "one_host.ini"}
    async with (
        running_worker(make_settings(broker.port, playbook_dir, group, publish_records=False)),
        open_controller(broker, group) as controller,
    ):
        await controller.submit(job)
        assert (await controller.wait_terminal("logs-unrecorded"))["state"] == "success"
    unrecorded = await cli(broker, group, "logs", "logs-unrecorded")
    assert unrecorded.returncode == 5
    assert "logs-unrecorded ended (success) but the broker holds no record of it" in unrecorded.stderr.decode()
    no_status = await cli(broker, group, "status", "never-ran")
    assert no_status.returncode == 5
    assert "the broker holds no status for never-ran" in no_status.stderr.decode()
    # An artifact directory that cannot be made: a file stands where its parent should be.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    await run_failing_job(broker, playbook_dir, group)
    unwritable = await cli(broker, group, "logs", "logs-fail", "--artifact-dir", str(blocker / "artifacts"))
    assert unwritable.returncode == 2
    assert f"cannot write the artifacts into {blocker / 'artifacts'}" in unwritable.stderr.decode()
    for args in (["status"], ["logs"], ["jobs", "--no-such-flag"]):
        bad = await cli(broker, group, *args)
        assert bad.returncode == 2, args
    for args in (["status", "x"], ["logs", "x"], ["jobs"]):
        with trio.fail_after(60):
            unreachable = await trio.run_process(
                [EXECUTABLE, *args, "--broker", "mqtt://127.0.0.1:1", "--group", group],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert unreachable.returncode == 5, args
        assert "broker 127.0.0.1:1: " in unreachable.stderr.decode()


# One short task after another: whenever `logs` starts following, a TASK line is still to come
# (it shows the lines printed from then on).
NAPS = "- name: Naps\n  hosts: host1\n  gather_facts: false\n  tasks:\n" + 150 * (
    "    - name: Sleep for a while\n      ansible.builtin.command: sleep 2\n"
)


async def test_ctrl_c_stops_following_logs_and_the_job_goes_on(broker: Broker, playbook_dir: Path, group: str) -> None:
    (playbook_dir / "naps.yml").write_text(NAPS)
    job = {"task_id": "logs-ctrl-c", "playbook": "naps.yml", "inventory": "one_host.ini"}
    command = [EXECUTABLE, "logs", "logs-ctrl-c", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--group", group]
    async with (
        running_worker(make_settings(broker.port, playbook_dir, group, kill_grace=1)),
        open_controller(broker, group) as controller,
        client_for(broker, group) as client,
    ):
        await controller.submit(job)
        await controller.wait_for("logs-ctrl-c", {"running"})
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout is not None
        assert process.stderr is not None
        shown = bytearray()
        with trio.fail_after(60):
            while b"TASK [Sleep for a while]" not in shown:
                chunk = await process.stdout.receive_some()
                assert chunk, bytes(shown)
                shown += chunk
            process.send_signal(signal.SIGINT)
            returncode = await process.wait()
            said = b""
            while chunk := await process.stderr.receive_some():
                said += chunk
        current = await client.status("logs-ctrl-c")
        await client.cancel("logs-ctrl-c")
        await controller.wait_terminal("logs-ctrl-c")
    assert returncode == 130, said.decode()
    assert "stopped following; logs-ctrl-c goes on (ansible-worker logs logs-ctrl-c)" in said.decode()
    assert current is not None
    assert current["state"] == "running"


@pytest.mark.parametrize("command", ["logs", "status", "jobs"])
def test_help_says_what_each_exit_code_means_for_the_command(command: str) -> None:
    shown = subprocess.run([EXECUTABLE, command, "--help"], capture_output=True, text=True, check=True, timeout=60)
    codes = shown.stdout[shown.stdout.index("exit codes:") :]
    assert command in codes.split("\n  1 ")[0], codes
    assert "logs: --artifact-dir cannot be written" in codes
    assert "(logs) no usable record of it: none kept,\n       unreadable, or naming another job" in codes
    assert "130  you stopped following a job with Ctrl-C; the job goes on" in codes
