"""The `ansible-worker` command as an operator runs it: validate, version, run, and signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from ansible_worker import __version__
from tests.conftest import (
    ANSIBLE_PLAYBOOK,
    REPO,
    Broker,
    open_controller,
    processes_mentioning,
    unique_seconds,
    worker_process,
)
from tests.deployment import Deployment, lane

EXECUTABLE = str(Path(sys.executable).parent / "ansible-worker")


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def good_config(tmp_path: Path, port: int, playbook_dir: Path, group: str = "cli", extra: str = "") -> Path:
    return write_config(
        tmp_path / "config.yaml",
        f"""\
mqtt:
  host: 127.0.0.1
  port: {port}
  username: operator
  password: ${{BROKER_PASSWORD:-s3cret-value}}
worker:
  group_name: {group}
  playbook_directory: {playbook_dir}
  ansible_playbook_path: {ANSIBLE_PLAYBOOK}
  kill_grace: 3
  drain_timeout: 1
{extra}""",
    )


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXECUTABLE, *args], capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}, timeout=60
    )


def test_validate_prints_summary_with_secrets_masked(tmp_path: Path, playbook_dir: Path) -> None:
    config = good_config(tmp_path, 1883, playbook_dir)
    for args in (["validate", "-c", str(config)], ["--validate", "-c", str(config)], ["-c", str(config), "validate"]):
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"configuration OK ({config})")
        assert "127.0.0.1:1883" in result.stdout
        assert "password (set, hidden)" in result.stdout
        assert "s3cret-value" not in result.stdout + result.stderr
        assert "$share/ansible-worker-cli/ansible/cli/tasks" in result.stdout


def test_environment_overrides_the_file(tmp_path: Path, playbook_dir: Path) -> None:
    config = good_config(tmp_path, 1883, playbook_dir)
    result = cli(
        "validate",
        "-c",
        str(config),
        env={"ANSIBLE_WORKER_MQTT__PORT": "2883", "ANSIBLE_WORKER_WORKER__CONCURRENCY": "4"},
    )
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1:2883" in result.stdout
    assert "capacity      4 at once" in result.stdout


def test_validate_shows_the_special_vars_allowlist(tmp_path: Path, playbook_dir: Path) -> None:
    config = good_config(tmp_path, 1883, playbook_dir)
    result = cli("validate", "-c", str(config))
    assert "extra_vars    no connection, interpreter, become or magic variables" in result.stdout
    result = cli("validate", "-c", str(config), env={"ANSIBLE_WORKER_WORKER__ALLOWED_SPECIAL_VARS": '["ansible_user"]'})
    assert result.returncode == 0, result.stderr
    assert "extra_vars    may set ansible_user (worker.allowed_special_vars)" in result.stdout


def test_example_config_is_valid(playbook_dir: Path) -> None:
    example = REPO / "config.example.yaml"
    env = {"ANSIBLE_WORKER_WORKER__PLAYBOOK_DIRECTORY": str(playbook_dir), "MQTT_PASSWORD": ""}
    result = cli("validate", "-c", str(example), env=env)
    assert result.returncode == 0, result.stderr
    assert "credentials   user (none)  password (none)" in result.stdout
    assert f"playbooks     {playbook_dir}" in result.stdout


def test_config_mistakes_name_the_key_and_problem(tmp_path: Path, playbook_dir: Path) -> None:
    config = write_config(
        tmp_path / "bad.yaml",
        f"""\
mqtt:
  host: 127.0.0.1
  port: seventy
  pasword: typo
worker:
  group_name: has/slash
  playbook_directory: {playbook_dir / "missing"}
  concurrency: 0
