"""The lock book: every worker orders the group's lock requests alike and grants all of a request's locks or none."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from ansible_worker.protocol.lock_messages import (
    MAX_LIFETIME,
    LockMessage,
    LockRequest,
    lock_document,
    read_lock_message,
    renewal_parts,
    request_bytes,
)
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


def test_a_renewal_is_cut_into_parts_that_fit_in_order() -> None:
    requests = [LockRequest(f"c{n}", f"t{n}", "w1", frozenset({f"host{n}".ljust(200, "x")})) for n in range(30)]
    budget = 2000
    parts = renewal_parts(requests, budget=budget)
    assert [request for part in parts for request in part] == requests
    assert len(parts) > 1
    assert all(sum(request_bytes(request) + 2 for request in part) <= budget for part in parts)
    assert renewal_parts([]) == [[]]


def test_ids_longer_than_a_task_id_or_a_lifetime_that_is_no_duration_count_for_nothing() -> None:
    now = datetime.now(UTC)

    def message(**fields: object) -> bytes:
        request = {"claim": "c1", "task_id": "t1", "locks": ["web1"], "limits": {}}
        document = {"type": "acquire", "worker_id": "w1", "lifetime": 60, "requests": [request], **fields}
        return json.dumps(document).encode()

    assert read_lock_message(message(), wall_now=now, verify=None) is not None
    assert read_lock_message(message(worker_id="w" * 129), wall_now=now, verify=None) is None
    long_task = [{"claim": "c1", "task_id": "t" * 129, "locks": ["web1"], "limits": {}}]
    assert read_lock_message(message(requests=long_task), wall_now=now, verify=None) is None
    for lifetime in (0, -5, "60", True):
        assert read_lock_message(message(lifetime=lifetime), wall_now=now, verify=None) is None
    huge = read_lock_message(message(lifetime=1e400), wall_now=now, verify=None)
    assert huge is not None
    assert huge.lifetime == MAX_LIFETIME


def test_a_sync_names_its_round_and_a_renewal_the_rounds_it_answers() -> None:
    now = datetime.now(UTC)
    sync = read_lock_message(json.dumps(lock_document("sync", "w1", round_id="r1")).encode(), wall_now=now, verify=None)
    assert sync is not None
    assert sync.round == "r1"
    answer = lock_document("renew", "w2", lifetime=60, answers=["r1", "x" * 200])
    heard = read_lock_message(json.dumps(answer).encode(), wall_now=now, verify=None)
    assert heard is not None
    assert heard.answers == ("r1",)
    # A renewal that says nothing of rounds comes from a worker that predates them.
    older = {"type": "renew", "worker_id": "w2", "requests": [], "expires_at": format_utc(now + timedelta(seconds=60))}
    heard = read_lock_message(json.dumps(older).encode(), wall_now=now, verify=None)
    assert heard is not None
    assert heard.answers is None
    assert 59 < heard.lifetime <= 60


def test_a_signed_renewal_renews_only_when_signed_after_the_last_that_did() -> None:
    book = LockBook()
    request = LockRequest("a", "t", "w1", frozenset({"x"}))
    first = datetime(2026, 1, 1, tzinfo=UTC)
    book.hear(LockMessage("acquire", "w1", (request,), (), 10.0, issued=first + timedelta(seconds=5)), now=0)
    ask(book, "b", "w2", "x")
    # A replay of an older renewal (or of the acquire itself) renews nothing.
    book.hear(LockMessage("renew", "w1", (request,), (), 10.0, issued=first), now=8)
    book.hear(LockMessage("renew", "w1", (request,), (), 10.0, issued=first + timedelta(seconds=5)), now=8)
    assert not book.blockers("b", now=11)
    book = LockBook()
    book.hear(LockMessage("acquire", "w1", (request,), (), 10.0, issued=first), now=0)
    ask(book, "b", "w2", "x")
    book.hear(LockMessage("renew", "w1", (request,), (), 10.0, issued=first + timedelta(seconds=1)), now=8)
    assert book.blockers("b", now=11)
