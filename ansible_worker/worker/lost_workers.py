"""The group's side of lost workers in one worker: who is alive, the request copies heard, the takeovers made here.

It also wires the table's hooks that keep the group able to take this worker's own jobs
over: the start fence before a job starts, the request copy cleared once a job is settled,
and the fence of a job another worker's claim holds now; and the group's locks' two uses of
the same judgement: the requests of a job taken over end, and a new worker waits to hear
what the others hold only from those alive.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
from pydantic import ValidationError

from ansible_worker.protocol.claims import Claim
from ansible_worker.protocol.models import JobStatus, TaskRequest
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.job import Job
from ansible_worker.run.runner import JobRunner
from ansible_worker.worker.claim_sync import ClaimSync
from ansible_worker.worker.group_claims import GroupClaims
from ansible_worker.worker.group_locks import GroupLocks
from ansible_worker.worker.intake import Accepted, Dropped, Rejected, read_task_message
from ansible_worker.worker.jobs import JobTable
from ansible_worker.worker.liveness import Liveness, PresenceHeard, read_presence, will_age
from ansible_worker.worker.lost_jobs import RequestCopies
from ansible_worker.worker.phases import Phase
from ansible_worker.worker.policies import SignaturePolicy, WorkerPolicies
from ansible_worker.worker.request_copy import RequestCopyPublisher
from ansible_worker.worker.router import Router
from ansible_worker.worker.status_path import StatusPath
from ansible_worker.worker.takeover import JobTableHands, Takeover

if TYPE_CHECKING:
    from ansible_worker.protocol.signing import TrustedKeys, Verified

__all__ = ["LostWorkers"]

log = logging.getLogger(__name__)

# Retained statuses read at once when checking the jobs held after a reconnection.
CHECKS_AT_ONCE = 16


class LostWorkers:
    """Judges the other workers by their presences, takes a lost one's jobs over, and fences this worker's own."""

    def __init__(
        self,
        policies: WorkerPolicies,
        topics: Topics,
        *,
        worker_id: str,
        claims: GroupClaims,
        sync: ClaimSync,
        jobs: JobTable,
        statuses: StatusPath,
        copies: RequestCopyPublisher,
        stopping: Callable[[], bool],
        read_retained: Callable[[str], Awaitable[bytes | None]],
        check_copy: Callable[[bytes, datetime | None], TaskRequest | str],
        locks: GroupLocks | None = None,
    ) -> None:
        self.claims, self.jobs, self.statuses, self.copies = claims, jobs, statuses, copies
        lost_after = policies.presence.lost_after
        self.liveness = Liveness(own_id=worker_id, lost_after=lost_after)
        self.request_copies = RequestCopies()
        self.takeover = Takeover(
            claims,
            self.liveness,
            self.request_copies,
            sync,
            JobTableHands(jobs, claims, copies, stopping=stopping),
            topics=topics,
            read_retained=read_retained,
            check_copy=check_copy,
        )
        self._scope = trio.CancelScope()
        self._read_presence = presence_reader(policies.claims.trusted, topics)
        self._unsigned = policies.claims.trusted is None
        self.worker_id, self.topics, self._read_retained = worker_id, topics, read_retained
        sync.verify = self.check_held
        jobs.on_settled = self._settled
        jobs.on_fenced = self._fenced
        claims.on_taken = self._taken
        self.locks = locks
        if locks is not None:
            locks.peers = self._not_gone

    def hear_copy(self, task_id: str, payload: bytes, *, max_bytes: int) -> None:
        """A request copy heard on `…/tasks/<task_id>/request`."""
        self.request_copies.hear(task_id, payload, max_bytes=max_bytes)

    def heard_peer(self, worker_id: str, payload: bytes, expiry: int | None = None) -> None:
        """Another worker's presence message; `expiry`, what the broker says is left of its message expiry.

        A will's age (told by its expiry) counts only without signatures: anyone who may publish
        a presence could replay a signed will with any expiry.
        """
        heard = self._read_presence(worker_id, payload)
        if heard is not None:
            self.liveness.heard(
                worker_id,
                alive=heard.alive,
                stopped=heard.stopped,
                now=trio.current_time(),
                wall=datetime.now(UTC),
                issued=heard.issued,
                will_age=will_age(expiry) if self._unsigned else None,
            )
            if heard.stopped == "lost":
                log.warning("worker %s went offline without a clean stop (its will)", worker_id)

    def connected(self) -> None:
        """This worker (re)connected: every worker's silence counts from now, since it heard nothing while away.

        Its lock requests and unsent releases are said again at once (it asks the group what it holds itself).
        """
        self.liveness.connected_at(trio.current_time())
        if self.locks is not None:
            self.locks.connected()

    async def serve(self) -> None:
        """Take lost workers' jobs over until `stop`. Cancellation: takeovers in flight stop."""
        with self._scope:
            await self.takeover.serve()

    def stop(self) -> None:
        """A draining worker takes nothing over: the others will."""
        self._scope.cancel()

    async def check_held(self) -> None:
        """After a reconnection or a freeze: fence each held job whose retained status another worker wrote.

        The claims heard again may not show a takeover any more (its claim was released or
        replaced since, the broker retaining only the newest message of a topic); a job another
        worker took over has that worker's statuses, whatever became of its claims since.
        Errors: `LinkError` when the link drops (the sync is tried again).
        """
        held = self.jobs.in_phase(Phase.QUEUED, Phase.RUNNING, Phase.SETTLING)
        limiter = trio.CapacityLimiter(CHECKS_AT_ONCE)
        async with trio.open_nursery() as nursery:
            for task_id in held:
                nursery.start_soon(self._check_one, task_id, limiter)

    async def _check_one(self, task_id: str, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            raw = await self._read_retained(self.topics.status(task_id))
        try:
            status = JobStatus.model_validate_json(raw) if raw else None
        except ValidationError:
            return
        if status is not None and status.worker_id is not None and status.worker_id != self.worker_id:
            try:
                self.jobs.fence(task_id, status.worker_id)
            except Exception:
                # The error boundary of one job's check: what the broker retains never stops the worker.
                log.exception("task %s: could not fence it", task_id)

    async def may_start(self, job: Job) -> bool:
        """The start fence: the group hears that the job may start before it does; False if it is another's now."""
        entry = self.jobs.entry(job.task_id)
        if entry is None or entry.claim_id is None:
            return entry is not None
        return await self.claims.mark_started(job.task_id, entry.claim_id)

    def _not_gone(self) -> list[str]:
        """The other workers that may hold locks: not lost, and not stopped cleanly (a will is no verdict)."""
        return self.liveness.not_gone(trio.current_time())

    def _settled(self, task_id: str) -> None:
        """A job's terminal status is acknowledged: its claim names no copy any more, and the copy goes."""
        self.claims.settle(task_id)
        self.copies.clear(task_id)

    def _taken(self, task_id: str, claim: Claim) -> None:
        """`claim` holds `task_id` now: other workers' lock requests for it end; another's fences it here."""
        if self.locks is not None:
            self.locks.taken_over(task_id, claim.worker_id)
        if claim.worker_id != self.liveness.own_id:
            self.jobs.fence(task_id, claim.worker_id)

    def _fenced(self, task_id: str) -> None:
        """A job was taken over by another worker: nothing more of it is published or claimed here."""
        self.statuses.drop(task_id)
        self.claims.forget(task_id)


def copy_check(
    max_bytes: int, signatures: SignaturePolicy | None, topics: Topics, runner: JobRunner, router: Router
) -> Callable[[bytes, datetime | None], TaskRequest | str]:
    """How a survivor checks a request copy before it runs it: as the first worker checked the job.

    Signed, against `trusted_keys`, its age counted from when the group accepted the job; a
    launch is expanded with this worker's templates, as a journal entry is after a restart. A
    schedule's tick is not signed: it runs only as the very tick this worker's schedule
    makes, taken by the group within `max_task_age` of its time.
    """

    def check(payload: bytes, accepted_at: datetime | None) -> TaskRequest | str:
        verify = ticks = None
        if signatures is not None:
            # A tick's copy is unsigned: it must be the tick itself, and was as fresh then as a signed job.
            ticks = router.ticks.taken_over(accepted_at, max_age=signatures.max_age, max_skew=signatures.max_skew)
            from ansible_worker.worker.lost_jobs import check_taken_over

            verify = partial(
                check_taken_over,
                trusted=signatures.trusted,
                topic=topics.tasks,
                accepted_at=accepted_at,
                max_age=signatures.max_age,
                max_skew=signatures.max_skew,
            )
        match read_task_message(
            payload,
            max_bytes=max_bytes,
            verify=verify,
            templates=router.templates,
            templates_only=router.templates_only,
            ticks=ticks,
        ):
            case Accepted(request):
                return runner.checks.admission_error(request) or request
            case Rejected(_, reason) | Dropped(reason):
                return reason
        return "unreadable"

    return check


def presence_reader(trusted: TrustedKeys | None, topics: Topics) -> Callable[[str, bytes], PresenceHeard | None]:
    """How this worker reads a presence: with signed jobs, only one signed by a trusted worker key says anything.

    Its `issued_at` is passed on, never compared with this worker's clock: `Liveness` takes
    it as a sign of life only when it is newer than the last one from that worker.
    """

    def read(worker_id: str, payload: bytes) -> PresenceHeard | None:
        if trusted is None:
            return read_presence(payload, verify=None)

        def verify(document: Mapping[str, Any]) -> Verified:
            trusted.check_key(document)
            return trusted.verify(topics.worker(worker_id), document)

        return read_presence(payload, verify=verify)

    return read
