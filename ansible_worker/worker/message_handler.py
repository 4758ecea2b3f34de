"""Carry out what the router decides for each message: the worker's state as the router sees it, and its hands."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ansible_worker.mqtt.options import InboundMessage
from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.worker.claiming import Claimer
from ansible_worker.worker.content_fetcher import ContentFetcher
from ansible_worker.worker.group_claims import GroupClaims
from ansible_worker.worker.group_locks import GroupLocks
from ansible_worker.worker.jobs import JobTable
from ansible_worker.worker.peers import PeerBook
from ansible_worker.worker.phases import Phase
from ansible_worker.worker.router import (
    Action,
    Cancel,
    Claim,
    HearClaim,
    HearContent,
    HearLocks,
    HearOwnPresence,
    HearPeer,
    HearRequestCopy,
    Ignore,
    Refuse,
    Router,
)

log = logging.getLogger(__name__)


class MessageHandler:
    """Routes each message with `router`, then acts on the parts; it is the router's `WorkerView`.

    What it answers about jobs comes from the job table.
    """

    def __init__(
        self,
        router: Router,
        *,
        content: ContentFetcher,
        claims: GroupClaims,
        jobs: JobTable,
        claimer: Claimer,
        peers: PeerBook,
        metrics: WorkerMetrics,
        shutdown: trio.Event,
        locks: GroupLocks | None = None,
    ) -> None:
        self.router = router
        self.content = content
        self.worker_id = router.worker_id
        self.claims = claims
        self.jobs = jobs
        self.claimer = claimer
        self.peers = peers
        self.locks = locks
        # What else hears presences and request copies (the takeover's liveness and copies).
        self.on_peer: Callable[[str, bytes, int | None], None] = lambda worker_id, payload, expiry: None
        self.on_request_copy: Callable[[str, bytes], None] = lambda task_id, payload: None
        self.on_own_presence: Callable[[bytes], None] = lambda payload: None
        self.metrics = metrics
        self._shutdown = shutdown

    async def serve(self, inbox: trio.MemoryReceiveChannel[InboundMessage]) -> None:
        """Handle each message of `inbox` in order, for ever; whatever arrives, the worker goes on.

        Cancellation: the messages not yet handled are dropped (the broker sends a job again
        only to a worker that did not acknowledge it).
        """
        async with inbox:
            async for message in inbox:
                try:
                    self.carry_out(self.router.route(message, self))
                except Exception:
                    log.exception("could not handle a message on %s", message.topic)

    def launch_scheduled(self, payload: bytes) -> None:
        """A tick the scheduler fired: routed as a task message that may use a schedule's task_id."""
        try:
            self.carry_out(self.router.route_task(payload, self, scheduled=True))
        except Exception:
            log.exception("could not launch a schedule's tick")

    def carry_out(self, action: Action) -> None:
        """Do what `action` says."""
        match action:
            case Claim(request, payload, signer):
                refusal = self.claimer.start(request, payload, signer=signer)
                if refusal is not None:
                    self.refuse(request.task_id, refusal)
            case Refuse(task_id, reason):
                self.refuse(task_id, reason)
            case Cancel(task_id, request, _):
                # Wherever the router found it, the table ends it as its phase allows.
                self.jobs.cancel(task_id, request)
            case HearClaim(task_id, message):
                self.claims.hear(task_id, message)
            case HearPeer(worker_id, payload, expiry):
                self.peers.hear(worker_id, payload)
                self.on_peer(worker_id, payload, expiry)
            case HearLocks(message):
                if self.locks is not None:
                    self.locks.hear(message)
            case HearRequestCopy(task_id, payload):
                self.on_request_copy(task_id, payload)
            case HearOwnPresence(payload):
                self.on_own_presence(payload)
            case HearContent(message):
                self.content.hear(message)
            case Ignore(reason, task_id, level, refused):
                if refused:
                    self.metrics.messages_refused += 1
                prefix = f"task {task_id}: " if task_id is not None else ""
                log.log(logging.DEBUG if level == "debug" else logging.WARNING, "%s%s", prefix, reason)

    def refuse(self, task_id: str, reason: str) -> None:
        """Answer a message that cannot run with a live `failed`, unless the group holds its task_id.

        A message that never became a job here must not replace the status the broker keeps
        for a job that ran anywhere in the group.
        """
        self.metrics.messages_refused += 1
        holder = self.claims.holder(task_id)
        if holder is not None or self.holds(task_id):
            who = holder.worker_id if holder is not None else self.worker_id
            log.warning(
                "task %s: refused a message (%s) for a job the group holds (worker %s); its status is left alone",
                task_id,
                reason,
                who,
            )
            return
        log.warning("task %s refused: %s", task_id, reason)
        self.jobs.statuses.refuse(task_id, reason)

    # What the router may ask (`router.WorkerView`).

    def holder_of(self, task_id: str) -> str | None:
        """The worker whose claim holds `task_id` in the group, if any."""
        holder = self.claims.holder(task_id)
        return holder.worker_id if holder is not None else None

    def in_queue(self, task_id: str) -> bool:
        """Whether the job is queued or running here."""
        return self.jobs.in_queue(task_id)

    def claiming(self, task_id: str) -> bool:
        """Whether this worker is claiming the job now (or refusing it, its claim failed)."""
        return self.jobs.phase(task_id) in (Phase.CLAIMING, Phase.REFUSING)

    def handing_back(self, task_id: str) -> bool:
        """Whether this worker is handing the job back now."""
        return self.jobs.phase(task_id) is Phase.HANDING_BACK

    @property
    def queue_full(self) -> bool:
        """Whether a new job would find no room; claims in flight will take room too."""
        jobs = self.jobs
        # A job cancelled while queued leaves its place in the queue only when a slot takes it.
        waiting = max(jobs.count(Phase.QUEUED), jobs.buffered)
        return waiting + jobs.count(Phase.CLAIMING, Phase.REFUSING) >= jobs.queue_size

    @property
    def shutting_down(self) -> bool:
        """Whether a shutdown was asked for."""
        return self._shutdown.is_set()

    @property
    def taking_claims(self) -> bool:
        """Whether a claim may start: the claims' nursery is open and, shutting down, has room."""
        # Shutting down, the claims waiting to be handed back are bounded as well.
        claims = self.jobs.count(Phase.CLAIMING, Phase.REFUSING, Phase.HANDING_BACK)
        return self.claimer.open and claims < self.jobs.queue_size

    def holds(self, task_id: str) -> bool:
        """Whether this worker holds the job of `task_id`, or is claiming or handing it back."""
        return self.jobs.holds(task_id)
