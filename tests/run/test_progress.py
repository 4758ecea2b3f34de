"""The progress reducer counts as Ansible's recap does, from callback events alone."""

from __future__ import annotations

from typing import Any

from ansible_worker.run.events.progress import Progress


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
