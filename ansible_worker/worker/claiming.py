"""Claim each job the router lets in, then place it: the group agrees before this worker queues anything.

A task_id that no live claim speaks for may still have run long ago: its claim expired
(`worker.claim_lifetime` after the job was settled) while its status is retained. So before
it claims such a task_id, the worker reads the status the broker retains for it: any status
makes the copy a duplicate, refused as one that a live claim holds.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable

import trio

from ansible_worker.mqtt.link import LinkError, PublishRefused
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.protocol.claims import new_claim_id, request_digest
from ansible_worker.protocol.json_objects import json_object
from ansible_worker.protocol.models import TaskRequest
from ansible_worker.worker.group_claims import ClaimFailed, GroupClaims
from ansible_worker.worker.hand_back import HandBack
from ansible_worker.worker.jobs import JobTable
from ansible_worker.worker.journal import JournalError
from ansible_worker.worker.phases import Move, Phase
from ansible_worker.worker.request_copy import RequestCopyPublisher

log = logging.getLogger(__name__)

# Between attempts to claim a job while the broker does not answer.
CLAIM_RETRY_PAUSE = 5.0
# How long a claim given up (never confirmed) may take to be released.
RELEASE_TIMEOUT = 5.0
# How long the broker may take to say whether it retains a status for a task_id.
STATUS_CHECK_TIMEOUT = 10.0
# Between two tries to read a status topic that another part of the worker is reading.
BUSY_PAUSE = 0.1
# A status larger than this is not read for the log (a genuine one is a few KiB).
MAX_DESCRIBED_BYTES = 256 * 1024
_WORKER_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class StatusUnknown(ClaimFailed):
    """The broker did not say whether it retains a status for the task_id: nothing was claimed, nothing may run."""


class Claimer:
    """Asks the group for each new job, and hands the job table what it answers.

    Claims run in the `claiming` nursery that the worker opens (`nursery`) and closes before
    it stops: shutdown waits for them, since a job in a claim belongs to no one else yet.
    While a claim is out the table holds the job as `claiming`, with any cancel request that
    comes meanwhile; won, the job is queued (or handed back, when the worker is stopping).
    Claims go out side by side, but jobs are placed in the order their requests arrived:
    each waits until the one before it is placed or let go.
    """

    def __init__(
        self, session: BrokerSession, claims: GroupClaims, jobs: JobTable, hand_back: HandBack, shutdown: trio.Event
    ) -> None:
        self.session = session
        self.claims = claims
        self.jobs = jobs
        self.hand_back = hand_back
        self.shutdown = shutdown
        self.nursery: trio.Nursery | None = None
        # Where the request copies go; None keeps none (a worker that no survivor could replace).
        self.copies: RequestCopyPublisher | None = None
        # The status the broker retains for a task_id (None: none), by a bounded round trip;
        # None checks no task_id's past (a group whose claims live as long as its statuses).
        self.read_status: Callable[[str], Awaitable[bytes | None]] | None = None
        # Set once the job accepted last is placed, or let go: the next one waits for it.
        self._last_done = trio.Event()
        self._last_done.set()

    @property
    def open(self) -> bool:
        """Whether new claims may start."""
        return self.nursery is not None

    def start(
        self,
        request: TaskRequest,
        payload: bytes,
        *,
        signer: str | None = None,
        earlier: frozenset[str] = frozenset(),
        from_journal: bool = False,
    ) -> str | None:
        """Journal the job with a new claim id, then claim and place it in the background.

        `earlier` holds this worker's claims on the job before a restart (`from_journal`).
        Returns why the job must be refused (the journal cannot take it), or None.
        """
        assert self.nursery is not None
        task_id = request.task_id
        if (phase := self.jobs.phase(task_id)) is not None:
            log.warning("task %s is %s on this worker; ignoring the copy", task_id, phase.value)
            return None
        claim_id = new_claim_id()
        # On disk with its claim id before the claim: a worker killed now finds the job at its
        # next start (the broker will not send it again) and knows its claim.
        try:
            if from_journal:
                # Any of them may hold the job once this claim is out.
                self.jobs.resume(request, payload, " ".join([*sorted(earlier), claim_id]))
            else:
                self.jobs.accept(request, payload, claim_id)
        except JournalError as exc:
            log.error("task %s: %s", task_id, exc)
            return str(exc)
        before, done = self._last_done, trio.Event()
        self._last_done = done
        self.nursery.start_soon(self._claim_job, request, claim_id, earlier, signer, self.nursery, (before, done))
        return None

    async def _claim_job(
        self,
        request: TaskRequest,
        claim_id: str,
        earlier: frozenset[str],
        signer: str | None,
        nursery: trio.Nursery,
        turn: tuple[trio.Event, trio.Event],
    ) -> None:
        """The error boundary of one claim: any error fails this job's claim, not the worker.

        A job claimed while the worker stops is handed back in `nursery`, the claims' own.
        `turn` is the event of the job accepted before this one, and this one's own: set
        however this claim ends, so that the jobs behind it are never held up for good.
        """
        task_id = request.task_id
        before, done = turn
        try:
            if await self._claim_and_place(request, claim_id, earlier, signer, before) is Phase.HANDING_BACK:
                nursery.start_soon(self.hand_back.hand_back, task_id)
        except Exception:
            log.exception("task %s: could not claim and queue it", task_id)
            if self.jobs.phase(task_id) is Phase.CLAIMING:
                self.jobs.move(task_id, Move.LET_GO)
        finally:
            # Cut short (the worker stops at once): the journal keeps the job for the next start,
            # unless it was being refused.
            if (phase := self.jobs.phase(task_id)) in (Phase.CLAIMING, Phase.REFUSING):
                self.jobs.move(task_id, Move.KEEP if phase is Phase.CLAIMING else Move.REFUSED)
            # Ended before its turn (refused, let go): the next job still waits for the one before.
            if before.is_set():
                done.set()
            else:
                nursery.start_soon(_pass_turn, before, done)

    async def _claim_and_place(
        self, request: TaskRequest, claim_id: str, earlier: frozenset[str], signer: str | None, before: trio.Event
    ) -> Phase | None:
        """Place a job once the group agrees it is this worker's, and return its phase then.

        Placed, it is queued, or handed back when the worker stops (`JobTable.place`); a job
        another worker took is left to it. While the broker does not confirm the claim, it is
        tried again once connected (a claim that did reach the broker comes back as this
        worker's), until the worker shuts down: then the journal keeps the job for the next
        start, or without one the claim is released and the job refused. A claim the broker's
        ACL refuses is refused at once.
        """
        task_id = request.task_id
        won = await self._claim(request, claim_id, earlier, signer)
        if won is None:
            return None
        if not won:
            holder = self.claims.holder(task_id)
            log.warning(
                "task %s: refused %s: worker %s claimed it first; the original job's status is left alone",
                task_id,
                f"a replay signed by {signer}" if signer is not None else "a copy",
                holder.worker_id if holder is not None else "(unknown)",
            )
            self.jobs.move(task_id, Move.LET_GO)
            return None
        log.info("task %s: %sclaimed for this worker", task_id, f"signed by {signer}, " if signer else "")
        entry = self.jobs.entry(task_id)
        if self.copies is not None and entry is not None:
            # Won: the group keeps the request until the job is settled, before its `queued`.
            await self.copies.publish(task_id, entry.payload)
        # Its turn: every job accepted before it is placed or let go. Not bounded: each of
        # those claims ends on its own (its retries stop at shutdown).
        await before.wait()
        holder = self.claims.holder(task_id)
        if holder is not None and holder.claim_id != claim_id and holder.claim_id not in earlier:
            # Taken over meanwhile (this worker was judged lost): the job is the taker's now.
            log.warning(
                "task %s: worker %s took it over while it waited for its turn here; leaving it to that worker",
                task_id,
                holder.worker_id,
            )
            self.jobs.move(task_id, Move.LET_GO)
            return None
        # The claim that holds it: this one, or one made before a restart.
        return self.jobs.place(
            task_id, holder.claim_id if holder is not None else claim_id, stopping=self.shutdown.is_set()
        )

    async def _claim(
        self, request: TaskRequest, claim_id: str, earlier: frozenset[str], signer: str | None
    ) -> bool | None:
        """Whether this worker won the claim; None when it gave up, or refused a task_id that ran before.

        Either way the table let the job go or kept it.
        """
        task_id = request.task_id
        while True:
            try:
                entry = self.jobs.entry(task_id)
                digest = request_digest(entry.payload) if entry is not None and entry.payload else None
                status = await self._status_of_the_past(task_id, digest)
                if status is not None and earlier and _still_queued_here(status, self.jobs.worker_id):
                    # The journal's own job, announced (or handed back) here and never taken
                    # since: its claim lapsed while this worker was away, nothing else.
                    status = None
                if status is not None:
                    log.warning(
                        "task %s: refused %s: the group already took this task_id (its status is retained: %s);"
                        " the original job's status is left alone",
                        task_id,
                        f"a replay signed by {signer}" if signer is not None else "a duplicate",
                        _describe(status),
                    )
                    self.jobs.move(task_id, Move.LET_GO)
                    return None
                return await self.claims.claim(task_id, claim_id, also_ours=earlier, request_sha256=digest)
            except ClaimFailed as exc:
                if exc.permanent or self.shutdown.is_set():
                    await self._give_up(request, claim_id, exc, keep=not exc.permanent)
                    return None
                log.warning("task %s: could not claim it yet (%s); trying again", request.task_id, exc)
                # Bounded, so that a shutdown meanwhile is noticed.
                with trio.move_on_after(CLAIM_RETRY_PAUSE):
                    await self.session.wait_connected()

    async def _status_of_the_past(self, task_id: str, digest: str | None) -> bytes | None:
        """The status the broker retains for `task_id`, when no live claim or hand-back speaks for it; else None.

        A live claim decides on its own (another worker's refuses the copy; this worker's,
        from before a restart, keeps the job), and so does a live release that hands back
        this very request (`digest`): its `queued` status says who handed it back.

        Errors: `StatusUnknown` when the broker does not answer within `STATUS_CHECK_TIMEOUT`,
        or the link drops. Cancellation: the short subscription is ended (shielded, bounded).
        """
        if self.read_status is None or self.claims.holder(task_id) is not None:
            return None
        if digest is not None and self.claims.released_request(task_id) == digest:
            return None
        try:
            with trio.fail_after(STATUS_CHECK_TIMEOUT):
                while True:
                    try:
                        return await self.read_status(task_id)
                    except RuntimeError:
                        # The topic is being read already (a takeover of the same job), for a round trip.
                        await trio.sleep(BUSY_PAUSE)
        except trio.TooSlowError:
            raise StatusUnknown(
                f"the broker did not say within {STATUS_CHECK_TIMEOUT:g}s whether it retains a status for it"
            ) from None
        except PublishRefused as exc:
            # Its sync marker is refused: asking again would be refused again.
            raise StatusUnknown(
                f"its retained status could not be read: {exc} (check the broker's ACL for this worker)",
                permanent=True,
            ) from exc
        except LinkError as exc:
            raise StatusUnknown(f"its retained status could not be read: {exc}") from exc

    async def _give_up(self, request: TaskRequest, claim_id: str, exc: ClaimFailed, *, keep: bool) -> None:
        """Stop claiming a job: the journal keeps it when there is one, else it is released and refused.

        The journal forgets a refused job first; the table holds it as `refusing` until its
        refusal is out, so that a copy that comes meanwhile is not claimed again.
        """
        task_id = request.task_id
        if keep and self.jobs.journal is not None:
            log.warning("task %s: could not claim it (%s); the journal keeps it for the next start", task_id, exc)
            self.jobs.move(task_id, Move.KEEP)
            return
        reason = f"could not claim the job for this worker: {exc}"
        log.error("task %s: %s", task_id, reason)
        holder = self.claims.holder(task_id)
        if holder is not None and holder.claim_id != claim_id:
            # Another worker holds it: no word from this one may look like its end.
            self.jobs.move(task_id, Move.LET_GO)
            return
        self.jobs.move(task_id, Move.REFUSE)
        if not isinstance(exc, StatusUnknown):
            # The claim may have reached the broker after all: it must not hold the task_id for a
            # job that no one runs. (Stopped at the status check, nothing was claimed.)
            with trio.move_on_after(RELEASE_TIMEOUT):
                try:
                    await self.claims.release(task_id, claim_id)
                except LinkError as release_error:
                    log.debug("task %s: could not release the claim: %s", task_id, release_error)
        # Live only: without a confirmed claim this worker does not hold the job, and another
        # worker of the group may (its status is not ours).
        await self.jobs.statuses.send_refusal(task_id, reason)
        self.jobs.move(task_id, Move.REFUSED)


def _describe(status: bytes) -> str:
    """What a retained status says of its job, for the log: its state and worker, when it names them plainly."""
    if len(status) > MAX_DESCRIBED_BYTES:
        return f"{len(status)} bytes"
    try:
        document = json.loads(status)
    except (ValueError, RecursionError):
        return f"{len(status)} bytes that are not JSON"
    if not isinstance(document, dict):
        return "not a JSON object"
    state = document.get("state")
    said = [state if isinstance(state, str) and state.isalpha() and len(state) <= 16 else "state unknown"]
    worker = document.get("worker_id")
    if isinstance(worker, str) and _WORKER_ID.fullmatch(worker):
        said.append(f"worker {worker}")
    return ", ".join(said)


def _still_queued_here(status: bytes, worker_id: str) -> bool:
    """Whether a retained status says the job is queued on `worker_id`, or handed back by it and taken by no one."""
    document = json_object(status, max_bytes=MAX_DESCRIBED_BYTES)
    if document is None or document.get("state") != "queued":
        return False
    holder = document.get("worker_id")
    return holder == worker_id or (holder is None and document.get("handed_back_by") == worker_id)


async def _pass_turn(before: trio.Event, done: trio.Event) -> None:
    """Set `done` once `before` is: a job that ended before its turn passes the turn on in order."""
    await before.wait()
    done.set()
