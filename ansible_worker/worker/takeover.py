"""The survivor's side of a lost worker: find its unsettled jobs, take each over once, and settle it.

Every second the worker looks at the group's unsettled jobs (claims that name a request copy,
and hand-backs nobody took). A job whose worker is lost (`liveness`) is taken over by one
survivor: the first of the rendezvous order of `task_id` over the workers alive acts at once,
the others after a further `lost_after / 2` if it has not. The takeover claim decides among
them (the first the broker delivers wins). Then, as `lost_jobs.decide` says, the job runs here
(it never started), ends `failed` as lost (it may have started), only has its copy cleared
(it had ended), or is freed (no copy: nothing ran). `on_lost` is the one place a takeover is
announced, for whatever else must know of it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Protocol

import trio
from pydantic import ValidationError

from ansible_worker.mqtt.link import LinkError
from ansible_worker.protocol.models import JobStatus, State, TaskRequest
from ansible_worker.protocol.timestamps import utc_now
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker.claim_sync import ClaimSync
from ansible_worker.worker.group_claims import ClaimFailed, GroupClaims
from ansible_worker.worker.jobs import JobTable
from ansible_worker.worker.journal import JournalError
from ansible_worker.worker.liveness import Liveness, rendezvous
from ansible_worker.worker.lost_jobs import (
    AlreadyEnded,
    EndAsLost,
    Free,
    RequestCopies,
    RunHere,
    Verdict,
    decide,
    lost_reason,
)
from ansible_worker.worker.request_copy import RequestCopyPublisher

log = logging.getLogger(__name__)

# Between two looks at the group's unsettled jobs.
LOOK_EVERY = 1.0
# Reading a job's last status, and each other step of a takeover, has this bound.
STEP_TIMEOUT = 10.0

# Checks a request copy before it runs here: the request, or why it may not run.
CheckCopy = Callable[[bytes, datetime | None], TaskRequest | str]


class TakeoverHands(Protocol):
    """What a takeover asks of the worker's jobs."""

    def holds(self, task_id: str) -> bool:
        """Whether this worker holds the job already (claiming, queued, running, settling)."""

    async def run_taken_over(self, request: TaskRequest, payload: bytes, claim_id: str, *, taken_from: str) -> None:
        """Run a lost worker's queued job here, under the takeover claim `claim_id`, as a job of this worker's."""

    def end_lost(self, status: JobStatus, claim_id: str) -> None:
        """Publish the terminal status of a lost worker's started job; its claim is `claim_id`."""

    def settled(self, task_id: str, claim_id: str | None) -> None:
        """Nothing is left to publish for the job: its copy goes, its claim `claim_id` (if any) is renewed settled."""


