"""What the callback plugin sends of a result: ids, the diff, and the rest of the result bounded; never breaking a run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ansible_worker.run.plugins.callback.ansible_worker_events import DATA_LIMIT, FIFO_VARIABLE, CallbackModule, _data


def test_the_rest_of_a_result_leaves_out_what_is_sent_or_hidden_elsewhere() -> None:
    result = {
        "changed": True,
        "msg": "sent on its own",
        "stdout": "x",
        "stdout_lines": ["x"],
        "invocation": {"module_args": {"password": "not for the broker"}},
        "_ansible_no_log": False,
        "dest": "/etc/app.conf",
        "nested": {"_ansible_verbose_always": True, "kept": 1},
    }
    assert _data(result) == {"changed": True, "dest": "/etc/app.conf", "nested": {"kept": 1}}
    assert _data({"msg": "only what is sent already"}) is None
    # A loop's final result repeats its items, which came as events of their own.
    assert _data({"results": [{"item": n} for n in range(300)], "changed": False}) == {
        "results": "300 item results, each sent as an event of its own",
        "changed": False,
    }


def test_the_rest_of_a_result_is_cut_to_fit() -> None:
    big = {
        "content": "c" * 100_000,
        "list": list(range(1000)),
        "deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {}}}}}}}},
    }
    data = _data(big)
    assert data is not None
    assert len(json.dumps(data)) <= DATA_LIMIT
    assert data["content"].endswith("...[truncated]")  # masking knows this mark: a secret cut in two is masked
    assert data["list"][-1] == "...[950 more]"
    huge = {f"key{n}": "v" * 200 for n in range(5000)}
    assert len(json.dumps(_data(huge))) <= DATA_LIMIT


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def result_of(data: dict[str, Any]) -> SimpleNamespace:
    task = SimpleNamespace(get_name=lambda: "Task", action="ansible.builtin.copy", _uuid="uuid-1")
    return SimpleNamespace(result=data, task=task, host=SimpleNamespace(get_name=lambda: "web1"))


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[CallbackModule, Path]:
    events = tmp_path / "events"
    events.touch()
    monkeypatch.setenv(FIFO_VARIABLE, str(events))
    return CallbackModule(), events


def test_a_result_carries_its_ids_and_diff_and_an_odd_value_never_costs_the_event(
    plugin: tuple[CallbackModule, Path],
) -> None:
    callback, events = plugin
    diff = {"before": "a\n", "after": "b\n", "after_header": "/etc/app.conf"}
    callback.v2_runner_on_ok(result_of({"changed": True, "diff": diff, "odd": Unprintable()}))
    callback.v2_runner_on_failed(result_of({"diff": {"before": Unprintable(), "after": "b"}, "msg": "broken"}))
    sent = [json.loads(line) for line in events.read_text().splitlines()]
    assert [event["event"] for event in sent] == ["runner_on_ok", "runner_on_failed"]
    assert sent[0]["task_uuid"] == "uuid-1"
    assert "-a\n+b" in sent[0]["diff"]
    assert diff == {"before": "a\n", "after": "b\n", "after_header": "/etc/app.conf"}  # left as Ansible gave it
    assert sent[0]["data"] == {"...": "the rest of the result could not be read"}
    assert sent[1]["msg"] == "broken"
    assert sent[1]["diff"] is None
