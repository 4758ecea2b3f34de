"""What a survivor keeps of the group's unsettled jobs, and how many it takes over at once, are bounded."""

from __future__ import annotations

import json
from typing import Any

import trio

from ansible_worker.mqtt.options import InboundMessage
from ansible_worker.protocol.claims import claim_document, request_digest
from ansible_worker.worker.group_claims import GroupClaims
from ansible_worker.worker.policies import ClaimPolicy
from ansible_worker.worker.takeover import MAX_TAKEOVERS
from tests.worker.test_unfinished_takeovers import COPY, LOST_AFTER, TOPICS, world


def lost_claim(task_id: str, *, expiry: int | None = None) -> InboundMessage:
    document = claim_document("a", f"c-{task_id}", "claimed", expires_at=None, request_sha256=request_digest(COPY))
    return InboundMessage(TOPICS.claim(task_id), json.dumps(document).encode(), 1, True, expiry)


async def test_an_unsettled_job_whose_claim_expired_is_forgotten(autojump_clock: trio.abc.Clock) -> None:
    claims, _, _, _ = world()
    for n in range(5):
        claims.hear(f"t{n}", lost_claim(f"t{n}", expiry=10))
    assert sorted(claims.unsettled) == [f"t{n}" for n in range(5)]
    await trio.sleep(120)
    claims.hear("later", lost_claim("later"))
    assert list(claims.unsettled) == ["later"]


async def test_a_lost_workers_many_jobs_are_taken_over_a_batch_at_a_time() -> None:
    claims, takeover, _, _ = world()
    for n in range(MAX_TAKEOVERS + 8):
        claims.hear(f"t{n}", lost_claim(f"t{n}"))
    start = trio.current_time()
    assert takeover.due(start) == []
    due = takeover.due(start + LOST_AFTER + 1)
    assert len(due) == MAX_TAKEOVERS
    assert len(set(due)) == MAX_TAKEOVERS


class Relay:
    """A broker session that delivers what is published, after whatever another worker published first."""

    def __init__(self) -> None:
        self.claims: GroupClaims | None = None
        self.first: list[dict[str, Any]] = []
        self.published: list[dict[str, Any]] = []

    async def publish(self, topic: str, payload: bytes, **options: object) -> None:
        assert self.claims is not None
        document = json.loads(payload)
        self.published.append(document)
        for message in [*self.first, document]:
            self.claims.hear("t", InboundMessage(topic, json.dumps(message).encode(), 1, False))
        self.first = []


async def test_a_claim_lost_leaves_nothing_behind_for_a_later_claim() -> None:
    relay = Relay()
    policy = ClaimPolicy(lifetime=3600, release_lifetime=360, settled_lifetime=3600)
    claims = relay.claims = GroupClaims(relay, TOPICS, worker_id="me", policy=policy)  # type: ignore[arg-type]
    first, handed_back = request_digest(b"first"), request_digest(b"handed back")
    relay.first = [claim_document("w2", "theirs", "claimed", expires_at=None, request_sha256=first)]
    assert not await claims.claim("t", "mine", request_sha256=first)
    # The winner hands the job back; this worker claims it again for the request handed back.
    release = claim_document("w2", "r", "released", expires_at=None, releases="theirs", request_sha256=handed_back)
    claims.hear("t", InboundMessage(TOPICS.claim("t"), json.dumps(release).encode(), 1, False))
    assert await claims.claim("t", "again", request_sha256=handed_back)
    mine = [document for document in relay.published if document["claim"] == "again"]
    assert [document.get("request_sha256") for document in mine] == [handed_back]
