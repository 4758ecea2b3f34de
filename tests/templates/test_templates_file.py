"""The templates file and its surveys, without a broker: every rule refuses what breaks it, and says which."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from ansible_worker.protocol.models import TaskRequest
from ansible_worker.protocol.survey import SurveyError, SurveyRule
from ansible_worker.templates.catalogue import EntryHistory, build_catalogue
from ansible_worker.templates.expansion import TemplateRefused, expand_request
from ansible_worker.templates.loading import Templates, TemplatesError, load_templates
from ansible_worker.templates.schedules import scheduled_entries

SURVEY: dict[str, Any] = {
    "name": {"type": "string", "required": True, "min": 2, "max": 10, "pattern": "[a-z]+"},
    "port": {"type": "integer", "min": 1, "max": 65535, "default": 8080},
    "ratio": {"type": "number", "min": 0, "max": 1},
    "debug": {"type": "boolean", "default": False},
    "colour": {"type": "choice", "choices": ["red", "blue"]},
    "regions": {"type": "multichoice", "choices": ["eu", "us", "ap"], "max": 2},
    "token": {"type": "secret", "default": "hidden-default-token", "min": 8},
}


def write_templates(directory: Path, templates: dict[str, Any], name: str = "templates.yml") -> str:
    (directory / name).write_text(yaml.safe_dump({"templates": templates}))
    return name


def loaded(directory: Path, templates: dict[str, Any]) -> Templates:
    return load_templates(directory, write_templates(directory, templates))


def problems(directory: Path, templates: dict[str, Any] | str) -> list[str]:
    if isinstance(templates, str):
        (directory / "templates.yml").write_text(templates)
    else:
        write_templates(directory, templates)
    with pytest.raises(TemplatesError) as caught:
        load_templates(directory, "templates.yml")
    return caught.value.problems


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ({}, "name: an answer is required (required)"),
        ({"name": "x"}, "name: must be at least 2 characters (min)"),
        ({"name": "abcdefghijk"}, "name: must be at most 10 characters (max)"),
        ({"name": "ab1"}, "name: must match the pattern '[a-z]+' (pattern)"),
        ({"name": 12}, "name: must be text (type string)"),
        ({"name": "ab", "port": "80"}, "port: must be a whole number (type integer)"),
        ({"name": "ab", "port": True}, "port: must be a whole number (type integer)"),
        ({"name": "ab", "port": 1.5}, "port: must be a whole number (type integer)"),
        ({"name": "ab", "port": 0}, "port: must be at least 1 (min)"),
        ({"name": "ab", "port": 70000}, "port: must be at most 65535 (max)"),
        ({"name": "ab", "ratio": 1.5}, "ratio: must be at most 1 (max)"),
        ({"name": "ab", "ratio": "0.5"}, "ratio: must be a number (type number)"),
        ({"name": "ab", "debug": "yes"}, "debug: must be true or false (type boolean)"),
        ({"name": "ab", "colour": "green"}, "colour: must be one of 'red', 'blue' (choices)"),
        ({"name": "ab", "regions": "eu"}, "regions: must be a list of choices (type multichoice)"),
        ({"name": "ab", "regions": ["eu", "mars"]}, "regions: must be one of 'eu', 'us', 'ap' (choices)"),
        ({"name": "ab", "regions": ["eu", "us", "ap"]}, "regions: must be at most 2 choices (max)"),
        ({"name": "ab", "regions": ["eu", "eu"]}, "regions: each choice may be given once (type multichoice)"),
        ({"name": "ab", "token": "short"}, "token: must be at least 8 characters (min)"),
        ({"name": "ab", "surprise": 1}, "surprise: not a survey variable of template 'deploy'"),
    ],
)
def test_each_broken_rule_is_refused_naming_the_variable_and_the_rule(
    playbook_dir: Path, answers: dict[str, Any], message: str
) -> None:
    templates = loaded(playbook_dir, {"deploy": {"playbook": "quick.yml", "survey": SURVEY}})
    with pytest.raises(TemplateRefused) as caught:
        expand_request({"task_id": "t", "template": "deploy", "extra_vars": answers}, templates, templates_only=False)
    assert str(caught.value) == f"extra_vars.{message}"


def test_a_launch_becomes_the_templates_job_with_defaults_and_fixed_vars(playbook_dir: Path) -> None:
    templates = loaded(
        playbook_dir,
        {
            "deploy": {
                "description": "Deploy the app",
                "playbook": "options.yml",
                "inventory": "inventory.ini",
                "limit": "host1",
                "tags": ["red"],
                "forks": 3,
                "timeout": 60,
                "extra_vars": {"fixed": "always"},
                "survey": SURVEY,
            }
        },
    )
    expanded = expand_request(
        {"task_id": "t1", "template": "deploy", "extra_vars": {"name": "web", "port": 443.0, "regions": ["us"]}},
        templates,
        templates_only=True,
    )
    request = TaskRequest.model_validate(expanded.document)
    assert request.template == "deploy"
    assert (request.playbook, request.inventory, request.limit, request.tags, request.forks, request.timeout) == (
        "options.yml",
        "inventory.ini",
        "host1",
        ["red"],
        3,
        60,
    )
    assert request.extra_vars == {
        "fixed": "always",
        "name": "web",
        "port": 443,
        "debug": False,
        "regions": ["us"],
        "token": "hidden-default-token",
    }
    # The secret's value, default or answer, is masked like a credential's.
    assert expanded.secrets == ["hidden-default-token"]


def test_a_launch_may_not_set_the_templates_fields(playbook_dir: Path) -> None:
    templates = loaded(playbook_dir, {"quick": {"playbook": "quick.yml"}})
    with pytest.raises(TemplateRefused, match=r"^inventory, playbook: set by template 'quick'"):
        expand_request(
            {"task_id": "t", "template": "quick", "playbook": "other.yml", "inventory": "x,"},
            templates,
            templates_only=False,
        )
    with pytest.raises(TemplateRefused, match="not one of this worker's templates"):
        expand_request({"task_id": "t", "template": "other"}, templates, templates_only=False)


def test_templates_only_refuses_a_plain_request(playbook_dir: Path) -> None:
    templates = loaded(playbook_dir, {"quick": {"playbook": "quick.yml"}})
    plain = {"task_id": "t", "playbook": "quick.yml", "inventory": "inventory.ini"}
    assert expand_request(plain, templates, templates_only=False).document == plain
    with pytest.raises(TemplateRefused, match=r"templates only \(worker.templates_only\)"):
        expand_request(plain, templates, templates_only=True)


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ({"playbook": "quick.yml", "hosts": "all"}, "templates.bad.hosts: unknown key"),
        ({"playbook": "quick.yml", "survey": {"x": {"type": "string", "maxlen": 3}}}, "survey.x.maxlen: unknown key"),
        ({"playbook": "../outside.yml"}, "templates.bad.playbook: playbook must not contain '..'"),
        ({"playbook": "/etc/hostname"}, "templates.bad.playbook: playbook must be relative to the playbook directory"),
        ({"playbook": "link.yml"}, "templates.bad.playbook: playbook resolves outside the playbook directory"),
        ({"playbook": "missing.yml"}, "templates.bad.playbook: playbook not found"),
        (
            {"playbook": "quick.yml", "survey": {"n": {"type": "integer", "max": 5, "default": 9}}},
            "default breaks its own rule: must be at most 5 (max)",
        ),
        (
            {"playbook": "quick.yml", "survey": {"c": {"type": "choice", "choices": ["a"], "default": "b"}}},
            "default breaks its own rule: must be one of 'a' (choices)",
        ),
        ({"playbook": "quick.yml", "survey": {"c": {"type": "choice"}}}, "choices: required for a choice"),
        ({"playbook": "quick.yml", "survey": {"b": {"type": "boolean", "max": 1}}}, "min/max: not for a boolean"),
        ({"playbook": "quick.yml", "survey": {"s": {"type": "string", "pattern": "("}}}, "pattern: not a regular"),
        ({"playbook": "quick.yml", "survey": {"s": {"type": "text"}}}, "survey.s.type: Input should be"),
        ({"playbook": "quick.yml", "extra_vars": {"a": 1}, "survey": {"a": {"type": "integer"}}}, "a: both a fixed"),
        ({"playbook": "quick.yml", "extra_vars": {"ansible_user": "root"}}, "extra_vars.ansible_user: "),
        ({"playbook": "quick.yml", "survey": {"ansible_become": {"type": "boolean"}}}, "survey.ansible_become: "),
        ({"playbook": "quick.yml", "schedule": [{"cron": "61 * * * *"}]}, "not a cron expression"),
        ({"playbook": "quick.yml", "schedule": [{"cron": "0 * * * * *"}]}, "must have five fields"),
        ({"playbook": "quick.yml", "schedule": [{"cron": "0 3 * * *", "timezone": "Mars/Base"}]}, "not a time zone"),
        ({"playbook": "quick.yml", "schedule": [{"at": "2026-12-24T20:00:00"}]}, "must carry its UTC offset"),
        ({"playbook": "quick.yml", "schedule": [{"every": "day"}]}, "needs either `cron` or `at`"),
        (
            {
                "playbook": "quick.yml",
                "survey": {"n": {"type": "integer", "required": True}},
                "schedule": [{"cron": "0 3 * * *"}],
            },
            "schedule entry 0: extra_vars.n: an answer is required (required)",
        ),
    ],
)
def test_validation_names_each_mistake(playbook_dir: Path, template: dict[str, Any], problem: str) -> None:
    (playbook_dir / "link.yml").symlink_to("/etc/hostname")
    found = problems(playbook_dir, {"bad": template})
    assert any(problem in line for line in found), found
    assert all(line.startswith("worker.templates (templates.yml): ") for line in found)


def test_the_file_itself_must_be_inside_the_directory_and_a_mapping(playbook_dir: Path) -> None:
    with pytest.raises(TemplatesError, match=r"must not contain '\.\.'"):
        load_templates(playbook_dir, "../templates.yml")
    assert problems(playbook_dir, "templates: [a, b]\n") == [
        "worker.templates (templates.yml): templates: Input should be a valid dictionary"
    ]
    assert problems(playbook_dir, "templates: {a: {playbook: quick.yml}\n")[0].startswith(
        "worker.templates (templates.yml): line 2, column 1: invalid YAML"
    )


def test_text_answers_are_read_as_their_type() -> None:
    assert SurveyRule(type="integer").from_text("port", "8080") == 8080
    assert SurveyRule(type="number").from_text("ratio", "0.5") == 0.5
    assert SurveyRule(type="boolean").from_text("debug", "yes") is True
    assert SurveyRule(type="choice", choices=[1, 2]).from_text("n", "2") == 2
    assert SurveyRule(type="multichoice", choices=["a", "b"]).from_text("m", "a, b") == ["a", "b"]
    with pytest.raises(SurveyError, match=r"^port: must be a whole number \(type integer\)$"):
        SurveyRule(type="integer").from_text("port", "eighty")


def test_the_catalogue_never_holds_a_secret_default(playbook_dir: Path) -> None:
    templates = loaded(
        playbook_dir,
        {
            "deploy": {
                "playbook": "quick.yml",
                "survey": SURVEY,
                "schedule": [{"cron": "30 2 * * *", "timezone": "Europe/Berlin", "extra_vars": {"name": "nightly"}}],
            }
        },
    )
    now = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    (entry,) = scheduled_entries(templates)
    history = {entry.name: EntryHistory()}
    history[entry.name].ran(datetime(2026, 3, 28, 1, 30, tzinfo=UTC), "x")
    catalogue = build_catalogue(templates, worker_id="w1", now=now, templates_only=True, history=history)
    text = catalogue.model_dump_json()
    assert "hidden-default-token" not in text
    view = catalogue.templates["deploy"]
    assert view.survey["token"].has_default is True
    assert view.survey["port"].default == 8080
    # 02:30 in Berlin does not exist on 29 March 2026 (the clock skips to 03:00): cron's rule
    # runs the job once, at 03:00 local (01:00 UTC), then at 02:30 summer time (00:30 UTC).
    assert view.schedule[0].next_runs[:3] == [
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
        datetime(2026, 3, 31, 0, 30, tzinfo=UTC),
    ]
    assert view.schedule[0].last_task_id == "x"


def test_a_ticks_task_id_is_the_same_everywhere_and_a_valid_task_id(playbook_dir: Path) -> None:
    spec = {"nightly": {"playbook": "quick.yml", "schedule": [{"cron": "*/5 * * * *"}, {"at": "2026-12-24T20:00:00Z"}]}}
    first, second = scheduled_entries(loaded(playbook_dir, spec))
    again = scheduled_entries(
        loaded(playbook_dir, {"nightly": {**spec["nightly"], "schedule": spec["nightly"]["schedule"][::-1]}})
    )
    tick = datetime(2026, 12, 24, 20, 0, tzinfo=UTC)
    # Named by what the entry says, not where it stands in the list.
    assert {entry.task_id(tick) for entry in again} == {first.task_id(tick), second.task_id(tick)}
    assert first.task_id(tick).endswith(".20261224T200000Z")
    TaskRequest(task_id=first.task_id(tick), playbook="quick.yml", inventory="x,")
    assert second.upcoming(tick, 3) == []
    assert second.upcoming(datetime(2026, 12, 24, 19, 0, tzinfo=UTC), 3) == [tick]


def test_only_a_schedule_launches_its_ticks_task_ids(playbook_dir: Path) -> None:
    """A tick's task_id from the wire is refused, unless the group hands that very message back."""
    from ansible_worker.mqtt.options import InboundMessage
    from ansible_worker.protocol.claims import request_digest
    from ansible_worker.protocol.topics import Topics
    from ansible_worker.worker.router import Claim, Refuse, Router
    from tests.worker.test_router import View

    templates = loaded(playbook_dir, {"nightly": {"playbook": "quick.yml", "schedule": [{"cron": "0 3 * * *"}]}})
    (entry,) = scheduled_entries(templates)
    tick_id = entry.task_id(datetime(2026, 12, 24, 3, 0, tzinfo=UTC))
    payload = json.dumps({"task_id": tick_id, "template": "nightly"}).encode()
    released: dict[str, str] = {}
    topics = Topics("ansible", "g")
    router = Router(
        topics,
        worker_id="me",
        max_message_bytes=4096,
        queue_size=3,
        admission_error=lambda request: None,
        templates=templates,
        schedule_prefixes=(f"{entry.name}.",),
        released=released.get,
    )
    early = router.route(InboundMessage(topics.tasks, payload, qos=2, retain=False), View())
    assert early == Refuse(tick_id, "this task_id is a schedule's tick: only the workers' schedules launch it")
    assert isinstance(router.route_task(payload, View(), scheduled=True), Claim)
    released[tick_id] = request_digest(payload)
    assert isinstance(router.route(InboundMessage(topics.tasks, payload, qos=2, retain=False), View()), Claim)
    # Any other text under that task_id is still refused.
    other = json.dumps({"task_id": tick_id, "template": "nightly", "extra_vars": {}}).encode()
    assert isinstance(router.route(InboundMessage(topics.tasks, other, qos=2, retain=False), View()), Refuse)