class Takeover:
    """Takes the lost workers' unsettled jobs over, each once in the group."""

    def __init__(
        self,
        claims: GroupClaims,
        liveness: Liveness,
        copies: RequestCopies,
        sync: ClaimSync,
        hands: TakeoverHands,
        *,
        topics: Topics,
        read_retained: Callable[[str], Awaitable[bytes | None]],
        check_copy: CheckCopy,
    ) -> None:
        self.claims = claims
        self.liveness = liveness
        self.copies = copies
        self.sync = sync
        self.hands = hands
        self.topics = topics
        self.worker_id = liveness.own_id
        self._read_retained = read_retained
        self._check_copy = check_copy
        # When each lost worker's job was first seen due for a takeover, on the monotonic clock.
        self._due: dict[str, float] = {}
        self._busy: set[str] = set()
        # The one place a takeover is announced: (task_id, lost worker, what was done).
        self.on_lost: Callable[[str, str, Verdict], None] = lambda task_id, worker_id, verdict: None

    async def serve(self) -> None:
        """Look for lost workers' jobs every second, for ever. Cancellation: takeovers in flight stop."""
        async with trio.open_nursery() as nursery:
            while True:
                await trio.sleep(LOOK_EVERY)
                now = trio.current_time()
                self.liveness.tick(now)
                if not self.sync.synced:
                    continue
                for task_id in self.due(now):
                    self._busy.add(task_id)
                    nursery.start_soon(self._take_over_bounded, task_id)

    def due(self, now: float) -> list[str]:
        """The task_ids this worker should take over now."""
        found = []
        alive = self.liveness.alive(now)
        for task_id, claim in list(self.claims.unsettled.items()):
            owner = claim.worker_id
            if owner == self.worker_id or task_id in self._busy:
                continue
            self.liveness.know(owner)
            if not self.liveness.is_lost(owner, now):
                self._due.pop(task_id, None)
                continue
            first = self._due.setdefault(task_id, now)
            preferred = rendezvous(task_id, alive)[0]
            if preferred == self.worker_id or now - first >= self.liveness.lost_after / 2:
                found.append(task_id)
        for task_id in [task_id for task_id in self._due if task_id not in self.claims.unsettled]:
            del self._due[task_id]
        return found

    async def _take_over_bounded(self, task_id: str) -> None:
        try:
            await self.take_over(task_id)
        except Exception:
            # The error boundary of one takeover: tried again at the next look if still due.
            log.exception("task %s: could not take it over", task_id)
        finally:
            self._busy.discard(task_id)

    async def take_over(self, task_id: str) -> Verdict | None:
        """Take one lost worker's job over, if it still is one; what was done, or None (not ours to do)."""
        claim = self.claims.unsettled.get(task_id)
        if claim is None or self.hands.holds(task_id):
            return None
        lost = claim.worker_id
        seen = self.liveness.seen(lost)
        last_heard = seen.last_heard_at if seen is not None else None
        # The takeover first: whatever the lost worker published before it in the broker's
        # order is then retained, and after it that worker publishes nothing (it is fenced).
        try:
            claim_id = await self.claims.take_over(
                task_id, claim, lost_worker=lost, request_sha256=claim.request_sha256
            )
        except ClaimFailed as exc:
            log.warning("task %s: its takeover from worker %s was not confirmed (%s)", task_id, lost, exc)
            return None
        if claim_id is None:
            holder = self.claims.holder(task_id)
            log.info(
                "task %s: worker %s took it over from lost worker %s first",
                task_id,
                holder.worker_id if holder is not None else "(unknown)",
                lost,
            )
            return None
        raw: bytes | None = None
        while True:
            try:
                with trio.fail_after(STEP_TIMEOUT):
                    raw = await self._read_retained(self.topics.status(task_id))
                break
            except (LinkError, trio.TooSlowError) as exc:
                # The job is this worker's now: it is settled here, once the status can be read.
                log.warning("task %s: could not read its last status (%s); trying again", task_id, exc)
                await trio.sleep(LOOK_EVERY)
        last = _status(raw)
        verdict = decide(claim, copy=self.copies.matching(task_id, claim.request_sha256), last_state=_state(last))
        when = last_heard.isoformat() if last_heard is not None else "never since this worker connected"
        log.warning("task %s: worker %s is lost (last heard %s): taken over by this worker", task_id, lost, when)
        verdict = await self._settle(task_id, claim_id, lost, verdict, last, last_heard)
        self.on_lost(task_id, lost, verdict)
        return verdict

    async def _settle(
        self,
        task_id: str,
        claim_id: str,
        lost: str,
        verdict: Verdict,
        last: JobStatus | None,
        last_heard: datetime | None,
    ) -> Verdict:
        if isinstance(verdict, RunHere):
            checked = self._check_copy(verdict.payload, verdict.accepted_at)
            if isinstance(checked, str):
                refused = f"its request copy was refused: {checked}"
                # A job the controller saw accepted ends; one nobody heard of is freed for a retry.
                verdict = Free(refused) if last is None else EndAsLost(refused)
            else:
                log.info("task %s: never started on worker %s: running it here", task_id, lost)
                await self.hands.run_taken_over(checked, verdict.payload, claim_id, taken_from=lost)
                return verdict
        match verdict:
            case EndAsLost(why):
                base = last or JobStatus(task_id=task_id, state=State.FAILED, worker_id=lost)
                self.hands.end_lost(
                    base.model_copy(
                        update={
                            "state": State.FAILED,
                            "error_message": lost_reason(lost, last_heard, why),
                            "completed_at": utc_now(),
                            "current_task": None,
                            "current_play": None,
                            "taken_over_by": self.worker_id,
                            # The worker that holds the job now, and publishes its end.
                            "worker_id": self.worker_id,
                            "record": None,
                        }
                    ),
                    claim_id,
                )
                if why is None:
                    log.warning("task %s: it may have started on worker %s: ended failed, not run again", task_id, lost)
                else:
                    log.warning("task %s: not run here (%s): ended failed", task_id, why)
            case AlreadyEnded():
                log.info("task %s: it had ended on worker %s; only its request copy is cleared", task_id, lost)
                self.hands.settled(task_id, claim_id)
            case Free(reason):
                log.warning(
                    "task %s: %s; nothing ran on worker %s: its task_id is released for a controller's retry",
                    task_id,
                    reason,
                    lost,
                )
                self.claims.forget(task_id)
                with trio.move_on_after(STEP_TIMEOUT):
                    try:
                        await self.claims.release(task_id, claim_id)
                    except LinkError as exc:
                        log.warning("task %s: could not release it: %s", task_id, exc)
                self.hands.settled(task_id, None)
        return verdict


def _status(raw: bytes | None) -> JobStatus | None:
    if not raw:
        return None
    try:
        return JobStatus.model_validate_json(raw)
    except ValidationError:
        return None


def _state(status: JobStatus | None) -> State | None:
    return status.state if status is not None else None


class JobTableHands:
    """A takeover's hands on this worker's job table: run a taken-over job, publish a lost job's end, settle."""

    def __init__(
        self,
        jobs: JobTable,
        claims: GroupClaims,
        copies: RequestCopyPublisher,
        *,
        stopping: Callable[[], bool],
    ) -> None:
        self.jobs = jobs
        self.claims = claims
        self.copies = copies
        self._stopping = stopping

    def holds(self, task_id: str) -> bool:
        """Whether the table has the job in any phase."""
        return self.jobs.phase(task_id) is not None

    async def run_taken_over(self, request: TaskRequest, payload: bytes, claim_id: str, *, taken_from: str) -> None:
        """Journal the job, retain its copy as this worker's, then queue it (statuses say `taken_over_from`)."""
        task_id = request.task_id
        try:
            self.jobs.accept(request, payload, claim_id)
        except JournalError as exc:
            # Nothing ran here: the takeover claim is left to expire, or to another takeover if this worker goes.
            log.error("task %s: taken over, but %s", task_id, exc)
            return
        await self.copies.publish(task_id, payload)
        self.jobs.place(task_id, claim_id, stopping=self._stopping(), taken_from=taken_from)

    def end_lost(self, status: JobStatus, claim_id: str) -> None:
        """Publish the job's end through the table: journaled, then renewed as settled once acknowledged."""
        self.jobs.report(status, claim_id=claim_id)

    def settled(self, task_id: str, claim_id: str | None) -> None:
        """Clear the copy, and renew the takeover claim (if kept) as settled."""
        self.copies.clear(task_id)
        if claim_id is not None:
            self.claims.settle(task_id)
            self.jobs.keeper.renew(task_id, claim_id)
