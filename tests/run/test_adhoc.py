"""Ad-hoc commands: a module instead of a playbook, run by Ansible's `ansible` CLI with a playbook job's events, counts and limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from pydantic import ValidationError

from ansible_worker.protocol.models import TaskRequest
from ansible_worker.run.argv import module_arguments
from ansible_worker.run.policy import module_allowed
from tests.conftest import processes_mentioning, unique_seconds
from tests.run.runs import open_runs

ALLOWED = ["ping", "setup", "debug", "shell", "command", "async_status"]
# One host that runs and one that cannot be reached (nothing listens on port 1).
TWO_HOSTS = "two_hosts.ini"


@pytest.fixture
def playbook_dir(playbook_dir: Path) -> Path:
    (playbook_dir / TWO_HOSTS).write_text(
        'host1 ansible_connection=local ansible_python_interpreter="{{ ansible_playbook_python }}"\n'
        "gone ansible_host=127.0.0.1 ansible_port=1 ansible_connection=ssh\n"
    )
    return playbook_dir


def _events(runs: Any, task_id: str) -> list[dict[str, Any]]:
    return [event for event in runs.sinks.events[task_id]]


async def test_ping_gives_events_and_counts_as_a_playbook_does(playbook_dir: Path) -> None:
    async with open_runs(playbook_dir, ad_hoc_modules=ALLOWED) as runs:
        final = await runs.run({"task_id": "ping", "module": "ping", "inventory": TWO_HOSTS})
        events = _events(runs, "ping")
        record = runs.sinks.records["ping"]
    assert final["state"] == "failed", final
    assert final["module"] == "ping"
    assert final["playbook"] is None
    assert (final["tasks_ok"], final["tasks_unreachable"], final["tasks_total"]) == (1, 1, 2)
    names = [event["event"] for event in events]
    assert names[:3] == ["playbook_on_start", "playbook_on_play_start", "playbook_on_task_start"]
    assert names[-1] == "playbook_on_stats"
    by_host = {event["host"]: event["event"] for event in events if "host" in event}
    assert by_host == {"host1": "runner_on_ok", "gone": "runner_on_unreachable"}
    recap = events[-1]["hosts"]
    assert recap["host1"]["ok"] == 1
    assert recap["gone"]["unreachable"] == 1
    assert record["status"]["tasks_total"] == 2
    assert "pong" in record["output"]
    assert final["return_code"] == 4


async def test_setup_reports_a_changed_free_ok(playbook_dir: Path) -> None:
    async with open_runs(playbook_dir, ad_hoc_modules=ALLOWED) as runs:
        final = await runs.run(
            {
                "task_id": "facts",
                "module": "setup",
                "module_args": "filter=ansible_hostname",
                "inventory": "one_host.ini",
            }
        )
        record = runs.sinks.records["facts"]
    assert final["state"] == "success", final
    assert (final["tasks_ok"], final["tasks_changed"], final["tasks_total"]) == (1, 0, 1)
    assert "ansible_hostname" in record["output"]


async def test_a_module_not_allowed_is_refused_by_name(playbook_dir: Path) -> None:
    async with open_runs(playbook_dir, ad_hoc_modules=["ping"]) as runs:
        final = await runs.submit(
            {"task_id": "sh", "module": "shell", "module_args": "id", "inventory": "one_host.ini"}
        )
        assert "sh" not in runs.sinks.run_dirs
    assert final["state"] == "failed"
    assert final["error_message"] == "module 'shell' is not allowed on this worker (worker.ad_hoc_modules)"


async def test_ad_hoc_commands_are_off_by_default(playbook_dir: Path) -> None:
    async with open_runs(playbook_dir) as runs:
        final = await runs.submit({"task_id": "p", "module": "ping", "inventory": "one_host.ini"})
    assert final["error_message"] == "ad-hoc commands are not allowed on this worker (worker.ad_hoc_modules)"


def test_builtin_names_match_their_short_forms() -> None:
    assert module_allowed("ansible.builtin.ping", ["ping"])
    assert module_allowed("ping", ["ansible.builtin.ping"])
    assert module_allowed("ansible.legacy.ping", ["ping"])
    assert not module_allowed("community.general.ping", ["ping"])
    assert not module_allowed("shell", ["ping", "ansible.builtin.command"])


async def test_object_arguments_reach_the_module_as_data_never_templated(playbook_dir: Path) -> None:
    text = "{{ lookup('pipe', 'echo templated-on-the-worker') }}"
    async with open_runs(playbook_dir, ad_hoc_modules=ALLOWED) as runs:
        final = await runs.run(
            {"task_id": "dbg", "module": "debug", "module_args": {"msg": text}, "inventory": "one_host.ini"}
        )
        output = runs.sinks.records["dbg"]["output"]
    assert final["state"] == "success", final
    assert "templated-on-the-worker" not in output.replace(text, "")
    assert "lookup('pipe'" in output


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"module_args": "msg={{ lookup('pipe', 'id') }}"}, "Ansible would template it"),
        ({"module_args": "msg=\\u007b\\u007b lookup('pipe', 'id') }}"}, "backslash"),
        ({"module_args": '{"msg": "data"}'}, "must not start with '{'"),
        ({"module_args": {"{{ k }}": "v"}}, "Ansible would template it"),
        ({"module_args": {"msg": {"__ansible_vault": "x"}}}, "tagged data"),
        ({"hosts": "{{ lookup('pipe', 'id') }}"}, "Ansible would template it"),
        ({"hosts": "web,@/etc/passwd"}, "must not contain '@'"),
        ({"hosts": "-i/etc/passwd"}, "must not start with '-'"),
        ({"tags": ["a"]}, "belong to playbooks"),
        ({"poll": 2}, "poll needs background"),
        ({"playbook": "quick.yml"}, "name either a playbook or a module"),
        ({"module": "x; id"}, "module"),
    ],
)
def test_what_ansible_would_template_or_misread_is_refused(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        TaskRequest.model_validate({"task_id": "t", "module": "debug", "inventory": "one_host.ini", **fields})


def test_a_playbook_refuses_ad_hoc_fields() -> None:
    with pytest.raises(ValidationError, match="background belong to ad-hoc commands"):
        TaskRequest.model_validate({"task_id": "t", "playbook": "p.yml", "inventory": "i", "background": 5})


def test_object_arguments_become_unsafe_json() -> None:
    assert json.loads(module_arguments({"msg": "a", "n": [1, "b"]})) == {
        "msg": {"__ansible_unsafe": "a"},
        "n": [1, {"__ansible_unsafe": "b"}],
    }


async def test_background_without_poll_returns_a_job_id_that_async_status_reads(playbook_dir: Path) -> None:
    async with open_runs(playbook_dir, ad_hoc_modules=ALLOWED) as runs:
        started = await runs.run(
            {
                "task_id": "bg",
                "module": "shell",
                "module_args": "sleep 1; echo finished-in-background",
                "background": 60,
                "poll": 0,
                "inventory": "one_host.ini",
            }
        )
        assert started["state"] == "success", started
        [result] = [event for event in runs.sinks.events["bg"] if event.get("host") == "host1"]
        job_id = result["ansible_job_id"]
        assert result["finished"] == 0
        with trio.fail_after(30):
            for attempt in range(60):
                fields = {
                    "task_id": f"st{attempt}",
                    "module": "async_status",
                    "module_args": {"jid": job_id},
                    "inventory": "one_host.ini",
                }
                status = await runs.run(fields)
                [polled] = [event for event in runs.sinks.events[f"st{attempt}"] if event.get("host") == "host1"]
                if polled.get("finished"):
                    break
                await trio.sleep(0.5)
        assert status["state"] == "success", status
        assert "finished-in-background" in runs.sinks.records[f"st{attempt}"]["output"]


async def test_background_with_poll_waits_for_the_result(playbook_dir: Path) -> None:
    async with open_runs(playbook_dir, ad_hoc_modules=ALLOWED) as runs:
        final = await runs.run(
            {
                "task_id": "bgp",
                "module": "shell",
                "module_args": "sleep 1; echo polled-to-the-end",
                "background": 60,
                "poll": 1,
                "inventory": "one_host.ini",
            }
        )
        output = runs.sinks.records["bgp"]["output"]
    assert final["state"] == "success", final
    assert "polled-to-the-end" in output


async def test_timeout_and_cancel_end_the_command_and_its_processes(playbook_dir: Path) -> None:
    timed, cancelled = unique_seconds(30), unique_seconds(30)
    async with open_runs(playbook_dir, ad_hoc_modules=ALLOWED) as runs:
        final = await runs.run(
            {
                "task_id": "slow",
                "module": "command",
                "module_args": f"sleep {timed}",
                "inventory": "one_host.ini",
                "timeout": 3,
            }
        )
        assert final["state"] == "timeout", final
        job = runs.start(
            {"task_id": "stop", "module": "command", "module_args": f"sleep {cancelled}", "inventory": "one_host.ini"}
        )
        await runs.wait_for("stop", lambda status: status.get("current_task") == "command")
        runs.cancel(job, reason="enough")
        stopped = await runs.wait_terminal(job)
    assert stopped["state"] == "cancelled"
    assert stopped["error_message"] == "cancelled: enough"
    assert not processes_mentioning(f"sleep {timed}")
    assert not processes_mentioning(f"sleep {cancelled}")


async def test_a_credential_limited_to_playbooks_is_not_for_ad_hoc(playbook_dir: Path) -> None:
    credentials = {"token": {"type": "env", "variables": {"TOKEN": "s3cret-value"}, "allowed_playbooks": ["*.yml"]}}
    async with open_runs(playbook_dir, ad_hoc_modules=ALLOWED, credentials=credentials) as runs:
        final = await runs.submit(
            {"task_id": "cred", "module": "ping", "inventory": "one_host.ini", "credentials": ["token"]}
        )
    assert final["error_message"] == (
        "credential 'token' is limited to playbooks (allowed_playbooks): not for ad-hoc commands"
    )


async def test_credentials_reach_the_command_and_are_masked(playbook_dir: Path) -> None:
    credentials = {"token": {"type": "env", "variables": {"TOKEN": "s3cret-value"}}}
    async with open_runs(playbook_dir, ad_hoc_modules=ALLOWED, credentials=credentials) as runs:
        final = await runs.run(
            {
                "task_id": "env",
                "module": "shell",
                "module_args": "echo token=$TOKEN",
                "inventory": "one_host.ini",
                "credentials": ["token"],
            }
        )
        output = runs.sinks.records["env"]["output"]
    assert final["state"] == "success", final
    assert "token=" in output
    assert "s3cret-value" not in output
