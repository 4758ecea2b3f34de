"""Claim each job the router lets in, then queue it: the group agrees before this worker runs anything."""

from __future__ import annotations

import logging

import trio

from ansible_worker.mqtt.link import LinkError
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.claims import new_claim_id
from ansible_worker.protocol.models import CancelRequest, JobStatus, State, TaskRequest
from ansible_worker.protocol.timestamps import utc_now
from ansible_worker.worker.claim_keeper import ClaimKeeper
from ansible_worker.worker.dispatcher import Dispatcher
from ansible_worker.worker.group_claims import ClaimFailed, GroupClaims
from ansible_worker.worker.hand_back import HandBack
from ansible_worker.worker.journal import JournalError
from ansible_worker.worker.status_path import StatusPath

log = logging.getLogger(__name__)

# Between attempts to claim a job while the broker does not answer.
CLAIM_RETRY_PAUSE = 5.0
# How long a claim given up (never confirmed) may take to be released.
RELEASE_TIMEOUT = 5.0


class Admission:
    """The claims in flight, each with the cancel request that came meanwhile, if any.

    Claims run in the `claiming` nursery that the worker opens (`open`) and closes before it
    stops: shutdown waits for them, since a job in a claim belongs to no one else yet.
    """

    def __init__(
        self,
        session: BrokerSession,
        claims: GroupClaims,
        keeper: ClaimKeeper,
        statuses: StatusPath,
        dispatcher: Dispatcher,
        hand_back: HandBack,
        shutdown: trio.Event,
    ) -> None:
        self.session = session
        self.claims = claims
        self.keeper = keeper
        self.statuses = statuses
        self.dispatcher = dispatcher
        self.hand_back = hand_back
        self.shutdown = shutdown
        self.nursery: trio.Nursery | None = None
        self._in_flight: dict[str, CancelRequest | None] = {}

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._in_flight

    def __len__(self) -> int:
        return len(self._in_flight)

    @property
    def open(self) -> bool:
        """Whether new claims may start."""
        return self.nursery is not None

    def cancel_for(self, task_id: str) -> CancelRequest | None:
        """The cancel request that came for a job while it is being claimed, if any."""
        return self._in_flight.get(task_id)

    def cancel(self, task_id: str, request: CancelRequest) -> None:
        """A cancel request for a job being claimed: it applies as soon as the job is queued."""
        self._in_flight[task_id] = request

    def start(
        self,
        request: TaskRequest,
        payload: bytes,
        *,
        signer: str | None = None,
        earlier: frozenset[str] = frozenset(),
        from_journal: bool = False,
    ) -> str | None:
        """Journal the job with a new claim id, then claim and queue it in the background.

        `earlier` holds this worker's claims on the job before a restart (`from_journal`).
        Returns why the job must be refused (the journal cannot take it), or None.
        """
        assert self.nursery is not None
        task_id = request.task_id
        claim_id = new_claim_id()
        # On disk with its claim id before the claim: a worker killed now finds the job at its
        # next start (the broker will not send it again) and knows its claim.
        try:
            if from_journal:
                # Any of them may hold the job once this claim is out.
                self.statuses.claimed(task_id, " ".join([*sorted(earlier), claim_id]))
            else:
                arrived = JobStatus(
                    task_id=task_id, state=State.QUEUED, created_at=utc_now(), playbook=request.playbook
                )
                self.statuses.accepted(task_id, payload, arrived, claim_id=claim_id)
        except JournalError as exc:
            log.error("task %s: %s", task_id, exc)
            return str(exc)
        self._in_flight[task_id] = None
        self.nursery.start_soon(self._claim_then_queue, request, payload, claim_id, earlier, signer)
        return None

    async def _claim_then_queue(
        self, request: TaskRequest, payload: bytes, claim_id: str, earlier: frozenset[str], signer: str | None
    ) -> None:
        """The error boundary of one claim: any error fails this job's claim, not the worker."""
        try:
            await self._claim_and_queue(request, payload, claim_id, earlier, signer)
        except Exception:
            log.exception("task %s: could not claim and queue it", request.task_id)
            self._in_flight.pop(request.task_id, None)
            self.keeper.forget(request.task_id)
            self.statuses.settled(request.task_id)

    async def _claim_and_queue(
        self, request: TaskRequest, payload: bytes, claim_id: str, earlier: frozenset[str], signer: str | None
    ) -> None:
        """Queue a job once the group agrees it is this worker's; a job another worker took is left to it.

        While the broker does not confirm the claim, it is tried again once connected (a claim
        that did reach the broker comes back as this worker's), until the worker shuts down:
        then the journal keeps the job for the next start, or without one the claim is
        released and the job refused. A claim the broker's ACL refuses is refused at once.
        """
        task_id = request.task_id
        try:
            won = await self._claim(request, claim_id, earlier)
        finally:
            cancel = self._in_flight.pop(task_id, None)
        if won is None:
            return
        if not won:
            holder = self.claims.holder(task_id)
            log.warning(
                "task %s: refused %s: worker %s claimed it first; the original job's status is left alone",
                task_id,
                f"a replay signed by {signer}" if signer is not None else "a copy",
                holder.worker_id if holder is not None else "(unknown)",
            )
            self.statuses.settled(task_id)
            return
        log.info("task %s: %sclaimed for this worker", task_id, f"signed by {signer}, " if signer else "")
        holder = self.claims.holder(task_id)
        # The claim that holds it: this one, or one made before a restart.
        claim_id = holder.claim_id if holder is not None else claim_id
        self.keeper.hold(task_id, claim_id)
        if self.shutdown.is_set() and cancel is None:
            self.hand_back.begin(task_id)
            await self.hand_back.hand_back(request, payload, claim_id)
            return
        # (Shutting down, a cancelled job is not handed back: it ends here, `cancelled`.)
        # (A refused one gets a terminal status too, after which its claim is renewed.)
        self.dispatcher.submit(request, payload)
        if cancel is not None:
            self.dispatcher.cancel(task_id, cancel.describe(), requested_by=cancel.requested_by)

    async def _claim(self, request: TaskRequest, claim_id: str, earlier: frozenset[str]) -> bool | None:
        """Whether this worker won the claim; None when it gave up (already dealt with)."""
        while True:
            try:
                return await self.claims.claim(request.task_id, claim_id, also_ours=earlier)
            except ClaimFailed as exc:
                if exc.permanent or self.shutdown.is_set():
                    await self._give_up(request, claim_id, exc, keep=not exc.permanent)
                    return None
                log.warning("task %s: could not claim it yet (%s); trying again", request.task_id, exc)
                # Bounded, so that a shutdown meanwhile is noticed.
                with trio.move_on_after(CLAIM_RETRY_PAUSE):
                    await self.session.wait_connected()

    async def _give_up(self, request: TaskRequest, claim_id: str, exc: ClaimFailed, *, keep: bool) -> None:
        """Stop claiming a job: the journal keeps it when there is one, else it is released and refused."""
        task_id = request.task_id
        if keep and self.statuses.journal is not None:
            log.warning("task %s: could not claim it (%s); the journal keeps it for the next start", task_id, exc)
            return
        reason = f"could not claim the job for this worker: {exc}"
        log.error("task %s: %s", task_id, reason)
        self.statuses.settled(task_id)
        holder = self.claims.holder(task_id)
        if holder is not None and holder.claim_id != claim_id:
            # Another worker holds it: no word from this one may look like its end.
            return
        # The claim may have reached the broker after all: it must not hold the task_id for a
        # job that no one runs.
        with trio.move_on_after(RELEASE_TIMEOUT):
            try:
                await self.claims.release(task_id, claim_id)
            except LinkError as release_error:
                log.debug("task %s: could not release the claim: %s", task_id, release_error)
        # Live only: without a confirmed claim this worker does not hold the job, and another
        # worker of the group may (its status is not ours).
        await self.statuses.send_refusal(task_id, reason)
