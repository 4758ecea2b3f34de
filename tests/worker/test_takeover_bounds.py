"""What a survivor keeps of the group's unsettled jobs, and how many it takes over at once, are bounded."""

from __future__ import annotations

import json

import trio

from ansible_worker.mqtt.options import InboundMessage
from ansible_worker.protocol.claims import claim_document, request_digest
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
