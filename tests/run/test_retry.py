"""`retry`: hosts that ended failed or unreachable run again in the same job, each attempt reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ansible_worker.protocol.models import Attempt, State
from ansible_worker.run.retries import final_verdict, hosts_to_retry, still_bad
from tests.run.runs import open_runs

# host2 fails on its first run only; every run of a host leaves a line in runs.log.
FLAKY = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: Note the run
      ansible.builtin.shell: echo {{ inventory_hostname }} >> {{ log_dir }}/runs.log
    - name: Fail the first time on host2
      ansible.builtin.shell: test -e {{ log_dir }}/seen || { touch {{ log_dir }}/seen; exit 1; }
      when: inventory_hostname == 'host2'
"""
TWO_HOSTS = "two_hosts.ini"
REACH = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: Reach
      ansible.builtin.ping:
"""


@pytest.fixture
def playbook_dir(playbook_dir: Path) -> Path:
    (playbook_dir / "flaky.yml").write_text(FLAKY)
    (playbook_dir / "reach.yml").write_text(REACH)
    (playbook_dir / TWO_HOSTS).write_text(
        'host1 ansible_connection=local ansible_python_interpreter="{{ ansible_playbook_python }}"\n'
        "gone ansible_host=127.0.0.1 ansible_port=1 ansible_connection=ssh\n"
    )
    return playbook_dir


async def test_a_failed_host_runs_again_alone_and_the_job_succeeds(playbook_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    async with open_runs(playbook_dir) as runs:
        final = await runs.run(
            {
                "task_id": "flaky",
                "playbook": "flaky.yml",
                "inventory": "inventory.ini",
                "extra_vars": {"log_dir": str(logs)},
                "retry": {"attempts": 2, "on": ["failed"]},
            }
        )
        record = runs.sinks.records["flaky"]
    assert final["state"] == "success", final
    assert sorted((logs / "runs.log").read_text().split()) == ["host1", "host2", "host2"]
    first, second = final["attempts"]
    assert (first["attempt"], first["limit"], first["hosts"], first["failed"]) == (
        1,
        None,
        ["host1", "host2"],
        ["host2"],
    )
    assert (second["attempt"], second["limit"], second["hosts"], second["failed"]) == (2, "host2", ["host2"], [])
    assert second["return_code"] == 0
    # Every result of both attempts: 2 + 1 notes, host2's failure, then its success.
    assert (final["tasks_failed"], final["tasks_changed"], final["tasks_skipped"]) == (1, 4, 1)
    assert record["status"]["attempts"] == final["attempts"]
    starts = [event for event in record["events"] if event["event"] == "playbook_on_start"]
    assert len(starts) == 2


async def test_an_unreachable_host_runs_again_and_both_attempts_are_reported(playbook_dir: Path) -> None:
    async with open_runs(playbook_dir) as runs:
        final = await runs.run(
            {
                "task_id": "unreach",
                "playbook": "reach.yml",
                "inventory": TWO_HOSTS,
                "retry": {"attempts": 1, "delay": 0.5},
            }
        )
        statuses = runs.sinks.statuses["unreach"]
    assert final["state"] == "failed", final
    assert [attempt["unreachable"] for attempt in final["attempts"]] == [["gone"], ["gone"]]
    assert [attempt["limit"] for attempt in final["attempts"]] == [None, "gone"]
    assert final["tasks_unreachable"] == 2
    assert "unreachable on host 'gone'" in final["error_message"]
    # The first attempt is published while the second runs.
    assert any(len(status["attempts"]) == 1 and status["state"] == "running" for status in statuses)


async def test_without_retry_the_status_lists_no_attempts(playbook_dir: Path) -> None:
    async with open_runs(playbook_dir) as runs:
        final = await runs.run({"task_id": "once", "playbook": "reach.yml", "inventory": TWO_HOSTS})
    assert final["state"] == "failed"
    assert final["attempts"] == []


def _attempt(number: int, hosts: list[str], failed: list[str] = [], unreachable: list[str] = []) -> Attempt:  # noqa: B006
    return Attempt(attempt=number, limit=None, hosts=hosts, failed=failed, unreachable=unreachable)


def test_a_host_not_run_again_keeps_the_job_failed() -> None:
    attempts = [_attempt(1, ["a", "b"], failed=["a"], unreachable=["b"]), _attempt(2, ["b"])]
    assert hosts_to_retry(attempts[0], ["unreachable"]) == ["b"]
    assert still_bad(attempts) == ["a"]
    state, error = final_verdict((State.SUCCESS, None), "task 't' failed on host 'a'", attempts)
    assert (state, error) == (State.FAILED, "task 't' failed on host 'a'")


@pytest.mark.parametrize(
    "retry",
    [{"attempts": 0}, {"attempts": 11}, {"attempts": 1, "on": []}, {"attempts": 1, "on": ["skipped"]},
     {"attempts": 1, "delay": -1}],
)  # fmt: skip
def test_a_bad_retry_is_refused(retry: dict[str, Any]) -> None:
    from pydantic import ValidationError

    from ansible_worker.protocol.models import TaskRequest

    with pytest.raises(ValidationError):
        TaskRequest.model_validate({"task_id": "t", "playbook": "p.yml", "inventory": "i", "retry": retry})
