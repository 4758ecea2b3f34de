"""Launching templates end to end: a real broker, an in-process worker, real ansible-playbook, answers on the wire."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import Broker, make_settings, open_controller, running_worker

TEMPLATES = {
    "templates": {
        "greet": {
            "description": "Report the options a job was given",
            "playbook": "options.yml",
            "inventory": "inventory.ini",
            "limit": "host1",
            "extra_vars": {"nested": {"fixed": True}},
            "survey": {
                "greeting": {"type": "secret", "required": True, "min": 6},
                "count": {"type": "integer", "min": 1, "max": 3, "default": 2},
            },
        }
    }
}


def write_templates(playbook_dir: Path) -> str:
    (playbook_dir / "templates.yml").write_text(yaml.safe_dump(TEMPLATES))
    return "templates.yml"


async def test_a_template_runs_with_its_answers_and_a_wrong_answer_is_refused(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    settings = make_settings(broker.port, playbook_dir, group, templates=write_templates(playbook_dir))
    async with open_controller(broker, group) as controller, running_worker(settings):
        await controller.submit({"task_id": "greet-1", "template": "greet", "extra_vars": {"greeting": "hello there"}})
        final = await controller.wait_terminal("greet-1")
        await controller.submit(
            {"task_id": "greet-2", "template": "greet", "extra_vars": {"greeting": "hello", "count": 2}}
        )
        short = await controller.wait_terminal("greet-2")
        await controller.submit(
            {"task_id": "greet-3", "template": "greet", "extra_vars": {"greeting": "hello!", "count": 9}}
        )
        large = await controller.wait_terminal("greet-3")
        await controller.submit({"task_id": "greet-4", "template": "greet", "playbook": "fail.yml"})
        overriding = await controller.wait_terminal("greet-4")

    assert final["state"] == "success", final
    assert final["playbook"] == "options.yml"
    # The template's limit, its fixed vars, and the answer, which is a secret: masked as a credential is.
    assert final["output"]["host"] == "host1"
    assert final["output"]["nested"] == {"fixed": True}
    assert final["output"]["greeting"] == "********"
    assert "hello there" not in str(controller.statuses["greet-1"])
    assert (short["state"], short["error_message"]) == (
        "failed",
        "extra_vars.greeting: must be at least 6 characters (min)",
    )
    assert large["error_message"] == "extra_vars.count: must be at most 3 (max)"
    assert overriding["error_message"].startswith("playbook: set by template 'greet'")


async def test_templates_only_refuses_a_plain_request_and_runs_a_launch(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    settings = make_settings(
        broker.port, playbook_dir, group, templates=write_templates(playbook_dir), templates_only=True
    )
    async with open_controller(broker, group) as controller, running_worker(settings):
        await controller.submit({"task_id": "plain-1", "playbook": "quick.yml", "inventory": "inventory.ini"})
        plain = await controller.wait_terminal("plain-1")
        await controller.submit({"task_id": "launch-1", "template": "greet", "extra_vars": {"greeting": "welcome"}})
        launched = await controller.wait_terminal("launch-1")

    assert plain["state"] == "failed"
    assert plain["error_message"].startswith("this worker runs templates only (worker.templates_only)")
    assert plain["tasks_total"] == 0
    assert launched["state"] == "success", launched
