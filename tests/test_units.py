"""The pure parts on their own: intake, the event reducer, the argument list, the outbox, expansion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import yaml

from ansible_worker.ops.expand import UnsetVariableError, expand_tree
from ansible_worker.protocol.models import JobStatus, State, TaskRequest
from ansible_worker.run.command import JobRefusedError, build_argv, resolve_inventory, resolve_playbook
from ansible_worker.run.extra_vars import dump_unsafe_yaml
from ansible_worker.run.progress import Progress
from ansible_worker.worker.intake import Accepted, Dropped, Rejected, read_task_message
from ansible_worker.worker.outbox import StatusOutbox


def test_intake_classifies_every_kind_of_message() -> None:
    ok = b'{"task_id": "a.b-c_1", "playbook": "p.yml", "inventory": "i", "tags": "x, y", "unknown": 1}'
    match read_task_message(ok, max_bytes=1024):
        case Accepted(job):
            assert job.tags == ["x", "y"]
        case other:
            pytest.fail(f"not accepted: {other}")
    assert isinstance(read_task_message(b'{"task_id": "' + b"x" * 129 + b'"}', max_bytes=4096), Dropped)
    assert read_task_message(
        b'{"task_id": "t", "playbook": "p", "inventory": "i", "check_mode": "yes"}', max_bytes=1024
    ) == Rejected("t", "invalid task: check_mode: Input should be a valid boolean (got 'yes')")
    # Nesting deep enough to exhaust the decoder's recursion is dropped, not raised.
    deep = read_task_message(b"[" * 100_000, max_bytes=1 << 20)
    assert isinstance(deep, Dropped)
    assert deep.reason.startswith("invalid JSON")


def test_progress_counts_like_ansible_and_stats_have_the_last_word() -> None:
    progress = Progress()
    events: list[dict[str, Any]] = [
        {"event": "playbook_on_play_start", "play": "p", "counter": 1},
        {"event": "playbook_on_task_start", "task": "t1", "counter": 2},
        {"event": "runner_on_ok", "host": "h", "changed": False},
        {"event": "runner_on_ok", "host": "h", "changed": True},
        {"event": "runner_on_failed", "host": "h", "task": "t2", "ignore_errors": True, "msg": "ignored"},
        {"event": "runner_on_failed", "host": "h", "task": "t3", "msg": "real"},
        {"event": "runner_on_failed", "host": "h2", "task": "t4", "msg": "second"},
        {"event": "runner_on_skipped", "host": "h"},
        {"event": "runner_on_unreachable", "host": "h3", "task": "t5", "msg": "gone"},
        {"event": "runner_on_ok", "host": "h", "stats": {"data": {"a": 1, "b": 1}, "per_host": False}},
        {"event": "runner_on_ok", "host": "h", "stats": {"data": {"a": 2}, "per_host": True}, "counter": 9},
    ]
    for event in events:
        progress.apply(event)
    assert (progress.ok, progress.changed, progress.failed, progress.skipped, progress.unreachable) == (4, 1, 2, 1, 1)
    assert progress.ignored == 1
    assert progress.first_failure == "task 't3' failed on host 'h': real"
    assert progress.output == {"a": 2, "b": 1}
    assert progress.output_per_host == {"h": {"a": 2}}
    assert progress.last_counter == 9
    assert progress.current_task == "t1"
    # A rescued failure is only known from the stats event, which replaces the counts.
    summary = {"ok": 5, "changed": 1, "failures": 1, "skipped": 1, "unreachable": 1, "rescued": 1, "ignored": 1}
    progress.apply({"event": "playbook_on_stats", "hosts": {"h": summary}})
    assert (progress.ok, progress.changed, progress.failed, progress.rescued) == (4, 1, 1, 1)
    assert progress.total == 8


def test_progress_ignores_what_it_does_not_know() -> None:
    progress = Progress()
    junk: list[dict[str, Any]] = [
        {},
        {"event": 5},
        {"event": "runner_on_ok", "stats": "x"},
        {"event": "playbook_on_stats", "hosts": []},
    ]
    for event in junk:
        progress.apply(event)
    assert progress.total == 1
    assert progress.output == {}


def test_no_log_failure_hides_the_message() -> None:
    progress = Progress()
    progress.apply({"event": "runner_on_failed", "host": "h", "task": "secret", "no_log": True})
    assert progress.first_failure == "task 'secret' failed on host 'h': output hidden by no_log"


def test_argv_glues_values_to_options(tmp_path: Path) -> None:
    job = TaskRequest.model_validate(
        {
            "task_id": "t",
            "playbook": "p.yml",
            "inventory": "i",
            "limit": "web,db",
            "tags": ["a", "b"],
            "skip_tags": ["c"],
            "verbosity": 2,
            "check_mode": True,
            "diff_mode": True,
            "forks": 9,
        }
    )
    argv = build_argv(
        job, executable="ap", playbook=tmp_path / "p.yml", inventory="h1,", extra_vars_file=tmp_path / "x.yml"
    )
    assert argv == [
        "ap",
        "--inventory=h1,",
        f"--extra-vars=@{tmp_path / 'x.yml'}",
        "--limit=web,db",
        "--tags=a,b",
        "--skip-tags=c",
        "--forks=9",
        "-vv",
        "--check",
        "--diff",
        "--",
        str(tmp_path / "p.yml"),
    ]


def test_paths_stay_inside_the_playbook_directory(tmp_path: Path) -> None:
    base = (tmp_path / "base").resolve()
    (base / "sub").mkdir(parents=True)
    (base / "sub" / "site.yml").write_text("[]")
    (base / "inventories").mkdir()
    (tmp_path / "secret.yml").write_text("[]")
    (base / "link.yml").symlink_to(tmp_path / "secret.yml")
    assert resolve_playbook(base, "sub/site.yml") == base / "sub" / "site.yml"
    assert resolve_inventory(base, "inventories") == str(base / "inventories")
    assert resolve_inventory(base, "web1,web2") == "web1,web2"
    for bad, message in [
        ("../secret.yml", "playbook must not contain '..': '../secret.yml'"),
        ("sub/../../secret.yml", "playbook must not contain '..': 'sub/../../secret.yml'"),
        ("/etc/passwd", "playbook must be relative to the playbook directory: '/etc/passwd'"),
        ("link.yml", "playbook resolves outside the playbook directory: 'link.yml'"),
        ("sub", "playbook is not a file: 'sub'"),
        ("missing.yml", "playbook not found: 'missing.yml'"),
    ]:
        with pytest.raises(JobRefusedError) as caught:
            resolve_playbook(base, bad)
        assert str(caught.value) == message


def test_unsafe_yaml_tags_every_string() -> None:
    text = dump_unsafe_yaml({"k": "{{ x }}", "n": [1, "y", {"z": None}]})
    assert text.count("!unsafe") == 5

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!unsafe", lambda loader, node: ("unsafe", loader.construct_scalar(node)))  # type: ignore[arg-type]
    loaded = yaml.load(text, Loader=Loader)  # noqa: S506 - a local loader that only adds one tag
    assert loaded == {
        ("unsafe", "k"): ("unsafe", "{{ x }}"),
        ("unsafe", "n"): [1, ("unsafe", "y"), {("unsafe", "z"): None}],
    }


def test_expansion_with_defaults_and_unset_variables() -> None:
    environ = {"HOST": "broker", "EMPTY": ""}
    tree = {"a": "${HOST}:${PORT:-1883}", "b": ["${EMPTY:-fallback}", "${EMPTY}", 5], "c": {"d": "plain $HOST"}}
    assert expand_tree(tree, environ) == {"a": "broker:1883", "b": ["fallback", "", 5], "c": {"d": "plain $HOST"}}
    with pytest.raises(UnsetVariableError) as caught:
        expand_tree({"mqtt": {"password": "${NOPE}"}}, environ)
    assert str(caught.value).startswith("mqtt.password: environment variable NOPE is not set")


def status(state: State, total: int = 0) -> JobStatus:
    return JobStatus(task_id="j", state=state, tasks_total=total)


async def test_outbox_keeps_every_state_change_and_paces_running_updates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = StatusOutbox(interval=1.0)
    outbox.post(status(State.QUEUED))
    outbox.post(status(State.RUNNING, 0))
    outbox.post(status(State.RUNNING, 1))
    taken = []
    for _ in range(2):
        item = await outbox.take()
        outbox.sent(item)
        taken.append((item.state, item.tasks_total))
    assert taken == [(State.QUEUED, 0), (State.RUNNING, 1)]
    start = trio.current_time()
    outbox.post(status(State.RUNNING, 2))
    outbox.post(status(State.RUNNING, 3))
    item = await outbox.take()
    assert (item.tasks_total, trio.current_time() - start) == (3, 1.0)
    outbox.sent(item)
    outbox.post(status(State.RUNNING, 4))
    outbox.post(status(State.SUCCESS, 5))
    before = trio.current_time()
    first = await outbox.take()
    # A paced update with a change of state behind it goes at once, not after the interval.
    assert trio.current_time() == before
    outbox.put_back(first)  # the broker went away: it goes out again, first
    again = await outbox.take()
    outbox.sent(again)
    final = await outbox.take()
    outbox.sent(final)
    assert (again.tasks_total, final.state) == (4, State.SUCCESS)
    with trio.fail_after(1):
        await outbox.wait_idle()
