"""The controller commands as a person or a script runs them, against real workers and Ansible."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.controller.arguments import ArgumentError, parse_extra_vars, split_list
from ansible_worker.protocol.signing import generate_key_pair
from tests.conftest import Broker, client_for, make_settings, processes_mentioning, running_worker

EXECUTABLE = str(Path(sys.executable).parent / "ansible-worker")


async def cli(broker: Broker, group: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = [EXECUTABLE, *args, "--broker", f"mqtt://127.0.0.1:{broker.port}", "--group", group]
    with trio.fail_after(120):
        return await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)


def json_lines(result: subprocess.CompletedProcess[bytes], what: str) -> list[dict[str, Any]]:
    """Every line of stdout as the JSON object it must be on its own (what a JSON-lines reader does)."""
    text = result.stdout.decode()
    assert text == "" or text.endswith("\n"), f"{what}: the last line is not ended: {text[-200:]!r}"
    objects = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{what}: stdout line {number} is not JSON on its own: {line!r}\n{text}") from None
        assert isinstance(value, dict), f"{what}: stdout line {number} is not a JSON object: {line!r}"
        objects.append(value)
    return objects


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
    lines = json_lines(watched, "watch --json")
    assert lines[0]["type"] == "status"
    assert lines[-1]["data"]["state"] == "success"
    assert json.loads(status.stdout)["state"] == "success"
    assert forgot.returncode == 0
    assert forgot.stdout.decode().strip() == "forgot cli-j"
    assert after.returncode == 5
    assert "the broker holds no status for cli-j" in after.stderr.decode()


async def watch_before_the_job_then_submit_it(
    broker: Broker, group: str, base: list[str]
) -> tuple[subprocess.CompletedProcess[bytes], subprocess.CompletedProcess[bytes]]:
    """`watch --json` of `json-wait` before it exists, until it says so; then `submit --wait --json` of it; both."""
    async with trio.open_nursery() as nursery:
        # `watch` of a job that does not exist yet: it says so while it waits, then follows it.
        early_watch = await trio.lowlevel.open_process(
            [base[0], "watch", "json-wait", "--json", *base[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        seen = {"stdout": bytearray(), "stderr": bytearray()}
        arrived = trio.Event()

        async def read(name: str, stream: trio.abc.ReceiveStream) -> None:
            async for chunk in stream:
                seen[name] += chunk
                arrived.set()

        assert early_watch.stdout is not None
        assert early_watch.stderr is not None
        nursery.start_soon(read, "stdout", early_watch.stdout)
        nursery.start_soon(read, "stderr", early_watch.stderr)
        with trio.fail_after(60):
            while b"no status yet" not in seen["stdout"] + seen["stderr"]:
                await arrived.wait()
                arrived = trio.Event()
        submitted = await cli(
            broker, group, "submit", "options.yml", "-i", "one_host.ini", "-e", '{"greeting": ":thumbs_up: [red]x"}',
            "--task-id", "json-wait", "--wait", "--json",
        )  # fmt: skip
        with trio.fail_after(60):
            returncode = await early_watch.wait()
    watched = subprocess.CompletedProcess(early_watch.args, returncode, bytes(seen["stdout"]), bytes(seen["stderr"]))
    return watched, submitted


async def test_every_json_output_is_json_lines(broker: Broker, playbook_dir: Path, group: str) -> None:
    """Each command with --json, as a script reads it: every stdout line is one JSON object, nothing else."""
    base = [EXECUTABLE, "--broker", f"mqtt://127.0.0.1:{broker.port}", "--group", group]
    outputs: dict[str, subprocess.CompletedProcess[bytes]] = {}
    async with (
        running_worker(make_settings(broker.port, playbook_dir, group, worker_id="lines-1")),
        running_worker(make_settings(broker.port, playbook_dir, group, worker_id="lines-2")),
    ):
        watched, submitted = await watch_before_the_job_then_submit_it(broker, group, base)
        outputs["submit --wait --json"] = submitted
        outputs["watch --json (before the job)"] = watched
        outputs["submit --json"] = await cli(
            broker, group, "submit", "quick.yml", "-i", "one_host.ini", "--task-id", "json-queued", "--json"
        )
        outputs["watch --json"] = await cli(broker, group, "watch", "json-queued", "--json")
        outputs["watch --json (finished)"] = await cli(broker, group, "watch", "json-wait", "--json")
        outputs["status --json"] = await cli(broker, group, "status", "json-wait", "--json")
        outputs["workers --json"] = await cli(broker, group, "workers", "--json")
    parsed = {what: json_lines(result, what) for what, result in outputs.items()}
    for what, result in outputs.items():
        assert result.returncode == 0, f"{what}: {result.stderr.decode()}"
        assert parsed[what], f"{what}: printed nothing"
    for what in ("submit --wait --json", "watch --json (before the job)", "watch --json", "watch --json (finished)"):
        lines = parsed[what]
        assert {line["type"] for line in lines} <= {"status", "event"}, what
        assert lines[-1]["type"] == "status", what
        assert lines[-1]["data"]["state"] == "success", what
        assert [line for line in lines if line["data"].get("state") == "success"] == [lines[-1]], what
    final = parsed["submit --wait --json"][-1]["data"]
    # The values arrive as Ansible produced them: no emoji, no markup, no wrapping.
    assert final["output"]["greeting"] == ":thumbs_up: [red]x"
    assert any(line["type"] == "event" for line in parsed["submit --wait --json"])
    assert parsed["watch --json (before the job)"][-1]["data"] == final
    assert b"no status yet for json-wait" in outputs["watch --json (before the job)"].stderr
    [queued] = parsed["submit --json"]
    assert queued["state"] == "queued"
    assert queued["task_id"] == "json-queued"
    [current] = parsed["status --json"]
    assert current == final
    assert sorted(worker["worker_id"] for worker in parsed["workers --json"]) == ["lines-1", "lines-2"]


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
    assert [worker["worker_id"] for worker in json_lines(as_json, "workers --json")] == ["listed"]


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


@pytest.mark.parametrize("command", [["status"], ["watch"], ["cancel"], ["forget"], ["logs"], ["submit", "a.yml"]])
async def test_a_task_id_that_is_not_one_is_a_usage_error(group: str, command: list[str]) -> None:
    # The broker is never asked: a wildcard in a task_id would name other jobs' topics.
    where = ["--broker", "mqtt://127.0.0.1:1", "--group", group]
    for bad in ("#", "a+b", "x" * 129):
        args = [*command, "-i", "h,", "--task-id", bad] if command[0] == "submit" else [*command, bad]
        with trio.fail_after(60):
            result = await trio.run_process([EXECUTABLE, *args, *where], capture_stderr=True, check=False)
        assert result.returncode == 2, (args, result.stderr.decode())
        assert "not a task_id: " in result.stderr.decode()


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
    assert [worker["worker_id"] for worker in json_lines(result, "workers --json")] == ["from-config"]


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


def test_json_lines_are_strict_json_even_for_nan_and_infinity() -> None:
    import io

    from rich.console import Console

    from ansible_worker.controller.terminal import print_json_line

    out = io.StringIO()
    print_json_line(Console(file=out), {"a": float("nan"), "b": [1.5, float("-inf")], "c": {"d": float("inf")}})
    (line,) = out.getvalue().splitlines()
    assert line == '{"a":null,"b":[1.5,null],"c":{"d":null}}'
    json.loads(line, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))


async def test_submit_names_a_value_that_cannot_be_signed(broker: Broker, group: str, tmp_path: Path) -> None:
    """A number with no canonical form is a bad argument, said before anything is published."""
    generate_key_pair(tmp_path / "ci.key", tmp_path / "ci.pub")
    result = await cli(
        broker, group, "submit", "quick.yml", "-i", "one_host.ini", "--signing-key", str(tmp_path / "ci.key"),
        "-e", '{"build": 1e16}',
    )  # fmt: skip
    assert result.returncode == 2, result.stderr.decode()
    assert result.stderr.decode() == (
        "error: cannot sign the job: the message has no canonical JSON form (RFC 8785): 10000000000000000 exceeds"
        " safe integer domain for JSON floats\n"
    )