log_level: LOUD
""",
    )
    result = cli("validate", "-c", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "configuration error:"
    assert "  mqtt.port: Input should be a valid integer, unable to parse string as an integer (got 'seventy')" in lines
    assert "  mqtt.pasword: unknown key" in lines
    assert any(line.startswith("  worker.group_name: String should match pattern") for line in lines)
    assert f"  worker.playbook_directory: not a directory: {playbook_dir / 'missing'}" in lines
    assert "  worker.concurrency: Input should be greater than or equal to 1 (got 0)" in lines
    assert any(line.startswith("  log_level: Input should be 'DEBUG'") for line in lines)


def test_unset_variable_is_named(tmp_path: Path, playbook_dir: Path) -> None:
    config = good_config(tmp_path, 1883, playbook_dir).read_text().replace("127.0.0.1", "${BROKER_HOST_UNSET}")
    path = write_config(tmp_path / "unset.yaml", config)
    env = {key: value for key, value in os.environ.items() if key != "BROKER_HOST_UNSET"}
    result = subprocess.run(
        [EXECUTABLE, "validate", "-c", str(path)], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 2
    assert "mqtt.host: environment variable BROKER_HOST_UNSET is not set" in result.stderr


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    result = cli("validate", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory" in result.stderr
    broken = write_config(tmp_path / "broken.yaml", "mqtt: [unclosed\n")
    result = cli("validate", "-c", str(broken))
    assert result.returncode == 2
    assert f"{broken}: line 2, column 1: invalid YAML" in result.stderr


def test_version_from_the_command_and_the_module() -> None:
    assert cli("--version").stdout.strip() == f"ansible-worker {__version__}"
    module = subprocess.run(
        [sys.executable, "-m", "ansible_worker", "--version"], capture_output=True, text=True, check=True
    )
    assert module.stdout.strip() == f"ansible-worker {__version__}"


@lane
async def test_sigterm_cancels_running_and_queued_jobs_and_exits_zero(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    config = good_config(tmp_path, broker.port, playbook_dir, group)
    seconds = unique_seconds(293)
    sleeper = {"playbook": "sleep.yml", "inventory": "one_host.ini", "extra_vars": {"seconds": seconds}}
    async with open_controller(broker, group) as controller, deployment.process("run", "-c", str(config)) as worker:
        await worker.wait_for_line("connected to broker")
        await controller.submit({"task_id": "sig-running", **sleeper})
        await controller.wait_for("sig-running", {"running"})
        await controller.submit({"task_id": "sig-queued", **sleeper})
        await controller.wait_for("sig-queued", {"queued"})
        # Wait until Ansible really runs the command, so the signal reaches a live group.
        # Another process appearing offers no event to wait on, hence the bounded poll.
        with trio.fail_after(30):
            while not processes_mentioning(f"sleep {seconds}"):  # noqa: ASYNC110
                await trio.sleep(0.05)
        worker.process.send_signal(signal.SIGTERM)
        with trio.fail_after(1 + 3 + 10):
            returncode = await worker.process.wait()
        running = await controller.wait_terminal("sig-running")
        queued = await controller.wait_terminal("sig-queued")
        assert processes_mentioning(f"sleep {seconds}") == []
        assert processes_mentioning(str(playbook_dir)) == []
    assert returncode == 0
    assert running["state"] == "cancelled"
    assert running["error_message"] == "cancelled: worker shutting down"
    assert running["return_code"] is not None
    assert running["return_code"] != 0
    # No other worker is online to take it: it is cancelled, with the reason.
    assert queued["state"] == "cancelled"
    assert queued["error_message"] == "cancelled: the worker shut down before the job started"
    assert [status["state"] for status in controller.statuses["sig-queued"]] == ["queued", "cancelled"]
    assert any("worker" in line and "stopped" in line for line in worker.lines)


@pytest.mark.parametrize("command", [[], ["run"]])
async def test_plain_command_runs_and_sigint_stops_it(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, command: list[str]
) -> None:
    config = good_config(tmp_path, broker.port, playbook_dir, group)
    async with open_controller(broker, group) as controller, worker_process(*command, "-c", str(config)) as worker:
        await worker.wait_for_line("connected to broker")
        await controller.submit({"task_id": "plain", "playbook": "quick.yml", "inventory": "one_host.ini"})
        final = await controller.wait_terminal("plain")
        worker.process.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            assert await worker.process.wait() == 0
    assert final["state"] == "success"
    assert all("s3cret-value" not in line for line in worker.lines)
