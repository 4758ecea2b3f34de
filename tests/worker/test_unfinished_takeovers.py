"""A takeover decides on the newest word of the lost worker, and one this worker won but did not settle is settled again.

The group's claims are heard as the broker would deliver them; the broker session, the
job table and the status topic are stand-ins that record what the takeover asks of them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import trio

from ansible_worker.mqtt.options import InboundMessage
from ansible_worker.protocol.claims import claim_document, request_digest
from ansible_worker.protocol.models import JobStatus, State, TaskRequest
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker.claim_sync import ClaimSync
from ansible_worker.worker.group_claims import GroupClaims
from ansible_worker.worker.liveness import Liveness
from ansible_worker.worker.lost_jobs import EndAsLost, Free, RequestCopies, RunHere
from ansible_worker.worker.policies import ClaimPolicy
from ansible_worker.worker.takeover import Takeover

TOPICS = Topics("p", "g")
COPY = b'{"task_id": "t", "playbook": "quick.yml", "inventory": "inventory.ini"}'
LOST_AFTER = 6.0
ACCEPTED = datetime(2026, 1, 1, tzinfo=UTC)


class Session:
    """What the claims publish, and nothing else."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, topic: str, payload: bytes, **options: object) -> None:
        self.published.append((topic, json.loads(payload)))


