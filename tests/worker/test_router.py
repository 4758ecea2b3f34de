"""The router decides every message with no broker: each rule, in its order, on a plain view of the worker."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from ansible_worker.mqtt.options import InboundMessage
from ansible_worker.protocol.models import TaskRequest
from ansible_worker.protocol.signing import SignatureRefused, Verified
from ansible_worker.protocol.timestamps import utc_now
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker.router import Cancel, Claim, HearClaim, HearOwnPresence, HearPeer, Ignore, Refuse, Router

TOPICS = Topics("ansible", "g")


@dataclass
class View:
    """A worker's state as the router sees it, set by each test."""

    holders: dict[str, str] = field(default_factory=dict)
    queued: set[str] = field(default_factory=set)
    claims: set[str] = field(default_factory=set)
    hand_backs: set[str] = field(default_factory=set)
    queue_full: bool = False
    shutting_down: bool = False
    taking_claims: bool = True

    def holder_of(self, task_id: str) -> str | None:
        return self.holders.get(task_id)

    def in_queue(self, task_id: str) -> bool:
        return task_id in self.queued

    def claiming(self, task_id: str) -> bool:
        return task_id in self.claims

    def handing_back(self, task_id: str) -> bool:
        return task_id in self.hand_backs


def forbid_secret(request: TaskRequest) -> str | None:
    return "playbook 'secret.yml' is not allowed" if request.playbook == "secret.yml" else None


ROUTER = Router(TOPICS, worker_id="me", max_message_bytes=4096, queue_size=3, admission_error=forbid_secret)


def task(task_id: str = "t1", playbook: str = "site.yml", **fields: object) -> InboundMessage:
    body = {"task_id": task_id, "playbook": playbook, "inventory": "hosts", **fields}
    return InboundMessage(TOPICS.tasks, json.dumps(body).encode(), qos=2, retain=False)


def test_a_valid_job_is_claimed_with_its_exact_payload() -> None:
    message = task()
    action = ROUTER.route(message, View())
    assert isinstance(action, Claim)
    assert action.request.task_id == "t1"
    assert action.payload == message.payload
    assert action.signer is None


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\xff", "not UTF-8"),
        (b"{", "invalid JSON"),
        (b"[1]", "JSON array"),
        (b'{"playbook": "x.yml"}', "no task_id"),
        (b'{"task_id": "a b"}', "is not 1-128 characters"),
    ],
)
def test_a_message_without_a_usable_task_id_is_dropped_and_counted(payload: bytes, why: str) -> None:
    action = ROUTER.route(InboundMessage(TOPICS.tasks, payload, qos=2, retain=False), View())
    assert isinstance(action, Ignore)
    assert why in action.reason
    assert action.refused


def test_an_invalid_job_with_a_task_id_is_refused_with_the_field_named() -> None:
    action = ROUTER.route(task(playbook="/etc/passwd", forks=-1), View())
    assert isinstance(action, Refuse)
    assert action.task_id == "t1"
    assert "forks" in action.reason


def test_a_message_over_the_limit_is_refused_with_its_size() -> None:
    action = ROUTER.route(task(extra_vars={"big": "x" * 5000}), View())
    assert isinstance(action, Refuse)
    assert "message too large" in action.reason
    assert "max 4096" in action.reason


def test_a_forbidden_job_is_refused_before_anything_is_claimed() -> None:
    action = ROUTER.route(task(playbook="secret.yml"), View())
    assert action == Refuse("t1", "playbook 'secret.yml' is not allowed")


def test_rules_apply_in_order() -> None:
    """A duplicate here is noticed before the policy; the group's holder before the queue's room."""
    assert isinstance(ROUTER.route(task(playbook="secret.yml"), View(queued={"t1"})), Ignore)
    held = ROUTER.route(task(), View(holders={"t1": "other"}, queue_full=True))
    assert isinstance(held, Ignore)
    assert "worker other" in held.reason
    assert isinstance(ROUTER.route(task(), View(claims={"t1"}, queue_full=True)), Ignore)


