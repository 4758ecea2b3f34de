"""Give jobs this worker claimed but never started back to the group when it shuts down."""

from __future__ import annotations

import logging

import trio

from ansible_worker.mqtt.link import LinkError
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.claims import Claim, new_claim_id
from ansible_worker.protocol.models import CancelRequest, JobStatus, State, TaskRequest
from ansible_worker.protocol.statuses import SHUT_DOWN_BEFORE_START, early_status
from ansible_worker.protocol.timestamps import utc_now
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.job import Job
from ansible_worker.run.runner import JobRunner
from ansible_worker.worker.claim_keeper import ClaimKeeper
from ansible_worker.worker.group_claims import ClaimFailed, GroupClaims
from ansible_worker.worker.peers import PeerBook
from ansible_worker.worker.status_path import StatusPath

log = logging.getLogger(__name__)

# Each step of a hand-back (its status, the release, the request) has this bound.
HAND_BACK_TIMEOUT = 5.0
# How long a handed-back job waits for another worker's claim before this one takes it back.
HAND_BACK_ANSWER_TIMEOUT = 10.0


class HandBack:
    """The jobs being handed back, each with the cancel request that came meanwhile, if any.

    A job has one owner at every moment. It stays this worker's until its `queued` status
    (saying who handed it back) has reached the broker, so that no status of the next worker
    can be overtaken by it; then the claim is released and the request published again. If
    no other worker claims it within `HAND_BACK_ANSWER_TIMEOUT`, or a cancel request for it
    arrives meanwhile, this worker claims it back and cancels it with a reason. With no fresh
    peer, it is cancelled at once.
    """

    def __init__(
        self,
        session: BrokerSession,
        topics: Topics,
        claims: GroupClaims,
        keeper: ClaimKeeper,
        peers: PeerBook,
        statuses: StatusPath,
        runner: JobRunner,
        *,
        worker_id: str,
    ) -> None:
        self.session = session
        self.topics = topics
        self.claims = claims
        self.keeper = keeper
        self.peers = peers
        self.statuses = statuses
        self.runner = runner
        self.worker_id = worker_id
        self._jobs: dict[str, CancelRequest | None] = {}
        self._cancel_arrived = trio.Event()

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def begin(self, task_id: str) -> None:
        """Count the job as being handed back from now on (before its task starts)."""
        self._jobs[task_id] = None

    def cancel(self, task_id: str, request: CancelRequest) -> None:
        """A cancel request for a job being handed back: it ends here, cancelled, if still ours."""
        self._jobs[task_id] = request
        self._cancel_arrived.set()
        self._cancel_arrived = trio.Event()

    async def hand_back(self, request: TaskRequest, payload: bytes, claim_id: str, job: Job | None = None) -> None:
        """Give a job this worker claimed (as `claim_id`) but did not start back to the group.

        The caller has called `begin` for it. Each step is bounded, so this returns within
        about twice `HAND_BACK_TIMEOUT` + `HAND_BACK_ANSWER_TIMEOUT`.

        Cancellation: the job is left to the journal (when there is one) as it stands.
        """
        try:
            await self._give_back(request, payload, claim_id, job)
        finally:
            self._jobs.pop(request.task_id, None)

    def cancel_unstarted(
        self, request: TaskRequest, job: Job | None, description: str = SHUT_DOWN_BEFORE_START
    ) -> None:
        """End a job that never started as `cancelled`, with `description`."""
        if job is not None:
            job.finish(State.CANCELLED, description)
            self.runner.announce(job)
            return
        self.statuses.post(
            early_status(
                request.task_id, State.CANCELLED, description, worker_id=self.worker_id, playbook=request.playbook
            )
        )
        log.info("task %s %s", request.task_id, description)

    async def _give_back(self, request: TaskRequest, payload: bytes, claim_id: str, job: Job | None) -> None:
        task_id = request.task_id
        if not self.peers.online() or not payload:
            self.cancel_unstarted(request, job)
            return
        if not await self._announce(request, job):
            return
        await self._release_and_republish(task_id, claim_id, payload)
        ours = frozenset({claim_id})
        taken = await self._wait_taken(task_id, ours)
        if taken is None:
            ended_here, taken = await self._take_back(request, job, claim_id, ours)
            if ended_here:
                return
        self._settle_with(task_id, taken)

    async def _announce(self, request: TaskRequest, job: Job | None) -> bool:
        """Publish the `queued` status that names this worker; False if the job ended here instead."""
        task_id = request.task_id
        self.statuses.post(
            JobStatus(
                task_id=task_id,
                state=State.QUEUED,
                created_at=job.created_at if job else utc_now(),
                playbook=request.playbook,
                handed_back_by=self.worker_id,
            )
        )
        with trio.move_on_after(HAND_BACK_TIMEOUT):
            await self.statuses.wait_sent(task_id)
        if self.statuses.holds(task_id):
            log.warning("task %s: its hand-back status did not reach the broker; cancelling it here", task_id)
            self.cancel_unstarted(request, job)
            return False
        cancel = self._jobs.get(task_id)
        if cancel is not None:
            # Still this worker's: the cancel ends it here.
            self.cancel_unstarted(request, job, cancel.describe())
            return False
        return True

    async def _release_and_republish(self, task_id: str, claim_id: str, payload: bytes) -> None:
        try:
            with trio.fail_after(HAND_BACK_TIMEOUT):
                # Naming the request: only it may skip the age check on the next worker.
                await self.claims.release(task_id, claim_id, request=payload)
        except (LinkError, trio.TooSlowError) as exc:
            # The release may be out or not: who owns the job is settled by a claim later.
            log.warning("task %s: its release was not confirmed (%s)", task_id, exc)
            return
        # A cancel that came meanwhile keeps the request back: the job is taken back.
        if self._jobs.get(task_id) is not None:
            return
        try:
            with trio.fail_after(HAND_BACK_TIMEOUT):
                await self.session.publish(self.topics.tasks, payload, qos=2)
        except (LinkError, trio.TooSlowError) as exc:
            # It may still arrive: the next worker's claim, or this one's, decides.
            log.warning("task %s: its request was not confirmed by the broker (%s)", task_id, exc)

    async def _wait_taken(self, task_id: str, ours: frozenset[str]) -> Claim | None:
        """Another worker's claim on the job, or None after the answer timeout or a cancel request."""
        taken: Claim | None = None
        with trio.move_on_after(HAND_BACK_ANSWER_TIMEOUT):
            async with trio.open_nursery() as waiting:
                waiting.start_soon(self._cancel_when_asked, task_id, waiting.cancel_scope)
                taken = await self.claims.wait_taken(task_id, ours)
                waiting.cancel_scope.cancel()
        return taken

    async def _cancel_when_asked(self, task_id: str, waiting: trio.CancelScope) -> None:
        """End the wait for another worker's answer as soon as a cancel request for the job arrives."""
        while self._jobs.get(task_id) is None:
            await self._cancel_arrived.wait()
        waiting.cancel()

    async def _take_back(
        self, request: TaskRequest, job: Job | None, claim_id: str, ours: frozenset[str]
    ) -> tuple[bool, Claim | None]:
        """Claim the job back (the released claim never holds again) and cancel it here.

        Returns whether the job ended here (or is left to the journal), and otherwise the
        claim of the worker that took it after all, if known.
        """
        task_id = request.task_id
        back_id = new_claim_id()
        # Either may hold the job after a crash now: the release may not have landed.
        self.statuses.claimed(task_id, f"{claim_id} {back_id}")
        try:
            back = await self.claims.claim(task_id, back_id, also_ours=ours)
        except ClaimFailed as exc:
            log.error(
                "task %s: handed back, but neither taken by another worker nor back here (%s);"
                " the journal, if any, keeps it for this worker's next start",
                task_id,
                exc,
            )
            return True, None
        if not back:
            return False, self.claims.holder(task_id)
        holder = self.claims.holder(task_id)
        if holder is not None:
            # Renewed when its cancelled status is out.
            self.keeper.hold(task_id, holder.claim_id)
        cancel = self._jobs.get(task_id)
        if cancel is not None:
            reason = cancel.describe()
        else:
            reason = (
                f"cancelled: handed back by {self.worker_id} while it shut down, but no"
                f" other worker took it within {HAND_BACK_ANSWER_TIMEOUT:g}s"
            )
        self.cancel_unstarted(request, job, reason)
        return True, None

    def _settle_with(self, task_id: str, taken: Claim | None) -> None:
        """The job is another worker's now: forget it here."""
        self.keeper.forget(task_id)
        taker = taken.worker_id if taken is not None else "(unknown)"
        if self._jobs.get(task_id) is not None:
            log.warning(
                "task %s: a cancel request came during its hand-back, but worker %s had taken it; cancel it again"
                " there if it still runs",
                task_id,
                taker,
            )
        log.info("task %s handed back to the group: worker %s took it", task_id, taker)
        self.statuses.settled(task_id)
