"""Settle what a previous run of this worker left in its journal: claim and queue, report, or end it."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from ansible_worker.protocol.claims import Claim
from ansible_worker.protocol.models import JobStatus, State
from ansible_worker.protocol.timestamps import utc_now
from ansible_worker.run.argv import FIFO_VARIABLE
from ansible_worker.run.run_directory import EVENT_FIFO_NAME, RUN_DIRECTORY_PREFIX
from ansible_worker.templates.loading import NO_TEMPLATES, Templates
from ansible_worker.worker.claiming import Claimer
from ansible_worker.worker.intake import Accepted, Dropped, Rejected, read_task_message
from ansible_worker.worker.jobs import JobTable
from ansible_worker.worker.journal import Entry
from ansible_worker.worker.phases import Move

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: worker restarted"


async def settle_journal(
    entries: list[Entry],
    *,
    jobs: JobTable,
    claimer: Claimer,
    refuse: Callable[[str, str], None],
    max_message_bytes: int,
    kill_grace: float,
    holder_of: Callable[[str], Claim | None] = lambda task_id: None,
    templates: Templates = NO_TEMPLATES,
    templates_only: bool = False,
) -> None:
    """Settle each entry: a queued job is claimed and queued again, a running one ended and
    reported failed, and a terminal status published again.

    A job that was running is ended first (its processes outlive a worker killed alone),
    then reported, and its run directory removed. An entry whose task_id the table holds
    already (a copy arrived before the journal was read) is left to that copy, but for the
    processes a run left. An entry whose job another worker's claim holds now (it was taken
    over while this worker was away; `holder_of` answers from the claims, which the caller
    has synced) is fenced: its left-over run is ended, nothing is published, the row goes.

    Cancellation: the kill grace of a left-over run is cut short; the entries not yet
    settled stay in the journal for the next start.
    """
    for entry in entries:
        holder = holder_of(entry.task_id)
        if holder is not None and holder.claim_id not in (entry.claim_id or "").split():
            await _fence(entry, holder, jobs=jobs, kill_grace=kill_grace)
            continue
        # A copy of the job came before the journal was read: the row is the copy's now.
        copied = jobs.phase(entry.task_id) is not None
        if entry.state == State.QUEUED:
            if not copied:
                # A launch is kept as it came, and expanded again with the templates of now.
                read = read_task_message(
                    entry.payload, max_bytes=max_message_bytes, templates=templates, templates_only=templates_only
                )
                _queue_again(entry, read, jobs=jobs, claimer=claimer, refuse=refuse)
            continue
        status = JobStatus.model_validate(entry.status)
        if entry.state == State.RUNNING:
            log.info("task %s was running when the worker stopped: ending it, reporting it failed", entry.task_id)
            if entry.run_dir is not None:
                await end_left_over_run(Path(entry.run_dir), kill_grace=kill_grace)
            status = status.model_copy(
                update={
                    "state": State.FAILED,
                    "error_message": INTERRUPTED,
                    "completed_at": utc_now(),
                    "current_task": None,
                }
            )
        else:
            log.info("task %s: publishing its %s status again", entry.task_id, entry.state)
        if copied:
            log.warning("task %s: a copy of the job came before its journal entry was read; left to it", entry.task_id)
            continue
        # Its claim is renewed once this terminal status is out, as for any job that ends.
        jobs.report(status, claim_id=entry.claim_id.split()[-1] if entry.claim_id else None)


async def _fence(entry: Entry, holder: Claim, *, jobs: JobTable, kill_grace: float) -> None:
    """An entry taken over by `holder` while this worker was away: its left-over run ends, nothing is published."""
    log.warning(
        "task %s: taken over by %s while this worker was away; ended here, nothing published",
        entry.task_id,
        holder.worker_id,
    )
    if entry.state == State.RUNNING and entry.run_dir is not None:
        await end_left_over_run(Path(entry.run_dir), kill_grace=kill_grace)
    if jobs.phase(entry.task_id) is None:
        jobs.move(entry.task_id, Move.DROP)


def _queue_again(
    entry: Entry,
    read: Accepted | Rejected | Dropped,
    *,
    jobs: JobTable,
    claimer: Claimer,
    refuse: Callable[[str, str], None],
) -> None:
    """Claim and queue again a job the journal kept queued, or drop it when its message no longer reads."""
    match read:
        case Accepted(request):
            log.info("task %s was queued before a restart: queueing it again", entry.task_id)
            # Its claim is this worker's, unless the group gave it to another since.
            earlier = frozenset((entry.claim_id or "").split())
            refusal = claimer.start(request, entry.payload, earlier=earlier, from_journal=True)
            if refusal is not None:
                refuse(entry.task_id, refusal)
        case _:
            jobs.move(entry.task_id, Move.DROP)


async def end_left_over_run(run_dir: Path, *, kill_grace: float) -> None:
    """End every process of a run a previous worker process left, and remove its directory.

    Cancellation: the processes may not all have ended; the directory is left.
    """
    from ansible_worker.run.process.stray_processes import end_marked

    await end_marked(FIFO_VARIABLE, str(run_dir / EVENT_FIFO_NAME), kill_grace=kill_grace)
    _remove_run_directory(run_dir)


def _remove_run_directory(run_dir: Path) -> None:
    """Remove a left-over run directory; synchronous, once per interrupted job at start."""
    # Only a directory this worker made (the journal is 0600, but be sure of what is deleted).
    if run_dir.name.startswith(RUN_DIRECTORY_PREFIX) and run_dir.is_dir() and not run_dir.is_symlink():
        shutil.rmtree(run_dir, ignore_errors=True)