class Hands:
    """The job table as a takeover sees it: records what it is asked to do."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.ran: list[tuple[str, str, str]] = []
        self.ended: list[tuple[JobStatus, str]] = []
        self.settled_jobs: list[tuple[str, str | None]] = []

    def holds(self, task_id: str) -> bool:
        return task_id in self.held

    async def run_taken_over(self, request: TaskRequest, payload: bytes, claim_id: str, *, taken_from: str) -> None:
        self.held.add(request.task_id)
        self.ran.append((request.task_id, claim_id, taken_from))

    def end_lost(self, status: JobStatus, claim_id: str) -> None:
        self.ended.append((status, claim_id))

    def settled(self, task_id: str, claim_id: str | None) -> None:
        self.settled_jobs.append((task_id, claim_id))


def world() -> tuple[GroupClaims, Takeover, Hands, Session]:
    session = Session()
    policy = ClaimPolicy(lifetime=3600, release_lifetime=360, settled_lifetime=3600)
    claims = GroupClaims(session, TOPICS, worker_id="me", policy=policy)  # type: ignore[arg-type]
    liveness = Liveness(own_id="me", lost_after=LOST_AFTER)
    liveness.connected_at(trio.current_time())
    copies = RequestCopies()
    copies.hear("t", COPY, max_bytes=10_000)
    hands = Hands()

    async def no_status(topic: str) -> bytes | None:
        return None

    def check(payload: bytes, accepted_at: datetime | None) -> TaskRequest | str:
        return TaskRequest.model_validate_json(payload)

    takeover = Takeover(
        claims,
        liveness,
        copies,
        ClaimSync(session, trio.sleep_forever, gap=3),  # type: ignore[arg-type]
        hands,
        topics=TOPICS,
        read_retained=no_status,
        check_copy=check,
    )
    return claims, takeover, hands, session


def hear(claims: GroupClaims, document: dict[str, Any]) -> None:
    claims.hear("t", InboundMessage(TOPICS.claim("t"), json.dumps(document).encode(), 1, True))


def lost_claim(digest: str | None) -> dict[str, Any]:
    return claim_document("a", "c1", "claimed", expires_at=None, request_sha256=digest, accepted_at=ACCEPTED)


def own_takeover(digest: str | None) -> dict[str, Any]:
    return claim_document(
        "me",
        "s1",
        "claimed",
        expires_at=None,
        request_sha256=digest,
        accepted_at=ACCEPTED,
        takes_over="c1",
        lost_worker="a",
    )


async def test_a_takeover_retained_after_its_confirmation_timed_out_is_settled_by_this_worker(
    autojump_clock: trio.abc.Clock,
) -> None:
    claims, takeover, hands, session = world()
    hear(claims, lost_claim(request_digest(COPY)))
    # The broker is slow: the takeover goes out, but is not heard back within CLAIM_TIMEOUT.
    assert await takeover.take_over("t") is None
    [(_, sent)] = session.published
    assert (sent["takes_over"], sent["lost_worker"]) == ("c1", "a")
    # Then the broker delivers it: it holds the job in this worker's name, and nobody else
    # will settle it.
    hear(claims, sent)
    start = trio.current_time()
    assert takeover.due(start) == []
    assert takeover.due(start + LOST_AFTER / 2) == ["t"]
    assert isinstance(await takeover.take_over("t"), RunHere)
    assert hands.ran == [("t", sent["claim"], "a")]
    # Held by the table now: not due again.
    assert takeover.due(start + LOST_AFTER * 10) == []
    # Its next publication says what the takeover said.
    await claims.refresh("t", sent["claim"])
    _, renewed = session.published[-1]
    assert (renewed["claim"], renewed["takes_over"], renewed["lost_worker"]) == (sent["claim"], "c1", "a")
    assert renewed["request_sha256"] == request_digest(COPY)
    assert renewed["accepted_at"] == sent["accepted_at"]


async def test_a_freed_takeover_whose_release_was_not_heard_is_released_again() -> None:
    claims, takeover, hands, session = world()
    other = request_digest(b"another request")
    # A restart under the same worker_id, without the journal: the takeover is heard again,
    # its job had no copy (Free), and the release of the last run never reached the broker.
    hear(claims, own_takeover(other))
    start = trio.current_time()
    assert takeover.due(start) == []
    assert takeover.due(start + LOST_AFTER) == ["t"]
    assert isinstance(await takeover.take_over("t"), Free)
    assert [(topic, document["state"], document.get("releases")) for topic, document in session.published] == [
        (TOPICS.claim("t"), "released", "s1")
    ]
    assert hands.settled_jobs == [("t", None)]
    # Heard back, the release ends it: nothing is due any more.
    _, release = session.published[-1]
    hear(claims, release)
    assert takeover.due(start + LOST_AFTER * 10) == []


async def test_a_takeover_the_table_holds_is_not_settled_again() -> None:
    claims, takeover, hands, _ = world()
    hear(claims, lost_claim(request_digest(COPY)))
    hear(claims, own_takeover(request_digest(COPY)))
    # Running here, or its end on its way: the table settles it.
    hands.held.add("t")
    start = trio.current_time()
    assert takeover.due(start) == []
    assert takeover.due(start + LOST_AFTER * 10) == []
    assert await takeover.take_over("t") is None
    assert hands.ran == []


class Relay(Session):
    """A broker session that delivers what is published, after what the lost worker published first."""

    def __init__(self, claims: GroupClaims, first: list[dict[str, Any]]) -> None:
        super().__init__()
        self.claims, self.first = claims, first

    async def publish(self, topic: str, payload: bytes, **options: object) -> None:
        await super().publish(topic, payload)
        for document in [*self.first, json.loads(payload)]:
            hear(self.claims, document)
        self.first = []


async def test_a_takeover_decides_on_the_lost_workers_newest_claim_heard_before_it() -> None:
    claims, takeover, hands, _ = world()
    hear(claims, lost_claim(request_digest(COPY)))
    # Its worker said the job may have started just before the takeover reached the broker.
    started = {**lost_claim(request_digest(COPY)), "started_at": "2026-01-01T00:00:05.000Z"}
    relay = claims.session = Relay(claims, [started])  # type: ignore[assignment]
    assert isinstance(await takeover.take_over("t"), EndAsLost)
    assert hands.ran == []
    [(status, claim_id)] = hands.ended
    assert (status.state, status.taken_over_by) == (State.FAILED, "me")
    # The takeover says so too, before anything is published for the job: settled again
    # (after a restart), it is never run.
    takeover_claims = [document for _, document in relay.published if document["claim"] == claim_id]
    assert "started_at" not in takeover_claims[0]
    assert takeover_claims[-1]["started_at"]
