"""Intake classifies every payload of the tasks topic: accepted, rejected with a reason, or dropped."""

from __future__ import annotations

import pytest

from ansible_worker.worker.intake import Accepted, Dropped, Rejected, read_task_message


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


def test_a_number_of_more_digits_than_python_converts_is_dropped_not_raised() -> None:
    payload = b'{"task_id": "a", "playbook": "site.yml", "inventory": "hosts", "n": ' + b"1" * 5000 + b"}"
    read = read_task_message(payload, max_bytes=1_000_000)
    assert isinstance(read, Dropped)
    assert read.reason.startswith("invalid JSON")


def test_an_age_before_year_one_is_a_clear_error() -> None:
    from ansible_worker.controller.job_filter import parse_since

    with pytest.raises(ValueError, match="--since '999999d': an age that reaches before year 1"):
        parse_since("999999d")
