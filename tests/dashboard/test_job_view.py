"""A job's page built from its events: hosts and counts, tasks with each host's result and time, output lines, bounds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ansible_worker.dashboard.job_view import MAX_CELLS, MAX_HOSTS, MAX_TASKS, JobView
from ansible_worker.dashboard.output_lines import live_line, record_lines, task_anchors
from ansible_worker.dashboard.pages import from_record
from ansible_worker.dashboard.result_details import MAX_ENTRIES
from ansible_worker.protocol.timestamps import from_epoch
from tests.conftest import Broker, client_for, make_settings, open_controller, running_worker
from tests.dashboard.events import T0, Events, two_hosts_one_failing


def test_a_two_host_job_where_one_fails_says_which_host_on_which_task_and_why() -> None:
    view = JobView(detail_bytes=1 << 20)
    for event in two_hosts_one_failing().items:
        view.add(event)
    page = view.page()
    hosts = {host["name"]: host for host in page["hosts"]}
    assert {key: hosts["web2"][key] for key in ("ok", "changed", "failed", "skipped")} == {
        "ok": 1,
        "changed": 1,
        "failed": 1,
        "skipped": 0,
    }
    assert {key: hosts["web1"][key] for key in ("ok", "changed", "failed", "skipped")} == {
        "ok": 2,
        "changed": 1,
        "failed": 0,
        "skipped": 1,
    }
    assert [task["name"] for task in page["tasks"]] == ["Check disk", "Write config", "Stop if full", "Restart"]
    # One letter per host (web1, web2 in the order first heard), and each host's time.
    assert [task["cells"] for task in page["tasks"]] == ["oo", "cc", "sf", "o-"]
    assert page["tasks"][1]["times"] == [2.0, 2.1]
    # Spans in seconds from the first event: a task runs from its start to its last result.
    assert (page["tasks"][1]["start"], page["tasks"][1]["end"]) == (0.7, 2.9)
    assert page["tasks"][0]["play"] == 0
    assert page["plays"] == ["Deploy"]
    assert page["failures"] == [{"task": 2, "host": 1, "status": "failed", "msg": "disk /var is 97% full"}]
    assert page["missed"] == 0
    result = view.result(2, 1)
    assert result is not None
    assert result["status"] == "failed"
    assert result["results"][0]["result"] == {"msg": "disk /var is 97% full"}
    assert result["results"][0]["data"] == {"failed": True}
    assert view.result(3, 1) is None  # web2 never ran the last task
    assert view.result(99, 0) is None
    assert view.result(-1, 0) is None


def test_the_recap_has_the_last_word_on_counts() -> None:
    view = JobView(detail_bytes=1 << 20)
    events = two_hosts_one_failing()
    recap = {"ok": 4, "changed": 1, "failures": 0, "unreachable": 0, "skipped": 0, "rescued": 1, "ignored": 0}
    events.add("playbook_on_stats", 4, hosts={"web2": recap, "db1": {"ok": 1, "changed": 0}})
    changes = [view.add(event) for event in events.items]
    assert changes[-1].counts
    delta = view.delta(changes[-1])
    assert delta is not None
    hosts = {host["name"]: host for host in delta["hosts"]}
    # The recap's ok counts changed results too: the page's ok is those that changed nothing.
    assert (hosts["web2"]["ok"], hosts["web2"]["changed"], hosts["web2"]["rescued"], hosts["web2"]["failed"]) == (
        3,
        1,
        1,
        0,
    )
    assert hosts["db1"]["ok"] == 1
    assert view.stats


def test_a_live_page_gets_each_change_as_a_small_delta() -> None:
    view = JobView(detail_bytes=1 << 20)
    events = two_hosts_one_failing().items
    deltas = [view.delta(view.add(event)) for event in events]
    assert deltas[0] is None  # playbook_on_start changes nothing shown
    assert deltas[1] is not None
    assert deltas[1]["play"] == [0, "Deploy"]
    failed = deltas[10]
    assert failed is not None
    assert failed["cell"] == [2, 1, "f", 0.1]
    assert failed["host"]["failed"] == 1
    assert failed["failure"]["msg"] == "disk /var is 97% full"
    assert "cells" not in failed["task"]  # a row's other results are not sent again
    assert len(json.dumps(failed)) < 1024


def test_events_heard_in_part_say_so_and_still_make_rows() -> None:
    """A dashboard started mid-run, a rate limit that thinned events, and results from an older worker without ids."""
    view = JobView(detail_bytes=1 << 20)
    events = two_hosts_one_failing().items
    for event in events[6:]:  # from "Write config"'s first result on: its start was not heard
        view.add(event)
    page = view.page()
    assert page["missed"] == 6
    assert [task["name"] for task in page["tasks"]] == ["", "Stop if full", "Restart"]
    assert page["tasks"][0]["cells"] == "cc"
    assert page["tasks"][0]["anchor"] is None
    old = JobView(detail_bytes=1 << 20)
    for event in events:
        old.add({key: value for key, value in event.items() if key not in ("task_uuid", "seq")} | {"task": "t"})
    assert len(old.tasks) == 4


def test_a_loop_shows_its_worst_item_until_its_final_result() -> None:
    view = JobView(detail_bytes=1 << 20)
    events = Events()
    events.task("Loop", 0, "t1")
    events.add("runner_item_on_ok", 0.1, host="h", status="ok", item="1", task_uuid="t1")
    events.add("runner_item_on_failed", 0.2, host="h", status="failed", item="2", task_uuid="t1")
    events.add("runner_retry", 0.25, host="h", status="retry", task_uuid="t1")
    for event in events.items:
        view.add(event)
    assert view.task_row(0)["cells"] == "f"
    view.add(
        events.add("runner_on_failed", 0.3, host="h", status="failed", task_uuid="t1", result={"msg": "One or more"})
    )
    result = view.result(0, 0)
    assert result is not None
    assert [entry["event"] for entry in result["results"]] == [
        "runner_item_on_ok",
        "runner_item_on_failed",
        "runner_retry",
        "runner_on_failed",
    ]
    for index in range(MAX_ENTRIES + 10):
        view.add(events.add("runner_item_on_ok", 1 + index, host="h", status="ok", item=str(index), task_uuid="t1"))
    result = view.result(0, 0)
    assert result is not None
    assert len(result["results"]) == MAX_ENTRIES
    assert result["results"][-1]["item"] == str(MAX_ENTRIES + 9)
    assert view.task_row(0)["cells"] == "f"  # items after the final result change nothing shown


def test_results_kept_whole_are_bounded_and_failures_are_kept_longest() -> None:
    view = JobView(detail_bytes=20_000)
    events = Events()
    events.task("First", 0, "t0")
    events.result("failed", "h0", 0.1, 0.1, "t0", result={"msg": "the first failure"})
    for index in range(1, 200):
        events.task(f"Step {index}", index, f"t{index}")
        events.result("ok", "h0", index + 0.5, 0.5, f"t{index}", result={"stdout": "x" * 500})
    for event in events.items:
        view.add(event)
    assert view.cost < 20_000 + len(view.tasks) * 1000
    assert view.details.dropped > 0
    kept = view.result(0, 0)
    assert kept is not None
    assert kept["results"] is not None
    assert kept["results"][0]["result"]["msg"] == "the first failure"
    gone = view.result(1, 0)
    assert gone is not None
    assert gone["results"] is None  # known, no longer kept whole
    assert gone["status"] == "ok"
    newest = view.result(199, 0)
    assert newest is not None
    assert newest["results"] is not None
    # A result far bigger than any the worker sends is kept by its small fields, and says why.
    events.task("Huge", 300, "huge")
    events.result("ok", "h0", 301, 0.5, "huge", result={"stdout": "x" * 4_000_000}, item="one")
    view.add(events.items[-2])
    view.add(events.items[-1])
    huge = view.result(200, 0)
    assert huge is not None
    assert huge["results"][0]["item"] == "one"
    assert "result" not in huge["results"][0]
    assert huge["results"][0]["dropped"].startswith("this result is 4,000,")
    assert view.cost < 20_000 + len(view.tasks) * 1000


@pytest.mark.parametrize(
    "event",
    [
        {"event": "runner_on_ok", "host": None, "status": "ok"},
        {"event": "runner_on_ok", "host": ["h"], "status": 5, "seq": "x", "time": 7},
        {"event": "runner_on_ok", "host": "h", "status": "ok", "duration": float("nan"), "time": "not a time"},
        {"event": "runner_on_ok", "host": "h", "status": "ok", "duration": -5, "seq": True, "task_uuid": 5},
        {"event": "playbook_on_task_start", "task": {"a": 1}, "task_uuid": None, "play_uuid": ["p"]},
        {"event": "playbook_on_task_start", "task": "u", "seq": {"id": "<b>x</b>"}},
        {"event": "playbook_on_task_start", "task": "u", "seq": True},
        {"event": "playbook_on_play_start", "play": 12},
        {"event": "playbook_on_stats", "hosts": {"h": {"ok": "many", "failures": -3, "changed": True}}},
        {"event": "playbook_on_stats", "hosts": ["h"]},
        {"event": "runner_on_failed", "host": "h", "status": "failed", "result": {"msg": {"nested": [1, 2]}}},
        {"event": "runner_on_failed", "host": "h", "status": "failed", "result": "not an object", "no_log": True},
        {"event": None},
        {},
    ],
)
def test_what_the_network_sends_never_breaks_the_view(event: dict[str, Any]) -> None:
    view = JobView(detail_bytes=1 << 20)
    view.add({"seq": 1, "event": "playbook_on_task_start", "task": "t", "task_uuid": "t1", "time": from_epoch(T0)})
    view.add(event)
    view.add(event)
    page = view.page()
    json.dumps(page, allow_nan=False)
    assert page["tasks"][0]["name"] == "t"
    for failure in page["failures"]:
        assert isinstance(failure["msg"], str)
    # A task links to its place in the output by a line number, or not at all.
    assert all(task["anchor"] is None or type(task["anchor"]) is int for task in page["tasks"])


def test_a_view_holds_at_most_so_many_hosts_tasks_and_results() -> None:
    view = JobView(detail_bytes=10_000)
    for index in range(MAX_TASKS + 5):
        view.add({"event": "playbook_on_task_start", "task": f"t{index}", "task_uuid": f"u{index}"})
    assert len(view.tasks) == MAX_TASKS
    assert view.cut
    wide = JobView(detail_bytes=10_000)
    wide.add({"event": "playbook_on_task_start", "task": "t", "task_uuid": "u"})
    for index in range(MAX_HOSTS + 5):
        wide.add({"event": "runner_on_ok", "host": f"h{index}", "status": "ok", "task_uuid": "u"})
    assert len(wide.hosts) == MAX_HOSTS
    assert wide.cut
    many = JobView(detail_bytes=10_000)
    for task in range(MAX_CELLS // 1000 + 2):
        many.add({"event": "playbook_on_task_start", "task": f"t{task}", "task_uuid": f"u{task}"})
        for host in range(1000):
            many.add({"event": "runner_on_ok", "host": f"h{host}", "status": "ok", "task_uuid": f"u{task}"})
    assert sum(len(task.cells) for task in many.tasks) == MAX_CELLS
    assert many.cut
    assert many.cost < 10 * 1024 * 1024


def test_record_output_lines_name_their_host_and_kind_and_tasks_find_their_headers() -> None:
    output = "\n".join(
        [
            "PLAY [Deploy] *****",
            "",
            "TASK [Check disk] *****",
            "ok: [web1] => {",
            '    "msg": "31%"',
            "}",
            "ok: [web2]",
            "",
            "TASK [web : Stop if full] *****",
            "skipping: [web1]",
            "[ERROR]: Task failed: Action failed: disk /var is 97% full",
            'fatal: [web2]: FAILED! => {"changed": false, "msg": "disk /var is 97% full"}',
            "fatal: [db1]: UNREACHABLE! => {}",
            "...ignoring",
            "",
            "PLAY RECAP *****",
            "web1                       : ok=2    changed=0    unreachable=0    failed=0    skipped=1",
            "web2                       : ok=1    changed=0    unreachable=0    failed=1    skipped=0",
        ]
    )
    lines, cut = record_lines(output, max_lines=1000, max_chars=1 << 20)
    assert not cut
    kinds = [(line["kind"], line["host"]) for line in lines]
    assert kinds[3:7] == [("ok", "web1"), ("ok", "web1"), ("ok", "web1"), ("ok", "web2")]
    assert kinds[10:13] == [("error", None), ("failed", "web2"), ("unreachable", "db1")]
    assert kinds[16:] == [("ok", "web1"), ("failed", "web2")]
    assert [line["id"] for line in lines[:3]] == [1, 2, 3]
    assert task_anchors(lines, ["Check disk", "Stop if full"]) == [3, 9]
    # A long output keeps its newest lines; the tasks before it link nowhere.
    newest, cut = record_lines(output, max_lines=10, max_chars=1 << 20)
    assert cut
    assert newest[0]["id"] == len(lines) - 9
    assert task_anchors(newest, ["Check disk", "Stop if full"]) == [None, 9]
    few, cut = record_lines(output, max_lines=1000, max_chars=100)
    assert cut
    assert sum(len(line["text"]) for line in few) <= 100


def test_a_live_line_is_text_with_its_kind() -> None:
    line = live_line({"seq": 7, "line": "fatal: [h]: UNREACHABLE! => {}", "status": "unreachable", "host": "h"})
    assert line == {"id": 7, "text": "fatal: [h]: UNREACHABLE! => {}", "kind": "unreachable", "host": "h"}
    assert live_line({"seq": 8, "line": "TASK [x]"}) == {"id": 8, "text": "TASK [x]", "kind": "task", "host": None}
    assert live_line({"seq": 9}) is None
    assert live_line({"seq": 9, "line": ["x"], "status": {}}) is None


def write_page_playbook(playbook_dir: Path, tmp_path: Path) -> None:
    """`page.yml`: a command that prints a secret, a file written with its diff, a failure on host2, a loop."""
    (playbook_dir / "page.yml").write_text(
        json.dumps(
            [
                {
                    "name": "Page",
                    "hosts": "all",
                    "gather_facts": False,
                    "vars": {"token": "{{ lookup('env', 'PAGE_TOKEN') }}"},
                    "tasks": [
                        {"name": "Echo", "ansible.builtin.command": "echo the token is {{ token }}"},
                        {
                            "name": "Write",
                            "ansible.builtin.copy": {
                                "content": "a\n",
                                "dest": f"{tmp_path}/out-{{{{ inventory_hostname }}}}",
                            },
                            "diff": True,
                        },
                        {
                            "name": "Fail one",
                            "ansible.builtin.fail": {"msg": "no {{ token }}"},
                            "when": "inventory_hostname == 'host2'",
                        },
                        {"name": "Loop", "ansible.builtin.debug": {"msg": "item {{ item }}"}, "loop": [1, 2]},
                    ],
                }
            ]
        )
    )


async def test_a_real_record_makes_the_page_and_keeps_secrets_masked(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    secret = "s3cr3t-value-7f2a"
    write_page_playbook(playbook_dir, tmp_path)
    settings = make_settings(
        broker.port,
        playbook_dir,
        group,
        credentials={"page": {"type": "env", "variables": {"PAGE_TOKEN": secret}}},
    )
    async with running_worker(settings), open_controller(broker, group) as controller:
        await controller.submit(
            {"task_id": "page-1", "playbook": "page.yml", "inventory": "inventory.ini", "credentials": ["page"]}
        )
        final = await controller.wait_terminal("page-1", within=90)
    async with client_for(broker, group) as client:
        record = await client.record("page-1")
    assert final["state"] == "failed"
    assert record is not None
    page = from_record(record)
    data = page.data()
    assert secret not in json.dumps(data)
    hosts = {host["name"]: host for host in data["hosts"]}
    assert hosts["host2"]["failed"] == 1
    assert hosts["host1"]["failed"] == 0
    assert [task["name"] for task in data["tasks"]] == ["Echo", "Write", "Fail one", "Loop"]
    assert all(task["anchor"] is not None for task in data["tasks"])
    assert all(task["end"] >= task["start"] for task in data["tasks"])
    host2 = hosts["host2"]["i"]
    assert data["failures"] == [{"task": 2, "host": host2, "status": "failed", "msg": "no ********"}]
    echo = page.view.result(0, hosts["host1"]["i"])
    assert echo is not None
    entry = echo["results"][-1]
    assert entry["result"]["rc"] == 0
    assert entry["result"]["stdout"] == "the token is ********"
    assert "********" in json.dumps(entry["data"])  # the command line, in the rest of the result
    write = page.view.result(1, hosts["host1"]["i"])
    assert write is not None
    assert "+a" in write["results"][-1]["result"]["diff"]
    loop = page.view.result(3, hosts["host1"]["i"])
    assert loop is not None
    assert [entry.get("item") for entry in loop["results"]] == ["1", "2", None]
    header = next(line for line in data["lines"] if line["id"] == data["tasks"][0]["anchor"])
    assert header["text"].startswith("TASK [Echo]")
    assert any(line["kind"] == "failed" and line["host"] == "host2" for line in data["lines"])
