"""Takeover claims in the claim book: the first takeover that names the holder's claim wins, once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from ansible_worker.protocol.claims import Claim, ClaimBook, claim_document, read_claim, request_digest

WALL = datetime(2026, 1, 1, tzinfo=UTC)


def read(worker_id: str, claim_id: str, **fields: Any) -> Claim:
    document = claim_document(worker_id, claim_id, "claimed", expires_at=WALL + timedelta(seconds=600), **fields)
    claim = read_claim(
        json.dumps(document).encode(), now=0, wall_now=WALL, verify=None, expiry=None, default_lifetime=None
    )
    assert claim is not None
    return claim


def test_a_claim_carries_what_a_takeover_needs() -> None:
    digest = request_digest(b'{"task_id": "t"}')
    accepted, started = WALL - timedelta(seconds=30), WALL - timedelta(seconds=10)
    claim = read("a", "c1", request_sha256=digest, accepted_at=accepted, started_at=started)
    assert (claim.request_sha256, claim.accepted_at, claim.started_at) == (digest, accepted, started)
    # A claim's digest names its request copy, not a hand-back: no request skips its age for it.
    assert claim.handed_back is None
    takeover = read("b", "c2", takes_over="c1", lost_worker="a", accepted_at=accepted)
    assert (takeover.takes_over, takeover.lost_worker, takeover.accepted_at) == ("c1", "a", accepted)


def test_a_takeover_that_does_not_say_whom_it_takes_over_from_is_no_claim() -> None:
    document = claim_document("b", "c2", "claimed", expires_at=WALL + timedelta(seconds=60), takes_over="c1")
    assert (
        read_claim(json.dumps(document).encode(), now=0, wall_now=WALL, verify=None, expiry=None, default_lifetime=None)
        is None
    )


def test_the_first_takeover_naming_the_holder_wins_and_the_lost_claim_never_holds_again() -> None:
    book = ClaimBook()
    assert book.record("t", read("a", "c1"), now=0)
    # An ordinary claim by another worker still stands back.
    assert not book.record("t", read("c", "c9"), now=1)
    # A takeover naming a claim that does not hold the job counts for nothing.
    assert not book.record("t", read("b", "c2", takes_over="c0", lost_worker="a"), now=2)
    assert book.record("t", read("b", "c2", takes_over="c1", lost_worker="a"), now=3)
    holder = book.holder("t", now=4)
    assert holder is not None
    assert holder.worker_id == "b"
    # A second survivor's takeover of the same claim comes too late.
    assert not book.record("t", read("c", "c3", takes_over="c1", lost_worker="a"), now=5)
    # The lost worker, back, renews its claim: it never holds again.
    assert not book.record("t", read("a", "c1"), now=6)
    holder = book.holder("t", now=7)
    assert holder is not None
    assert holder.claim_id == "c2"
    # The survivor's own renewals count.
    assert book.record("t", read("b", "c2", takes_over="c1", lost_worker="a", started_at=WALL), now=8)


def test_a_takeover_heard_by_a_worker_that_never_heard_the_lost_claim_still_ends_it() -> None:
    book = ClaimBook()
    assert book.record("t", read("b", "c2", takes_over="c1", lost_worker="a"), now=0)
    assert not book.record("t", read("a", "c1"), now=1)
    holder = book.holder("t", now=2)
    assert holder is not None
    assert holder.worker_id == "b"
