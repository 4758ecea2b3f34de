"""Run a job's Ansible, then again on the hosts its `retry` names, each attempt said in its status as it ends."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from ansible_worker.protocol.models import State, TaskRequest
from ansible_worker.run.job import Job
from ansible_worker.run.retries import attempt_summary, final_verdict, hosts_to_retry, limit_of
from ansible_worker.run.sinks import StatusSink

log = logging.getLogger(__name__)

Verdict = tuple[State, str | None]


async def run_attempts(job: Job, run: Callable[[TaskRequest], Awaitable[Verdict]], statuses: StatusSink) -> Verdict:
    """`run` the job's request, then, with `retry`, the same limited to the hosts to run again; the job's verdict.

    Without `retry` this is one run. With it, each attempt is added to `job.attempts` and
    published, and the next waits `retry.delay` seconds. Cancellation: between or during
    attempts, as a run is cancelled.
    """
    request = job.request
    verdict = await run(request)
    retry = request.retry
    if retry is None:
        return verdict
    first_error = verdict[1]
    _note_attempt(job, request.limit, statuses)
    while len(job.attempts) <= retry.attempts:
        again = hosts_to_retry(job.attempts[-1], retry.on)
        if not again:
            break
        log.info("task %s: attempt %d on %s", job.task_id, len(job.attempts) + 1, ", ".join(again))
        await trio.sleep(retry.delay)
        limited = request.model_copy(update={"limit": limit_of(again)})
        job.progress.next_attempt()
        verdict = await run(limited)
        _note_attempt(job, limited.limit, statuses)
    return final_verdict(verdict, first_error, job.attempts)


def _note_attempt(job: Job, limit: str | None, statuses: StatusSink) -> None:
    """Add the run of Ansible that just ended to the job's attempts, and publish them."""
    job.attempts.append(attempt_summary(len(job.attempts) + 1, limit, job.return_code, job.progress.recap))
    statuses.post(job.status())
