"""The lock book: every worker orders the group's lock requests alike and grants all of a request's locks or none."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from ansible_worker.protocol.lock_messages import LockMessage, LockRequest, lock_document, read_lock_message
from ansible_worker.protocol.locks import LockBook
from ansible_worker.protocol.timestamps import format_utc

FAR = 1e9


def ask(book: LockBook, claim: str, worker: str, *locks: str, limits: tuple[tuple[str, int], ...] = ()) -> None:
    request = LockRequest(claim, f"task-{claim}", worker, frozenset(locks), limits)
    book.hear(LockMessage("acquire", worker, (request,), (), FAR), now=0)


def granted(book: LockBook, claim: str) -> bool:
    return not book.blockers(claim, now=1)


def test_first_come_first_served_all_at_once() -> None:
    book = LockBook()
    ask(book, "a", "w1", "web1", "web2")
    ask(book, "b", "w2", "web2", "web3")
    ask(book, "c", "w2", "web3")
    ask(book, "d", "w1", "web4")
    assert granted(book, "a")
    # b waits for a; c waits for b, although web3 is free: a waiter keeps its place.
    assert [blocker.task_id for blocker in book.blockers("b", now=1)] == ["task-a"]
    assert [blocker.task_id for blocker in book.blockers("c", now=1)] == ["task-b"]
    assert granted(book, "d")
    book.hear(LockMessage("release", "w1", (), ("a",)), now=1)
    assert granted(book, "b")
    assert not granted(book, "c")


def test_only_the_requesting_worker_releases_or_renews() -> None:
    book = LockBook()
    ask(book, "a", "w1", "web1")
    ask(book, "b", "w2", "web1")
    book.hear(LockMessage("release", "w2", (), ("a",)), now=1)
    assert not granted(book, "b")
    stolen = LockRequest("a", "task-a", "w2", frozenset({"web9"}))
    book.hear(LockMessage("renew", "w2", (stolen,), (), FAR), now=1)
    assert [blocker.locks for blocker in book.blockers("b", now=1)] == [frozenset({"web1"})]


def test_a_request_lapses_only_when_never_renewed() -> None:
    book = LockBook()
    book.hear(LockMessage("acquire", "w1", (LockRequest("a", "t", "w1", frozenset({"x"})),), (), 10.0), now=0)
    ask(book, "b", "w2", "x")
    assert book.blockers("b", now=5)
    # Its lifetime counts from when it was heard: until 30 now.
    book.hear(LockMessage("renew", "w1", (LockRequest("a", "t", "w1", frozenset({"x"})),), (), 25.0), now=5)
    assert book.blockers("b", now=29)
    assert not book.blockers("b", now=31)


def test_a_job_taken_over_frees_its_lost_workers_request_for_good() -> None:
    book = LockBook()
    ask(book, "a", "lost", "web1")
    ask(book, "b", "w2", "web1")
    ask(book, "c", "w2", "web2")
    assert not granted(book, "b")
    # A claim of the lost worker itself changes nothing; another worker's claim is a takeover.
    assert book.taken_over("task-a", "lost") == []
    assert [request.claim for request in book.taken_over("task-a", "w2")] == ["a"]
    assert granted(book, "b")
    # The lost worker, back, renews what it held: the request stays ended.
    book.hear(LockMessage("renew", "lost", (LockRequest("a", "task-a", "lost", frozenset({"web1"})),), (), FAR), now=1)
    assert granted(book, "b")
    assert not book.holds("a", now=1)
    assert book.holds("c", now=1)


def test_a_released_request_never_comes_back() -> None:
    book = LockBook()
    ask(book, "a", "w1", "web1")
    book.hear(LockMessage("release", "w1", (), ("a",)), now=1)
    ask(book, "a", "w1", "web1")
    ask(book, "b", "w2", "web1")
    assert granted(book, "b")


def test_max_concurrent_counts_the_requests_before() -> None:
    book = LockBook()
    cap = (("site.yml", 2),)
    for claim in "abc":
        ask(book, claim, "w1", limits=cap)
    assert granted(book, "a")
    assert granted(book, "b")
    assert {blocker.task_id for blocker in book.blockers("c", now=1)} == {"task-a", "task-b"}
    book.hear(LockMessage("release", "w1", (), ("a",)), now=1)
    assert granted(book, "c")


def test_messages_round_trip_and_noise_is_ignored() -> None:
    now = datetime.now(UTC)
    request = LockRequest("a", "t", "w1", frozenset({"web1"}), (("p", 2),))
    document = lock_document("acquire", "w1", requests=[request], lifetime=60, now=now)
    assert document["expires_at"] == format_utc(now + timedelta(seconds=60), timespec="milliseconds")
    # The lifetime it states counts, whatever the reader's wall clock says.
    heard = read_lock_message(json.dumps(document).encode(), wall_now=now + timedelta(hours=1), verify=None)
    assert heard is not None
    assert heard.requests == (request,)
    assert heard.lifetime == 60
    for noise in (b"", b"[]", b'{"type": "acquire"}', b'{"type": "acquire", "worker_id": "w", "requests": [1]}'):
        assert read_lock_message(noise, wall_now=now, verify=None) is None
