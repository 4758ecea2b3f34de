"""Give jobs this worker claimed but never started back to the group when it shuts down."""

from __future__ import annotations

import logging

import trio

from ansible_worker.mqtt.link import LinkError
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.claims import Claim, new_claim_id
from ansible_worker.protocol.models import JobStatus, State
from ansible_worker.protocol.statuses import SHUT_DOWN_BEFORE_START, early_status
from ansible_worker.protocol.timestamps import utc_now
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker.group_claims import ClaimFailed, GroupClaims
from ansible_worker.worker.job_entry import JobEntry
from ansible_worker.worker.jobs import JobTable
from ansible_worker.worker.peers import PeerBook
from ansible_worker.worker.phases import Move, Phase

log = logging.getLogger(__name__)

# Each step of a hand-back (its status, the release, the request) has this bound.
HAND_BACK_TIMEOUT = 5.0
# How long a handed-back job waits for another worker's claim before this one takes it back.
HAND_BACK_ANSWER_TIMEOUT = 10.0


class HandBack:
    """Gives back to the group the jobs the table has in its `handing back` phase.

    A job has one owner at every moment. It stays this worker's until its `queued` status
    (saying who handed it back) has reached the broker, so that no status of the next worker
    can be overtaken by it; then the claim is released and the request published again. If
    no other worker claims it within `HAND_BACK_ANSWER_TIMEOUT`, or a cancel request for it
    arrives meanwhile (the table keeps it), this worker claims it back and cancels it with a
    reason. With no fresh peer, it is cancelled at once.
    """

    def __init__(
        self, session: BrokerSession, topics: Topics, claims: GroupClaims, peers: PeerBook, jobs: JobTable
    ) -> None:
        self.session = session
        self.topics = topics
        self.claims = claims
        self.peers = peers
        self.jobs = jobs
        self.statuses = jobs.statuses
        self.worker_id = jobs.worker_id

    async def hand_back(self, task_id: str) -> None:
        """Give the job of `task_id`, which the table has in its `handing back` phase, back to the group.

        Each step is bounded, so this returns within about twice `HAND_BACK_TIMEOUT` +
        `HAND_BACK_ANSWER_TIMEOUT`; the job has left the phase by then.

        Cancellation: the job is left to the journal (when there is one) as it stands.
        """
        try:
            await self._give_back(task_id)
        finally:
            if self._still_ours(task_id):
                self.jobs.move(task_id, Move.KEEP)

    def _still_ours(self, task_id: str) -> bool:
        """Whether the job is still being handed back (it may have ended meanwhile, its status unpublishable)."""
        return self.jobs.phase(task_id) is Phase.HANDING_BACK

    async def _give_back(self, task_id: str) -> None:
        entry = self.jobs.entry(task_id)
        assert entry is not None
        assert entry.claim_id is not None
        if not self.peers.online() or not entry.payload:
            self._cancel_here(task_id)
            return
        if not await self._announce(entry):
            return
        await self._release_and_republish(task_id, entry.claim_id, entry.payload)
        ours = frozenset({entry.claim_id})
        taken = await self._wait_taken(task_id, ours)
        if taken is None:
            ended_here, taken = await self._take_back(task_id, entry.claim_id, ours)
            if ended_here:
                return
        self._settle_with(task_id, taken)

    async def _announce(self, entry: JobEntry) -> bool:
        """Publish the `queued` status that names this worker; False if the job ended here instead."""
        assert entry.request is not None
        task_id = entry.request.task_id
        self.jobs.post(
            JobStatus(
                task_id=task_id,
                state=State.QUEUED,
                created_at=entry.job.created_at if entry.job else utc_now(),
                playbook=entry.request.playbook,
                handed_back_by=self.worker_id,
            )
        )
        with trio.move_on_after(HAND_BACK_TIMEOUT):
            await self.statuses.wait_sent(task_id)
        if not self._still_ours(task_id):
            return False
        if self.statuses.holds(task_id):
            log.warning("task %s: its hand-back status did not reach the broker; cancelling it here", task_id)
            self._cancel_here(task_id)
            return False
        cancel = self.jobs.pending_cancel(task_id)
        if cancel is not None:
            # Still this worker's: the cancel ends it here.
            self._cancel_here(task_id, cancel.describe())
            return False
        return True

    def _cancel_here(self, task_id: str, description: str = SHUT_DOWN_BEFORE_START) -> None:
        """End the job, which never started, here as `cancelled` with `description`."""
        entry = self.jobs.entry(task_id)
        assert entry is not None
        assert entry.request is not None
        if entry.job is not None:
            entry.job.finish(State.CANCELLED, description)
            self.jobs.announce(entry.job)
            return
        playbook = entry.request.playbook
        self.jobs.post(early_status(task_id, State.CANCELLED, description, worker_id=self.worker_id, playbook=playbook))
        log.info("task %s %s", task_id, description)

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
        if self.jobs.pending_cancel(task_id) is not None:
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
        await self.jobs.wait_cancel(task_id)
        waiting.cancel()

    async def _take_back(self, task_id: str, claim_id: str, ours: frozenset[str]) -> tuple[bool, Claim | None]:
        """Claim the job back (the released claim never holds again) and cancel it here.

        Returns whether the job ended here (or is left to the journal), and otherwise the
        claim of the worker that took it after all, if known.
        """
        back_id = new_claim_id()
        # Either may hold the job after a crash now: the release may not have landed.
        self.jobs.move(task_id, Move.RECLAIM, claims=f"{claim_id} {back_id}")
        try:
            back = await self.claims.claim(task_id, back_id, also_ours=ours)
        except ClaimFailed as exc:
            log.error(
                "task %s: handed back, but neither taken by another worker nor back here (%s);"
                " the journal, if any, keeps it for this worker's next start",
                task_id,
                exc,
            )
            self.jobs.move(task_id, Move.KEEP)
            return True, None
        if not back:
            return False, self.claims.holder(task_id)
        holder = self.claims.holder(task_id)
        if holder is not None:
            # Renewed when its cancelled status is out.
            self.jobs.claimed(task_id, holder.claim_id)
        cancel = self.jobs.pending_cancel(task_id)
        if cancel is not None:
            reason = cancel.describe()
        else:
            reason = (
                f"cancelled: handed back by {self.worker_id} while it shut down, but no"
                f" other worker took it within {HAND_BACK_ANSWER_TIMEOUT:g}s"
            )
        self._cancel_here(task_id, reason)
        return True, None

    def _settle_with(self, task_id: str, taken: Claim | None) -> None:
        """The job is another worker's now: the table lets it go."""
        taker = taken.worker_id if taken is not None else "(unknown)"
        if self.jobs.pending_cancel(task_id) is not None:
            log.warning(
                "task %s: a cancel request came during its hand-back, but worker %s had taken it; cancel it again"
                " there if it still runs",
                task_id,
                taker,
            )
        log.info("task %s handed back to the group: worker %s took it", task_id, taker)
        self.jobs.move(task_id, Move.LET_GO)