def test_a_full_queue_refuses_with_its_size_but_not_while_shutting_down() -> None:
    assert ROUTER.route(task(), View(queue_full=True)) == Refuse("t1", "queue full (max 3)")
    # Shutting down, the job is refused for that reason instead (or handed back once claimed).
    action = ROUTER.route(task(), View(queue_full=True, shutting_down=True, taking_claims=False))
    assert action == Refuse("t1", "the worker is shutting down")


def test_a_copy_of_a_job_being_handed_back_is_ignored() -> None:
    action = ROUTER.route(task(), View(hand_backs={"t1"}, shutting_down=True))
    assert isinstance(action, Ignore)
    assert "handing it back" in action.reason


def test_a_closed_claims_nursery_refuses_new_jobs() -> None:
    assert ROUTER.route(task(), View(taking_claims=False)) == Refuse("t1", "the worker is shutting down")


def test_signatures_are_checked_first_and_the_signer_is_kept() -> None:
    def verify(document: object) -> Verified:
        assert isinstance(document, dict)
        if document.get("sig") != "good":
            raise SignatureRefused("not signed by a trusted key")
        # What the signature covers, which is not what arrived: the worker keeps the former.
        return Verified(signer="alice", issued_at=utc_now(), document={**document, "signed": True})

    router = Router(
        TOPICS,
        worker_id="me",
        max_message_bytes=4096,
        queue_size=3,
        admission_error=forbid_secret,
        verify_task=lambda payload: verify,
    )
    refused = router.route(task(playbook="secret.yml"), View())
    assert refused == Refuse("t1", "not signed by a trusted key")
    claimed = router.route(task(sig="good"), View())
    assert isinstance(claimed, Claim)
    assert claimed.signer == "alice"
    assert json.loads(claimed.payload)["signed"] is True


@pytest.mark.parametrize(
    ("view", "where"),
    [(View(queued={"t1"}), "queue"), (View(claims={"t1"}), "claim"), (View(hand_backs={"t1"}), "hand-back")],
)
def test_a_cancel_goes_to_where_the_job_is(view: View, where: str) -> None:
    body = json.dumps({"reason": "stop", "requested_by": "bob"}).encode()
    action = ROUTER.route(InboundMessage(TOPICS.cancel("t1"), body, qos=1, retain=False), view)
    assert isinstance(action, Cancel)
    assert (action.task_id, action.where, action.request.describe()) == ("t1", where, "cancelled by bob: stop")


def test_a_cancel_for_a_job_not_held_or_malformed_changes_nothing() -> None:
    empty = InboundMessage(TOPICS.cancel("t1"), b"", qos=1, retain=False)
    assert isinstance(ROUTER.route(empty, View()), Ignore)
    big = InboundMessage(TOPICS.cancel("t1"), b"x" * 20_000, qos=1, retain=False)
    ignored = ROUTER.route(big, View(queued={"t1"}))
    assert isinstance(ignored, Ignore)
    assert "too large" in ignored.reason


def test_claims_and_presence_go_to_their_books_and_other_topics_are_ignored() -> None:
    claim = InboundMessage(TOPICS.claim("t1"), b"{}", qos=1, retain=True)
    assert ROUTER.route(claim, View()) == HearClaim("t1", claim)
    peer = InboundMessage(TOPICS.worker("w2"), b"{}", qos=1, retain=True)
    assert ROUTER.route(peer, View()) == HearPeer("w2", b"{}")
    # Its own presence, heard back, is how the worker knows the broker sent it all before it.
    own = ROUTER.route(InboundMessage(TOPICS.worker("me"), b"{}", qos=1, retain=True), View())
    assert own == HearOwnPresence(b"{}")
    stray = ROUTER.route(InboundMessage("elsewhere/x", b"", qos=0, retain=False), View())
    assert isinstance(stray, Ignore)
    assert "unexpected topic" in stray.reason
