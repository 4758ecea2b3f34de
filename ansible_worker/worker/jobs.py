"""The job table: each job this worker holds, its phase, its pending cancel and its run; the journal's only writer.

Every task_id the worker holds maps to one `JobEntry`. A change of phase is a move of
`phases.TRANSITIONS`, made by `move` and nowhere else; a move the table lacks raises
`MoveRefused`, with nothing changed. Each move writes the journal once, as `phases.JOURNAL`
says, before the phase changes: a write that fails as a job is accepted refuses the job.

The journal and what the broker was sent cannot drift apart. A job's statuses reach the
status path only through this table (`post`, `post_progress`, and the statuses the table
makes itself), and each is journaled as the move it makes before it is handed on: a
progress update when it is built for publishing, and only while the job runs, so that a late
update never rewinds the terminal status journaled before it. A row is forgotten only when
the broker has acknowledged the job's terminal status (`sent`), or when the group has the
job (a hand-back taken, a claim lost). So the journal is never behind the broker: a restart
finds every job whose end the broker may not have, with the newest status that went out.

The claim that holds a job is kept here too: `held_claims` for the keep-alive, and renewed
once when the job's terminal status is out.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ansible_worker.protocol.models import CancelRequest, JobStatus, State, TaskRequest
from ansible_worker.protocol.statuses import SHUT_DOWN_BEFORE_START, early_status
from ansible_worker.protocol.timestamps import utc_now
from ansible_worker.run.job import Job
from ansible_worker.worker.claim_keeper import ClaimKeeper
from ansible_worker.worker.job_entry import JobEntry
from ansible_worker.worker.phases import JOURNAL, Move, Phase, next_phase, status_move
from ansible_worker.worker.policies import QueuePolicy
from ansible_worker.worker.status_path import UNPUBLISHABLE, StatusPath

if TYPE_CHECKING:
    # sqlite3 is loaded only by workers that keep a journal.
    from ansible_worker.worker.journal import Journal

log = logging.getLogger(__name__)

# The phases in which a job is in the queue or a slot: leaving them, it is done here.
IN_SLOTS = frozenset({Phase.QUEUED, Phase.RUNNING})
# Queued jobs told their new place when one leaves the queue (the others keep an upper bound).
SAY_POSITIONS = 32


class JobTable:
    """Every job this worker holds, by task_id, each in one phase, and the queue the slots take jobs from.

    The table is the runner's status sink (`post`, `post_progress`, `started`) and hears from
    the status publisher what the broker took (`sent`, `unpublishable`). A job that never runs
    is announced through `announce`, which the worker sets to the runner's (it logs and counts).
    """

    def __init__(
        self,
        statuses: StatusPath,
        keeper: ClaimKeeper,
        *,
        worker_id: str,
        queue: QueuePolicy,
        journal: Journal | None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.statuses = statuses
        self.keeper = keeper
        self.worker_id = worker_id
        self.queue_size = queue.size
        self.journal = journal
        # Rung when a job changes phase: what the presence shows may have changed.
        self.on_change = on_change
        self.announce: Callable[[Job], None] = lambda job: self.post(job.status())
        # Told when a job is settled (its terminal status acknowledged), before its claim is renewed.
        self.on_settled: Callable[[str], None] = lambda task_id: None
        # Told when a job is fenced: its pending statuses are to be dropped.
        self.on_fenced: Callable[[str], None] = lambda task_id: None
        # Jobs that left the queue or a slot: ended, or handed back.
        self.jobs_done = 0
        self._entries: dict[str, JobEntry] = {}
        self._counts: Counter[Phase | None] = Counter()
        self._send, self.waiting = trio.open_memory_channel[Job](queue.size)
        self.concurrency = queue.concurrency
        # The jobs in the queue, in its order: what their queue positions count.
        self._line: deque[Job] = deque()
        self._cancel_arrived = trio.Event()

    # What the table holds.

    def entry(self, task_id: str) -> JobEntry | None:
        """The job of `task_id` as it is now, if the table holds it."""
        return self._entries.get(task_id)

    def phase(self, task_id: str) -> Phase | None:
        """The phase of the job of `task_id`; None when the table does not hold it."""
        entry = self._entries.get(task_id)
        return entry.phase if entry is not None else None

    def in_phase(self, *phases: Phase) -> list[str]:
        """The task_ids of the jobs in one of `phases`, in the order the table took them."""
        return [task_id for task_id, entry in self._entries.items() if entry.phase in phases]

    def count(self, *phases: Phase) -> int:
        """How many jobs are in one of `phases` (without a walk over the table: the router asks at each message)."""
        return sum(self._counts[phase] for phase in phases)

    def holds(self, task_id: str) -> bool:
        """Whether the job is this worker's to claim, queue, run or hand back (not only to settle)."""
        return self.phase(task_id) not in (None, Phase.SETTLING)

    def in_queue(self, task_id: str) -> bool:
        """Whether the job is queued or running here, and has not ended."""
        entry = self._entries.get(task_id)
        return entry is not None and entry.phase in IN_SLOTS and entry.job is not None and not entry.job.state.terminal

    @property
    def running_count(self) -> int:
        """Jobs running now (one that has ended but not yet posted its terminal status is not)."""
        return sum(1 for task_id in self.in_phase(Phase.RUNNING) if self.in_queue(task_id))

    @property
    def buffered(self) -> int:
        """Jobs in the queue's buffer, counting cancelled ones that no slot has taken out yet."""
        return self._send.statistics().current_buffer_used

    def held_claims(self) -> list[tuple[str, str]]:
        """(task_id, claim id) of each job held under a claim of this worker's."""
        return [(task_id, entry.claim_id) for task_id, entry in self._entries.items() if entry.claim_id is not None]

    def pending_cancel(self, task_id: str) -> CancelRequest | None:
        """The cancel request that came for the job while it could not end at once, if any."""
        entry = self._entries.get(task_id)
        return entry.cancel if entry is not None else None

    async def wait_cancel(self, task_id: str) -> None:
        """Wait until a cancel request for the job is pending. Cancellation: the caller bounds the wait."""
        while self.pending_cancel(task_id) is None:
            await self._cancel_arrived.wait()

    async def wait_idle(self) -> None:
        """Wait until no job is queued or running here. Cancellation: the jobs go on."""
        while jobs := [entry.job for entry in self._entries.values() if entry.phase in IN_SLOTS and entry.job]:
            await jobs[0].done.wait()

    # The moves.

    def move(
        self,
        task_id: str,
        move: Move,
        arriving: JobEntry | None = None,
        *,
        status: JobStatus | None = None,
        claims: str | None = None,
        run_dir: Path | None = None,
    ) -> None:
        """Make `move`: journal it as `phases.JOURNAL` says (`status`, `claims`, `run_dir` are what
        its write records), then change the job's phase; `arriving` is the entry of a job it brings in.

        Errors: `MoveRefused` for a move the table lacks, `JournalError` from a write that must
        not fail; either way nothing has changed.
        """
        held = self._entries.get(task_id)
        before = held.phase if held is not None else None
        after = next_phase(before, move)
        entry = held or arriving
        if self.journal is not None:
            payload = entry.payload if entry is not None else b""
            self.journal.record(JOURNAL[move], task_id, payload=payload, status=status, claims=claims, run_dir=run_dir)
        if after is None:
            self._entries.pop(task_id, None)
        else:
            assert entry is not None, f"{move.value} brings no entry for {task_id}"
            self._entries[task_id] = entry.moved(after)
        if after is before:
            return
        self._counts[before] -= 1
        self._counts[after] += 1
        if before in IN_SLOTS and after not in IN_SLOTS:
            self.jobs_done += 1
        self.on_change()

    def accept(self, request: TaskRequest, payload: bytes, claim_id: str) -> None:
        """A new job, which this worker claims as `claim_id`.

        Errors: `JournalError` when the journal cannot take it: it must be refused, since a
        restart could not settle it.
        """
        task_id = request.task_id
        arrived = JobStatus(task_id=task_id, state=State.QUEUED, created_at=utc_now(), playbook=request.playbook)
        # A job of this task_id fenced here before (taken over, then released for a retry) is done with.
        self.statuses.undrop(task_id)
        self.move(task_id, Move.ACCEPT, JobEntry(Phase.CLAIMING, request, payload), status=arrived, claims=claim_id)

    def resume(self, request: TaskRequest, payload: bytes, claim_ids: str) -> None:
        """A job the journal kept as queued, claimed again; any of `claim_ids` may hold it. Errors: `JournalError`."""
        self.statuses.undrop(request.task_id)
        self.move(request.task_id, Move.RESUME, JobEntry(Phase.CLAIMING, request, payload), claims=claim_ids)

    def claimed(self, task_id: str, claim_id: str) -> None:
        """The group agreed: the job is this worker's, under `claim_id`."""
        self._entries[task_id] = replace(self._entries[task_id], claim_id=claim_id)

    def place(self, task_id: str, claim_id: str, *, stopping: bool, taken_from: str | None = None) -> Phase | None:
        """The group agreed the job is this worker's, under `claim_id`: queue it, and return its phase then.

        Its `queued` status goes out; a full queue ends it `failed` instead, a closed one (the
        worker stops) `cancelled`, and a cancel request that came during its claim ends it at
        once. While the worker is `stopping` it is handed back, unless such a request came.
        """
        entry = self._entries.get(task_id)
        # Only a job being claimed is placed (MoveRefused otherwise), before anything changes.
        next_phase(entry.phase if entry is not None else None, Move.QUEUE)
        assert entry is not None
        request = entry.request
        assert request is not None
        entry = self._entries[task_id] = replace(entry, claim_id=claim_id)
        if stopping and entry.cancel is None:
            self.move(task_id, Move.HAND_BACK)
            return Phase.HANDING_BACK
        job = Job(request, worker_id=self.worker_id, payload=entry.payload, taken_over_from=taken_from)
        self._entries[task_id] = replace(entry, job=job)
        try:
            self._send.send_nowait(job)
            self._line.append(job)
            # Counting jobs that ended in the queue: exact once it is among the first to move up.
            job.waiting_for = {"queue_position": len(self._line), "concurrency": self.concurrency}
        except trio.WouldBlock:
            job.finish(State.FAILED, f"queue full (max {self.queue_size})")
        except trio.ClosedResourceError:
            job.finish(State.CANCELLED, SHUT_DOWN_BEFORE_START)
        # Its `queued` status, or the refusal.
        self.announce(job)
        if entry.cancel is not None:
            self._end(job, State.CANCELLED, entry.cancel.describe(), entry.cancel.requested_by)
        return self.phase(task_id)

    def _in_slot(self, task_id: str) -> bool:
        job = self._entries[task_id].job
        return job is not None and job.in_slot

    def taken(self, job: Job) -> None:
        """A slot took `job` from the queue: the jobs behind it move up, and the first of them say so."""
        job.in_slot = True
        while self._line and self._line[0] is not job:
            self._line.popleft()
        if self._line:
            self._line.popleft()
        if job.waiting_for is not None and "queue_position" in job.waiting_for:
            job.waiting_for = None
        position = 0
        for waiting in self._line:
            if position >= SAY_POSITIONS:
                break
            if waiting.state is not State.QUEUED or waiting.settled or waiting.waiting_for is None:
                continue
            position += 1
            if waiting.waiting_for.get("queue_position") != position:
                waiting.waiting_for = {**waiting.waiting_for, "queue_position": position}
                self.post(waiting.status())

    def stop_taking(self) -> list[str]:
        """Take no more jobs, and hand back the queued ones no slot has taken, which none will start any more.

        Returns their task_ids, for the worker to hand back; the slots finish the running
        jobs, then stop.
        """
        self._send.close()
        # A job a slot took is started here, even while its locks keep it queued.
        queued = [task_id for task_id in self.in_phase(Phase.QUEUED) if not self._in_slot(task_id)]
        for task_id in queued:
            job = self._entries[task_id].job
            assert job is not None
            job.hand_back()  # slots skip it from now on, whatever happens to it next
            self.move(task_id, Move.HAND_BACK)
        return queued

    def report(self, status: JobStatus, *, claim_id: str | None) -> None:
        """Send again the last status of a job the journal kept: it has ended, or ends with it."""
        self.move(status.task_id, Move.REPORT, JobEntry(Phase.SETTLING, None, claim_id=claim_id), status=status)
        self.statuses.post(status)

    # Ending jobs.

    def cancel(self, task_id: str, request: CancelRequest) -> bool:
        """End the job as `request` asks, whatever its phase; False when there is nothing here to end.

        Queued, it ends now; running, its process group is ended. Claiming or being handed
        back, the request is kept (`pending_cancel`) until the job is this worker's to end.
        """
        entry = self._entries.get(task_id)
        if entry is None:
            return False
        if entry.phase in (Phase.CLAIMING, Phase.HANDING_BACK):
            self._entries[task_id] = replace(entry, cancel=request)
            self._cancel_arrived.set()
            self._cancel_arrived = trio.Event()
            return True
        if entry.phase in IN_SLOTS and entry.job is not None:
            return self._end(entry.job, State.CANCELLED, request.describe(), request.requested_by)
        return False

    def end_running(self, description: str) -> None:
        """Cancel every job queued or running, with `description` as its error_message."""
        for entry in list(self._entries.values()):
            if entry.phase in IN_SLOTS and entry.job is not None:
                self._end(entry.job, State.CANCELLED, description)

    def _end(self, job: Job, state: State, description: str, requested_by: str | None = None) -> bool:
        """End a queued or running `job` as `state` with `description`; False if it has ended already."""
        if job.state.terminal:
            return False
        job.cancel_reason = description
        job.cancel_state = state
        job.cancelled_by = requested_by
        if job.state is State.QUEUED:
            # Leaves the queue now; the slot that later receives it skips it.
            job.finish(state, description)
            self.announce(job)
        else:
            log.info("task %s: cancelling (%s)", job.task_id, description)
            job.cancel_scope.cancel()
        return True

    # The runner's status sink (`run.job.StatusSink`).

    def post(self, status: JobStatus) -> None:
        """A status of a job the table holds: journaled as the move it makes, then sent (never for a fenced one)."""
        if self.phase(status.task_id) is Phase.FENCED:
            if status.state.terminal:
                # Its run is over: its processes have ended.
                self.move(status.task_id, Move.FENCED_ENDED)
            return
        self.move(status.task_id, status_move(self.phase(status.task_id), status.state), status=status)
        self.statuses.post(status)

    def fence(self, task_id: str, holder: str) -> bool:
        """Another worker's claim (`holder`'s) holds a job of this table: end it here and publish nothing for it.

        Queued or settling, it goes at once; running, its process group is ended (SIGTERM,
        `kill_grace`, SIGKILL) and it leaves the table once its run is over. A job being
        claimed or handed back is left to those, whose outcome is the claims' anyway.
        Returns whether the job was fenced.
        """
        entry = self._entries.get(task_id)
        if entry is None or entry.phase not in (Phase.QUEUED, Phase.RUNNING, Phase.SETTLING):
            return False
        job = entry.job
        if entry.phase is Phase.RUNNING:
            # Its run may be over already, its terminal status not yet posted (its record is
            # being published): that post then ends it here, as any end of a fenced run does.
            self.move(task_id, Move.FENCE_RUN)
            if job is not None:
                job.fence()
                if not job.state.terminal:
                    job.cancel_reason = f"taken over by {holder}"
                    job.cancel_scope.cancel()
        else:
            if job is not None:
                job.fence()
            self.move(task_id, Move.FENCE)
        self.on_fenced(task_id)
        log.warning(
            "task %s: taken over by %s while this worker was away; ended here, nothing published", task_id, holder
        )
        return True

    def post_progress(self, task_id: str, build: Callable[[], JobStatus]) -> None:
        """A `running` update, built (and then journaled) only when it is about to be published."""

        if self.phase(task_id) is Phase.FENCED:
            return

        def journaled() -> JobStatus:
            status = build()
            # A job that has ended meanwhile keeps its terminal status in the journal.
            if self.phase(task_id) is Phase.RUNNING:
                self.move(task_id, Move.UPDATE, status=status)
            return status

        self.statuses.post_progress(task_id, journaled)

    def started(self, task_id: str, run_dir: Path) -> None:
        """The job's private run directory exists: its processes will carry its name."""
        self.move(task_id, Move.RUN_IN, run_dir=run_dir)

    # What the broker did (`status_path.PublishOutcomes`).

    def sent(self, status: JobStatus) -> None:
        """The broker has `status`: a terminal one settles its job, and renews its claim once."""
        entry = self._entries.get(status.task_id)
        if not status.state.terminal or entry is None or entry.phase is not Phase.SETTLING:
            return
        self.move(status.task_id, Move.SENT)
        self.on_settled(status.task_id)
        if entry.claim_id is not None:
            # So that the claim lasts as long as the status it protects.
            self.keeper.renew(status.task_id, entry.claim_id)

    def unpublishable(self, status: JobStatus, reason: str) -> None:
        """`status` can never be sent: end its job with `reason`, or replace it with a plain failure.

        The replacement is tried once: if even it cannot be sent, the status is lost (logged)
        rather than retried for ever.
        """
        task_id = status.task_id
        entry = self._entries.get(task_id)
        if status.error_message is not None and status.error_message.startswith(UNPUBLISHABLE):
            log.error("task %s: its replacement status could not be published either; it is lost", task_id)
            return
        if (
            entry is None
            or entry.phase is Phase.FENCED
            or (entry.phase is Phase.SETTLING and not status.state.terminal)
        ):
            # Its terminal status is on its way already.
            return
        if entry.phase in IN_SLOTS and entry.job is not None:
            # Its run posts the terminal status, with the reason unless it is ending already.
            self._end(entry.job, State.FAILED, reason)
            return
        # Nothing left to end: send the little that is certain to serialize.
        replacement = early_status(
            task_id, State.FAILED, reason, worker_id=self.worker_id, created_at=status.created_at
        )
        self.move(task_id, Move.REPLACE if entry.phase is Phase.SETTLING else Move.END, status=replacement)
        self.statuses.post(replacement)
