"""The one factory of terminal statuses for jobs that never ran: refusals and cancellations before a start."""

from __future__ import annotations

from datetime import datetime

from ansible_worker.protocol.models import JobStatus, State
from ansible_worker.protocol.timestamps import utc_now

# What a job queued but never started says when its worker shuts down.
SHUT_DOWN_BEFORE_START = "cancelled: the worker shut down before the job started"


def early_status(
    task_id: str,
    state: State,
    reason: str,
    *,
    worker_id: str,
    playbook: str | None = None,
    created_at: datetime | None = None,
    live_only: bool = False,
) -> JobStatus:
    """A terminal `state` with `reason` as its `error_message`, for a job that never started.

    `live_only` marks a refusal of a message that never became a job: it is published
    without retain, so it cannot replace the status of a job that ran somewhere else.
    """
    assert state.terminal, state
    now = utc_now()
    return JobStatus(
        task_id=task_id,
        state=state,
        created_at=created_at or now,
        completed_at=now,
        error_message=reason,
        worker_id=worker_id,
        playbook=playbook,
        refused=live_only,
    )
