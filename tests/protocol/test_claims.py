"""Claims on their own: who holds a job, releases, messages that are not claims, and the book's bound."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from ansible_worker.protocol.claims import Claim, ClaimBook, ClaimState, claim_document, read_claim, request_digest
from ansible_worker.protocol.signing import (
    SignatureRefused,
)


def claim(
    worker: str, claim_id: str, state: ClaimState = "claimed", *, expires: float = 100, releases: str | None = None
) -> Claim:
    if state == "released" and releases is None:
        releases = "c1"
    return Claim(worker, claim_id, state, expires, releases)


def test_claims_first_heard_wins_until_released_or_expired() -> None:
    book = ClaimBook()
    assert book.record("t", claim("a", "c1"), now=0)
    assert not book.record("t", claim("b", "c2"), now=1)
    holder = book.holder("t", now=2)
    assert holder is not None
    assert (holder.worker_id, holder.claim_id) == ("a", "c1")
    # The same claim heard again (retained, after a reconnect) keeps it.
    assert book.record("t", claim("a", "c1"), now=3)
    # A release counts only when it names the holder's claim.
    assert not book.record("t", claim("b", "r0", "released", releases="c2"), now=4)
    assert book.holder("t", now=4) == holder
    assert book.record("t", claim("a", "r1", "released", releases="c1"), now=5)
    assert book.holder("t", now=6) is None
    assert book.released("t", now=6)
    # A released claim never holds again, replayed or not.
    assert not book.record("t", claim("a", "c1"), now=6.5)
    assert book.record("t", claim("b", "c4", expires=50), now=7)
    claimed = book.holder("t", now=8)
    assert claimed is not None
    assert claimed.worker_id == "b"
    assert book.holder("t", now=58) is None


def test_a_release_for_a_claim_never_heard_counts_until_it_expires() -> None:
    book = ClaimBook()
    assert book.record("t", claim("a", "r1", "released", releases="c1", expires=10), now=0)
    assert book.released("t", now=5)
    assert not book.record("t", claim("a", "c1"), now=6)
    assert not book.released("t", now=11)


def test_a_release_names_the_request_it_hands_back() -> None:
    wall = datetime(2026, 1, 1, tzinfo=UTC)
    digest = request_digest(b'{"task_id": "t"}')

    def read(**fields: Any) -> Claim | None:
        document = claim_document("a", "r1", "released", expires_at=wall + timedelta(seconds=60), **fields)
        return read_claim(
            json.dumps(document).encode(), now=0, wall_now=wall, verify=None, expiry=None, default_lifetime=None
        )

    named = read(releases="c1", request_sha256=digest)
    assert named is not None
    assert named.request_sha256 == digest
    for unnamed in (read(releases="c1"), read(releases="c1", request_sha256="not a digest")):
        assert unnamed is not None
        assert unnamed.request_sha256 is None
    book = ClaimBook()
    book.record("t", claim("a", "c1"), now=0)
    book.record("t", named, now=1)
    assert book.released_request("t", now=2) == digest
    # Taken by the next worker: no request skips its age any more.
    book.record("t", claim("b", "c2"), now=3)
    assert book.released_request("t", now=4) is None
    # A release from an older worker names no request: none skips its age.
    old_style = read(releases="c9")
    assert old_style is not None
    book.record("u", old_style, now=5)
    assert book.released("u", now=6)
    assert book.released_request("u", now=6) is None


def test_claim_messages_that_are_not_claims_count_for_nothing() -> None:
    wall = datetime(2026, 1, 1, tzinfo=UTC)

    def read(payload: bytes, *, verify: Any = None, expiry: int | None = None) -> Claim | None:
        return read_claim(payload, now=1000, wall_now=wall, verify=verify, expiry=expiry, default_lifetime=300)

    def document(**fields: Any) -> bytes:
        return json.dumps(fields).encode()

    assert read(b"") is None
    assert read(b"not json") is None
    assert read(document(state="stolen", worker_id="x", claim="y")) is None
    assert read(document(state="released", worker_id="x", claim="y")) is None  # names no claim
    assert read(b" " * 5000 + document(state="claimed", worker_id="x", claim="y")) is None
    plain = read(document(state="claimed", worker_id="x", claim="y"))
    assert plain is not None
    assert plain.expires == 1300
    from_expiry = read(document(state="claimed", worker_id="x", claim="y"), expiry=30)
    assert from_expiry is not None
    assert from_expiry.expires == 1030
    signed_until = claim_document("x", "y", "claimed", expires_at=wall + timedelta(seconds=60))
    dated = read(json.dumps(signed_until).encode())
    assert dated is not None
    assert dated.expires == 1060
    past = claim_document("x", "y", "claimed", expires_at=wall - timedelta(seconds=1))
    assert read(json.dumps(past).encode()) is None

    def refuse(document: Any) -> None:
        raise SignatureRefused("bad signature")

    def accept(document: Any) -> None:
        return None

    # With signatures, a claim must say until when it holds, inside what is signed.
    assert read(document(state="claimed", worker_id="x", claim="y"), verify=accept, expiry=30) is None
    assert read(json.dumps(signed_until).encode(), verify=refuse) is None
    assert read(json.dumps(signed_until).encode(), verify=accept) is not None


def test_the_claim_book_is_bounded_and_forgets_the_oldest_first() -> None:
    book = ClaimBook(max_claims=100)
    for index in range(250):
        book.record(f"t{index}", claim("flood", f"c{index}", expires=300), now=index / 1000)
    assert len(book) == 100
    assert book.holder("t249", now=1) is not None
    assert book.holder("t149", now=1) is None
    assert book.holder("t150", now=1) is not None
    # A task already in the book keeps its entry when full: a release still lands.
    book.record("t200", claim("flood", "r", "released", releases="c200", expires=300), now=1)
    assert book.released("t200", now=1)
    assert len(book) == 100
