"""`templates`, `schedules` and `launch` as a person or a script runs them, against a real worker and Ansible."""

from __future__ import annotations

import json
import os
import pty
from pathlib import Path

import trio
import yaml

from tests.conftest import Broker, make_settings, running_worker
from tests.controller.test_controller_cli import EXECUTABLE, cli, json_lines
from tests.templates.test_launch import TEMPLATES


def with_schedule(playbook_dir: Path) -> str:
    templates = json.loads(json.dumps(TEMPLATES))
    templates["templates"]["greet"]["schedule"] = [
        {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "extra_vars": {"greeting": "scheduled hello"}}
    ]
    (playbook_dir / "templates.yml").write_text(yaml.safe_dump(templates))
    return "templates.yml"


async def test_templates_and_schedules_list_the_catalogue(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group, templates=with_schedule(playbook_dir))
    async with running_worker(settings):
        listed = await cli(broker, group, "templates")
        as_json = await cli(broker, group, "templates", "--json")
        schedules = await cli(broker, group, "schedules", "--json")
    assert listed.returncode == 0, listed.stderr.decode()
    assert "greet" in listed.stdout.decode()
    assert "greeting*:secret" in listed.stdout.decode()
    (greet,) = json_lines(as_json, "templates --json")
    assert greet["name"] == "greet"
    assert greet["survey"]["count"] == {"type": "integer", "required": False, "default": 2, "min": 1.0, "max": 3.0}
    (entry,) = json_lines(schedules, "schedules --json")
    assert entry["template"] == "greet"
    assert entry["cron"] == "30 2 * * *"
    assert len(entry["next_runs"]) == 5
    # A schedule's answers stay in the file: the catalogue shows when, not what.
    assert "scheduled hello" not in schedules.stdout.decode()


async def test_no_catalogue_is_said_plainly(broker: Broker, playbook_dir: Path, group: str) -> None:
    async with running_worker(make_settings(broker.port, playbook_dir, group)):
        result = await cli(broker, group, "templates")
    assert result.returncode == 5
    assert "has published templates" in result.stderr.decode()


async def test_launch_checks_answers_first_then_runs(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group, templates=with_schedule(playbook_dir))
    async with running_worker(settings):
        ran = await cli(broker, group, "launch", "greet", "-e", "greeting=hello-there", "-e", "count=3", "--wait")
        wrong = await cli(broker, group, "launch", "greet", "-e", "greeting=hello-there", "-e", "count=9")
        typo = await cli(broker, group, "launch", "greet", "-e", "greting=hello-there")
        # No terminal to ask on: a missing required answer is an error, not a question.
        missing = await cli(broker, group, "launch", "greet", "--json")
    assert ran.returncode == 0, ran.stderr.decode()
    assert "success" in ran.stdout.decode()
    assert "hello-there" not in ran.stdout.decode()
    assert (wrong.returncode, wrong.stderr.decode().strip()) == (2, "error: -e count: must be at most 3 (max)")
    assert "greting: not a survey variable of template 'greet'" in typo.stderr.decode()
    assert missing.returncode == 2
    assert "missing required answers: greeting" in missing.stderr.decode()


async def test_launch_asks_for_a_missing_secret_without_echo(broker: Broker, playbook_dir: Path, group: str) -> None:
    master_fd, terminal_fd = pty.openpty()
    command = [
        EXECUTABLE, "launch", "greet", "--task-id", "asked", "--wait",
        "--broker", f"mqtt://127.0.0.1:{broker.port}", "--group", group,
    ]  # fmt: skip
    settings = make_settings(broker.port, playbook_dir, group, templates=with_schedule(playbook_dir))
    async with running_worker(settings):
        process = await trio.lowlevel.open_process(
            command, stdin=terminal_fd, stdout=terminal_fd, stderr=terminal_fd, start_new_session=True
        )
        os.close(terminal_fd)
        seen = bytearray()
        async with trio.lowlevel.FdStream(master_fd) as master:
            with trio.fail_after(60):
                while b"greeting (secret): " not in seen:
                    seen += await master.receive_some(4096)
                await master.send_all(b"typed-secret\n")
                try:
                    while chunk := await master.receive_some(4096):
                        seen += chunk
                except trio.BrokenResourceError:
                    pass
                returncode = await process.wait()
    text = bytes(seen).decode(errors="replace")
    assert returncode == 0, text[-800:]
    assert "typed-secret" not in text
    assert "success" in text
