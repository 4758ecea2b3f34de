"""The controller commands as a person or a script runs them, against real workers and Ansible."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from ansible_worker.job_arguments import ArgumentError, parse_extra_vars, split_list
from tests.conftest import Broker, client_for, make_settings, processes_mentioning, running_worker

EXECUTABLE = str(Path(sys.executable).parent / "ansible-worker")


async def cli(broker: Broker, group: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = [EXECUTABLE, *args, "--broker", f"mqtt://127.0.0.1:{broker.port}", "--group", group]
    with trio.fail_after(120):
        return await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)


@pytest.mark.parametrize(
    ("playbook", "extra", "code", "state"),
    [
        ("quick.yml", [], 0, "success"),
        ("fail.yml", [], 1, "failed"),
        ("sleep.yml", ["--timeout", "1"], 3, "timeout"),
        ("missing.yml", [], 1, "failed"),
    ],
)
async def test_submit_wait_exit_codes(
    broker: Broker, playbook_dir: Path, group: str, playbook: str, extra: list[str], code: int, state: str
) -> None:
    async with running_worker(make_settings(broker.port, playbook_dir, group, kill_grace=1)):
        result = await cli(broker, group, "submit", playbook, "-i", "one_host.ini", "--wait", *extra)
    output = result.stdout.decode()
    assert result.returncode == code, result.stderr.decode()
    assert output.splitlines()[-3].startswith(state) or f"\n{state}  " in output


async def test_submit_wait_shows_ansibles_lines_and_summary(broker: Broker, playbook_dir: Path, group: str) -> None:
    async with running_worker(make_settings(broker.port, playbook_dir, group)):
        result = await cli(
            broker, group, "submit", "options.yml", "-i", "inventory.ini", "-l", "host1", "-t", "red",
            "-e", "greeting='hi there'", "-e", '{"nested": {"a": 1}}', "-C", "-D", "-vv", "-f", "3",
            "--task-id", "cli-opts", "--wait",
        )  # fmt: skip
    output = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "cli-opts queued by worker" in output
    assert "TASK [Tagged red]" in output
    assert "TASK [Tagged blue]" not in output
    assert "PLAY RECAP" in output
    assert "success  cli-opts  options.yml" in output
    assert '"greeting": "hi there"' in output
    assert '"nested": {"a": 1}' in output
    assert '"check_mode": true' in output
    assert '"verbosity": 2' in output
    assert '"forks": 3' in output


async def test_submit_json_and_status_watch_forget(broker: Broker, playbook_dir: Path, group: str) -> None:
    async with running_worker(make_settings(broker.port, playbook_dir, group)):
        submitted = await cli(
            broker, group, "submit", "quick.yml", "-i", "one_host.ini", "--task-id", "cli-j", "--json"
        )
        assert submitted.returncode == 0, submitted.stderr.decode()
        assert json.loads(submitted.stdout)["state"] == "queued"
        watched = await cli(broker, group, "watch", "cli-j", "--json")
        status = await cli(broker, group, "status", "cli-j", "--json")
        forgot = await cli(broker, group, "forget", "cli-j")
        after = await cli(broker, group, "status", "cli-j")
    assert watched.returncode == 0
    lines = watched.stdout.decode().strip().splitlines()
    assert json.loads(lines[0])["type"] == "status"
    final = json.loads("".join(line for line in lines if not line.startswith('{"type"')))
    assert final["state"] == "success"
    assert json.loads(status.stdout)["state"] == "success"
    assert forgot.returncode == 0
    assert forgot.stdout.decode().strip() == "forgot cli-j"
    assert after.returncode == 5
    assert "the broker holds no status for cli-j" in after.stderr.decode()


async def test_cancel_command_waits_for_the_worker(broker: Broker, playbook_dir: Path, group: str) -> None:
    job = {
        "task_id": "cli-cancel",
        "playbook": "sleep.yml",
        "inventory": "one_host.ini",
        "extra_vars": {"seconds": 301},
    }
    async with running_worker(make_settings(broker.port, playbook_dir, group)):
        async with client_for(broker, group) as client:
            handle = await client.submit(job)
            async for status in handle.statuses():
                if status["state"] == "running":
                    break
        result = await cli(broker, group, "cancel", "cli-cancel", "--reason", "not today")
        unknown = await cli(broker, group, "cancel", "no-such-job")
        assert processes_mentioning("sleep 301") == []
    assert result.returncode == 0, result.stderr.decode()
    assert "cancelled  cli-cancel" in result.stdout.decode()
    assert "not today" in result.stdout.decode()
    assert unknown.returncode == 5


async def test_workers_command(broker: Broker, playbook_dir: Path, group: str) -> None:
    async with running_worker(make_settings(broker.port, playbook_dir, group, worker_id="listed", concurrency=3)):
        table = await cli(broker, group, "workers")
        as_json = await cli(broker, group, "workers", "--json")
    assert table.returncode == 0
    header, row = table.stdout.decode().strip().splitlines()
    assert header.split() == ["WORKER", "HOST", "STATE", "CAPACITY", "RUNNING", "QUEUED", "DONE", "HEARTBEAT"]
    assert row.split()[0] == "listed"
    assert row.split()[2] == "online"
    assert row.split()[3] == "3"
    assert [worker["worker_id"] for worker in json.loads(as_json.stdout)] == ["listed"]


async def test_submit_with_no_worker_exits_5(broker: Broker, group: str) -> None:
    result = await cli(broker, group, "submit", "quick.yml", "-i", "one_host.ini", "--answer-within", "1")
    assert result.returncode == 5
    assert f"no worker of group '{group}' answered within 1s" in result.stderr.decode()


async def test_bad_arguments_and_unreachable_broker(group: str, tmp_path: Path) -> None:
    bad_vars = await trio.run_process(
        [EXECUTABLE, "submit", "x.yml", "-i", "h,", "-e", "novalue", "--broker", "mqtt://127.0.0.1:1"],
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    assert bad_vars.returncode == 2
    assert "expected KEY=VALUE, @FILE or a JSON object, got 'novalue'" in bad_vars.stderr.decode()
    unreachable = await trio.run_process(
        [EXECUTABLE, "workers", "--broker", "mqtt://127.0.0.1:1", "--group", group],
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    assert unreachable.returncode == 5
    assert "broker 127.0.0.1:1: " in unreachable.stderr.decode()
    no_broker = await trio.run_process(
        [EXECUTABLE, "workers", "-c", str(tmp_path / "none.yaml")], capture_stderr=True, check=False
    )
    assert no_broker.returncode == 2
    assert "no usable broker settings" in no_broker.stderr.decode()


async def test_controller_reads_the_workers_config_file(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}}}\n"
        f"worker: {{group_name: {group}, playbook_directory: /nonexistent/on/the/controller}}\n"
    )
    async with running_worker(make_settings(broker.port, playbook_dir, group, worker_id="from-config")):
        result = await trio.run_process([EXECUTABLE, "workers", "--json", "-c", str(config)], capture_stdout=True)
    assert [worker["worker_id"] for worker in json.loads(result.stdout)] == ["from-config"]


async def _read_until(master: trio.lowlevel.FdStream, text: bytes, seen: bytearray) -> None:
    with trio.fail_after(60):
        while text not in seen:
            chunk = await master.receive_some(4096)
            if not chunk:
                raise AssertionError(f"terminal closed before {text!r}: {bytes(seen)[-500:]!r}")
            seen += chunk


@pytest.mark.parametrize(("answer", "code", "state"), [(b"y\n", 4, "cancelled"), (b"n\n", 130, "running")])
async def test_ctrl_c_while_waiting_asks_whether_to_cancel(
    broker: Broker, playbook_dir: Path, group: str, answer: bytes, code: int, state: str
) -> None:
    master_fd, terminal_fd = pty.openpty()
    command = [
        EXECUTABLE, "submit", "sleep.yml", "-i", "one_host.ini", "-e", "seconds=299", "--task-id", "ctrl-c",
        "--wait", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--group", group,
    ]  # fmt: skip
    settings = make_settings(broker.port, playbook_dir, group, kill_grace=1)
    async with running_worker(settings):
        process = await trio.lowlevel.open_process(
            command, stdin=terminal_fd, stdout=terminal_fd, stderr=terminal_fd, start_new_session=True
        )
        os.close(terminal_fd)
        seen = bytearray()
        async with trio.lowlevel.FdStream(master_fd) as master:
            await _read_until(master, b"TASK [Sleep for a while]", seen)
            process.send_signal(signal.SIGINT)
            await _read_until(master, b"Cancel job ctrl-c too? [y/N]", seen)
            await master.send_all(answer)
            with trio.fail_after(60):
                # Read everything the command prints until it closes its terminal (EIO on Linux).
                try:
                    while chunk := await master.receive_some(4096):
                        seen += chunk
                except trio.BrokenResourceError:
                    pass
                returncode = await process.wait()
        async with client_for(broker, group) as client:
            current = await client.status("ctrl-c")
            if current is not None and current["state"] == "running":
                await client.cancel("ctrl-c")
    assert returncode == code, bytes(seen)[-800:]
    assert current is not None
    assert current["state"] == state
    if state == "running":
        assert b"stopped watching; ctrl-c goes on" in seen


def test_extra_vars_parsing(tmp_path: Path) -> None:
    vars_file = tmp_path / "vars.yml"
    vars_file.write_text("region: eu\nreplicas: 3\n")
    parsed = parse_extra_vars(["a=1 b='two words'", f"@{vars_file}", '{"a": 5, "list": [1]}', "{c: yaml}"])
    assert parsed == {"a": 5, "b": "two words", "region": "eu", "replicas": 3, "list": [1], "c": "yaml"}
    for bad, message in [
        ("justaword", "expected KEY=VALUE"),
        (f"@{tmp_path / 'missing.yml'}", "cannot read"),
        ("[1, 2]", "expected KEY=VALUE"),
        ("{not: [valid", "not a JSON or YAML object"),
    ]:
        with pytest.raises(ArgumentError, match=message):
            parse_extra_vars([bad])
    assert split_list(["a,b", " c ", ""]) == ["a", "b", "c"]
