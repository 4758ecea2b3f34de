"""What a survivor does with a lost worker's job: end it, run it once, or free it; and which copy it trusts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ansible_worker.protocol.claims import Claim, request_digest
from ansible_worker.protocol.models import State
from ansible_worker.protocol.signing import SignatureRefused, Signer, TrustedKeys, generate_key_pair
from ansible_worker.worker.lost_jobs import (
    AlreadyEnded,
    EndAsLost,
    Free,
    RequestCopies,
    RunHere,
    check_taken_over,
    decide,
    lost_reason,
)

WALL = datetime(2026, 1, 1, tzinfo=UTC)
COPY = b'{"task_id": "t", "playbook": "quick.yml", "inventory": "inventory.ini"}'


def claim(*, started: bool = False, state: str = "claimed") -> Claim:
    return Claim(
        "a",
        "c1",
        "claimed" if state == "claimed" else "released",
        100,
        releases=None if state == "claimed" else "c0",
        request_sha256=request_digest(COPY),
        accepted_at=WALL,
        started_at=WALL if started else None,
    )


def test_a_job_that_never_started_runs_here_from_its_copy() -> None:
    assert decide(claim(), copy=COPY, last_state=State.QUEUED) == RunHere(COPY, WALL)
    assert decide(claim(state="released"), copy=COPY, last_state=None) == RunHere(COPY, WALL)


def test_a_job_that_may_have_started_ends_failed_and_never_runs_again() -> None:
    assert decide(claim(started=True), copy=COPY, last_state=State.QUEUED) == EndAsLost()
    # A status says it ran, whatever the claim says.
    assert decide(claim(), copy=COPY, last_state=State.RUNNING) == EndAsLost()


def test_a_job_that_has_its_terminal_status_only_has_its_copy_cleared() -> None:
    for state in (State.SUCCESS, State.FAILED, State.CANCELLED, State.TIMEOUT):
        assert decide(claim(started=True), copy=COPY, last_state=state) == AlreadyEnded()
        assert decide(claim(), copy=COPY, last_state=state) == AlreadyEnded()


def test_a_claim_with_no_matching_copy_is_freed() -> None:
    assert isinstance(decide(claim(), copy=None, last_state=None), Free)


def test_an_accepted_job_with_no_matching_copy_ends_failed_and_never_stays_queued() -> None:
    # A controller saw it queued (a claim of a worker from before request copies, or a copy replaced).
    assert decide(claim(), copy=None, last_state=State.QUEUED) == EndAsLost("no request copy matches its claim")
    assert lost_reason("w1", WALL, "no request copy matches its claim") == (
        "worker lost: w1 (last heard 2026-01-01T00:00:00Z); it had not started, and was not run here:"
        " no request copy matches its claim"
    )


def test_the_reason_names_the_worker_and_when_it_was_last_heard() -> None:
    assert lost_reason("w1", WALL) == "worker lost: w1 (last heard 2026-01-01T00:00:00Z)"


def test_a_copy_published_over_the_genuine_one_hides_nothing() -> None:
    copies = RequestCopies()
    copies.hear("t", COPY, max_bytes=4096)
    forged = b'{"task_id": "t", "playbook": "other.yml", "inventory": "inventory.ini"}'
    copies.hear("t", forged, max_bytes=4096)
    assert copies.matching("t", request_digest(COPY)) == COPY
    assert copies.matching("t", request_digest(b"never heard")) is None
    assert copies.matching("t", None) is None
    assert copies.task_ids() == ["t"]
    copies.hear("u", b"x" * 5000, max_bytes=4096)
    assert "u" not in copies
    copies.hear("t", b"", max_bytes=4096)
    assert len(copies) == 0


def test_a_taken_over_signed_job_is_aged_from_when_the_group_accepted_it(tmp_path: Path) -> None:
    generate_key_pair(tmp_path / "c.key", tmp_path / "c.pub")
    signer = Signer.from_file(tmp_path / "c.key")
    trusted = TrustedKeys.from_files({"ctl": tmp_path / "c.pub"})
    issued = datetime.now(UTC) - timedelta(hours=1)
    document = signer.sign("p/g/tasks", json.loads(COPY), now=issued)

    def check(accepted_at: datetime | None, topic: str = "p/g/tasks") -> None:
        check_taken_over(document, trusted=trusted, topic=topic, accepted_at=accepted_at, max_age=300, max_skew=60)

    # An hour old now, but fresh when the group accepted it.
    check(issued + timedelta(seconds=10))
    with pytest.raises(SignatureRefused, match="expired"):
        check(issued + timedelta(seconds=400))
    with pytest.raises(SignatureRefused, match="does not say when"):
        check(None)
    with pytest.raises(SignatureRefused):
        check(issued + timedelta(seconds=10), topic="p/other/tasks")


def test_the_copies_kept_are_bounded_in_number_and_bytes() -> None:
    copies = RequestCopies(max_tasks=3, max_bytes=100)
    for n in range(5):
        copies.hear(f"t{n}", b"x" * 30 + str(n).encode(), max_bytes=4096)
    # Three of 31 bytes fit in 100: the oldest went first.
    assert copies.task_ids() == ["t2", "t3", "t4"]
    copies.hear("t9", b"y" * 90, max_bytes=4096)
    assert copies.task_ids() == ["t9"]
    copies.hear("t9", b"", max_bytes=4096)
    copies.hear("t8", b"z" * 100, max_bytes=4096)
    assert copies.task_ids() == ["t8"]
