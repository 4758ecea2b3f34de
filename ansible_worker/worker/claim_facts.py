"""What this worker's claim on a job says besides who holds it, and the claim message that carries it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ansible_worker.protocol.claims import ClaimState, claim_document

__all__ = ["ClaimFacts", "claim_message"]


@dataclass(frozen=True, slots=True)
class ClaimFacts:
    """What this worker's claim on one job says besides who holds it; every publication of the claim carries it.

    `request_sha256` names the request copy while the job is unsettled; once `settled`, the
    next publication leaves it out, which tells the group that nothing is left to take over.
    """

    accepted_at: datetime
    request_sha256: str | None = None
    started_at: datetime | None = None
    takes_over: str | None = None
    lost_worker: str | None = None
    settled: bool = False


def claim_message(
    worker_id: str,
    claim_id: str,
    state: ClaimState,
    *,
    facts: ClaimFacts | None,
    expires_at: datetime | None,
    releases: str | None = None,
    request_sha256: str | None = None,
    accepted_at: datetime | None = None,
) -> dict[str, Any]:
    """The claim (with `facts`: every fact a survivor needs) or release document, unsigned."""
    if facts is not None:
        return claim_document(
            worker_id,
            claim_id,
            state,
            expires_at=expires_at,
            request_sha256=facts.request_sha256,
            accepted_at=facts.accepted_at,
            started_at=facts.started_at,
            takes_over=facts.takes_over,
            lost_worker=facts.lost_worker,
        )
    return claim_document(
        worker_id,
        claim_id,
        state,
        expires_at=expires_at,
        releases=releases,
        request_sha256=request_sha256,
        accepted_at=accepted_at,
    )
