"""Which launches with a tick's task_id are the tick itself: only what the scheduler fires, at a tick of its entry."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ansible_worker.templates.loading import Templates
from ansible_worker.templates.schedules import ScheduledEntry, scheduled_entries
from ansible_worker.templates.ticks import TickCheck
from ansible_worker.worker.intake import Accepted, Rejected, read_task_message
from tests.templates.test_templates_file import loaded

# Skipped by the clock in Berlin on 29 March 2026 (02:00 becomes 03:00): cron runs the 02:30 job at 03:00.
SPRING = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
AT = datetime(2026, 12, 24, 20, 0, 0, 500_000, tzinfo=UTC)


@pytest.fixture
def templates(playbook_dir: Path) -> Templates:
    """A dotted template with a nightly entry in Berlin, and a one-time entry within a second."""
    template = {
        "playbook": "quick.yml",
        "survey": {"count": {"type": "integer"}, "dry": {"type": "boolean"}},
        "schedule": [
            {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "extra_vars": {"count": 1, "dry": True}},
            {"at": "2026-12-24T20:00:00.5Z"},
        ],
    }
    return loaded(playbook_dir, {"web.deploy": template})


@pytest.fixture
def entries(templates: Templates) -> list[ScheduledEntry]:
    return scheduled_entries(templates)


def test_the_launch_the_scheduler_fires_is_a_tick(entries: list[ScheduledEntry]) -> None:
    nightly, once = entries
    check = TickCheck.of(entries)
    assert check.tick_of(nightly.launch(SPRING)) == SPRING
    assert check.tick_of(once.launch(AT)) == AT
    # Compared as JSON: key order and spacing are the sender's.
    reordered = json.loads(json.dumps(dict(reversed(list(nightly.launch(SPRING).items()))), indent=2))
    assert check.refusal(reordered) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"extra_vars": {"count": 2, "dry": True}}, "its launch is not the one"),
        # 1 and true are equal in Python, not in JSON, nor to a survey.
        ({"extra_vars": {"count": True, "dry": 1}}, "its launch is not the one"),
        ({"extra_vars": {"count": 1.0, "dry": True}}, "its launch is not the one"),
        ({"extra_vars": {"count": 1, "dry": True, "more": "x"}}, "its launch is not the one"),
        ({"limit": "web"}, "its launch is not the one"),
        ({"template": "other"}, "its launch is not the one"),
        ({"task_id": "web.deploy.{key}.20260329T003000Z"}, "2026-03-29T00:30:00+00:00 is not a tick of template"),
        ({"task_id": "web.deploy.{key}.2026329T010000Z"}, "is not a tick of template"),
        ({"task_id": "web.deploy.{key}.00010101T000000Z"}, "is not a tick of template"),
        ({"task_id": "web.deploy.{key}.99991231T235959Z"}, "is not a tick of template"),
        ({"task_id": "web.deploy.{key}.tomorrow"}, "'tomorrow' is not a moment"),
        ({"task_id": "web.deploy.{key}.20260329T010000Z.x"}, "names no schedule entry of this worker"),
    ],
)
def test_anything_else_under_a_ticks_task_id_is_not_a_tick(
    entries: list[ScheduledEntry], change: dict[str, Any], reason: str
) -> None:
    nightly = entries[0]
    check = TickCheck.of(entries)
    if "task_id" in change:
        change = {"task_id": change["task_id"].format(key=nightly.entry.key)}
    forged = {**nightly.launch(SPRING), **change}
    assert check.is_tick_id(forged["task_id"])
    refusal = check.refusal(forged)
    assert refusal is not None
    assert refusal.startswith("not a tick this worker's schedule makes: ")
    assert reason in refusal


def test_a_tick_taken_over_must_have_been_taken_within_max_task_age_of_its_time(
    entries: list[ScheduledEntry],
) -> None:
    nightly = entries[0]
    check = TickCheck.of(entries)
    launch = nightly.launch(SPRING)

    def taken(at: datetime | None) -> str | None:
        return check.taken_over(at, max_age=300, max_skew=30).refusal(launch)

    assert taken(SPRING + timedelta(seconds=300)) is None
    assert taken(SPRING - timedelta(seconds=30)) is None
    assert taken(SPRING + timedelta(seconds=301)) == (
        "tick 2026-03-29T01:00:00+00:00 was 301s old when the group took it, more than security.max_task_age (300s)"
    )
    assert taken(SPRING - timedelta(seconds=31)) == (
        "tick 2026-03-29T01:00:00+00:00 was taken 31s before its time, more than security.max_clock_skew (30s)"
    )
    assert taken(None) == "its claim does not say when the group accepted it"
    # Without a takeover (a hand-back's release bounds it), the tick's age is not asked.
    assert check.refusal(launch) is None


def test_with_signed_jobs_a_tick_is_read_unsigned_and_nothing_else_under_its_task_id(
    templates: Templates, entries: list[ScheduledEntry]
) -> None:
    """The signature check is never reached for a tick's task_id, and still is for every other."""
    nightly = entries[0]
    check = TickCheck.of(entries)
    asked: list[str] = []

    def verify(document: Any) -> Any:
        asked.append(document["task_id"])
        raise AssertionError("a tick's task_id reached the signature check")

    tick = json.dumps(nightly.launch(SPRING)).encode()
    match read_task_message(tick, max_bytes=4096, verify=verify, ticks=check, templates=templates):
        case Accepted(request, signed, kept):
            assert request.task_id == nightly.task_id(SPRING)
            assert (signed, kept) == (None, None)
        case other:
            raise AssertionError(other)
    with_signature = json.dumps({**nightly.launch(SPRING), "signature": {"key": "alice", "value": "..."}}).encode()
    refused = read_task_message(with_signature, max_bytes=4096, verify=verify, ticks=check)
    assert isinstance(refused, Rejected)
    assert refused.reason.startswith("not a tick this worker's schedule makes: its launch")
    assert asked == []
