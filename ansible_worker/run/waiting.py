"""Say in a job's status what it waits for once it has begun, when the wait lasts: a fetch, a warm parent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ansible_worker.lone_errors import unwrap_lone_errors
from ansible_worker.run.job import Job
from ansible_worker.run.sinks import StatusSink

# A wait of a running job shorter than this (a fetch, a warm parent) is not said in its status.
SAY_WAITING_AFTER = 0.5


@asynccontextmanager
async def waiting(job: Job, statuses: StatusSink, reason: dict[str, Any]) -> AsyncIterator[None]:
    """For the block, `reason` is why the job waits, said in its status once the block lasts `SAY_WAITING_AFTER`.

    The block's own error leaves as itself (a failed fetch keeps its message).
    """

    async def say() -> None:
        await trio.sleep(SAY_WAITING_AFTER)
        job.waiting_for = reason
        statuses.post(job.status(progress_only=True))

    try:
        with unwrap_lone_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(say)
                try:
                    yield
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        if job.waiting_for is reason:
            job.waiting_for = None
            statuses.post(job.status(progress_only=True))
