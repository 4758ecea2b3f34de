"""The worker's nursery tree: broker session, status publisher, intake, dispatcher, and shutdown."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ansible_worker.mqtt.link import InboundMessage, LinkError, LinkOptions, PublishRefused
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.ops.config import Settings
from ansible_worker.ops.metrics import Snapshot, WorkerMetrics
from ansible_worker.protocol.claims import Claim, new_claim_id
from ansible_worker.protocol.models import CancelRequest, JobStatus, State, TaskRequest, utc_now
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.command import FIFO_VARIABLE
from ansible_worker.run.job import EVENT_FIFO_NAME, RUN_DIRECTORY_PREFIX, Job, JobRunner
from ansible_worker.worker.dispatcher import Dispatcher
from ansible_worker.worker.event_publisher import EventPublisher
from ansible_worker.worker.group_claims import ClaimFailed, GroupClaims
from ansible_worker.worker.intake import Accepted, Dropped, Rejected, read_cancel_message, read_task_message
from ansible_worker.worker.outbox import StatusOutbox
from ansible_worker.worker.peers import PeerBook
from ansible_worker.worker.presence import Load, PresenceAnnouncer, WorkerState

if TYPE_CHECKING:
    # sqlite3 is loaded only by workers that keep a journal, cryptography only by workers
    # that check signatures.
    from ansible_worker.worker.journal import Journal
    from ansible_worker.worker.task_gate import SignedTaskGate

log = logging.getLogger(__name__)

# Time left after the jobs' own kill grace for their statuses to reach the broker.
SHUTDOWN_MARGIN = 5.0
# Each step of a hand-back (its status, the release, the request) has this bound.
HAND_BACK_TIMEOUT = 5.0
# How long a handed-back job waits for another worker's claim before this one takes it back.
HAND_BACK_ANSWER_TIMEOUT = 10.0
# Longest lifetime a claim can be given (the MQTT message expiry's limit), for "for ever".
LONGEST_CLAIM = 2**32 - 1
# How long a claim given up (never confirmed) may take to be released.
RELEASE_TIMEOUT = 5.0
OFFLINE_TIMEOUT = 2.0
UNPUBLISHABLE = "internal error: its status could not be published"
# Refusals waiting for their live answer; past this, a flood's answers are skipped (and logged).
MAX_PENDING_ANSWERS = 64
# How long a refusal's live answer may wait for the broker before it is given up (and logged).
ANSWER_TIMEOUT = 5.0
PUBLISH_RETRY_PAUSE = 0.2
# Between attempts to claim a job from the journal while the broker does not answer.
CLAIM_RETRY_PAUSE = 5.0
# A cancel request is a reason and a name, signed at most: anything larger is not one.
MAX_CANCEL_BYTES = 16 * 1024


def link_options(settings: Settings) -> LinkOptions:
    client_id = settings.mqtt.client_id or f"ansible-worker-{settings.worker.worker_id}"
    return settings.mqtt.link_options(client_id=client_id)


def _remove_run_directory(run_dir: Path) -> None:
    """Remove a left-over run directory; synchronous, once per interrupted job at start."""
    # Only a directory this worker made (the journal is 0600, but be sure of what is deleted).
    if run_dir.name.startswith(RUN_DIRECTORY_PREFIX) and run_dir.is_dir() and not run_dir.is_symlink():
        shutil.rmtree(run_dir, ignore_errors=True)


class Worker:
    """One worker process's parts, supervised by `run`.

    Shutdown is `request_shutdown`: the worker says it is draining, stops taking jobs, hands
    queued ones back to the group (or cancels them when no other worker is online), lets
    running ones finish within `drain_timeout`, then cancels what is left, which then has
    `kill_grace` plus a margin to end. Statuses are flushed (bounded), the presence says
    offline, and the broker session is cancelled and disconnects cleanly.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        worker = settings.worker
        self.topics = Topics(worker.topic_prefix, worker.group_name)
        self.tasks_subscription = self.topics.tasks_subscription(shared=worker.shared_subscription)
        self.journal: Journal | None = None
        if worker.state_dir is not None:
            from ansible_worker.worker.journal import Journal

            self.journal = Journal(worker.state_dir)
        self.outbox = StatusOutbox(interval=worker.status_interval, journal=self.journal)
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[InboundMessage](256)
        self._answers_send, self._answers_receive = trio.open_memory_channel[tuple[str, str]](MAX_PENDING_ANSWERS)
        security = settings.security
        trusted = security.trusted
        # Claims first: their retained messages reach the claim book before any job does.
        subscriptions = [
            (self.topics.claims_subscription, 1),
            (self.tasks_subscription, 2),
            (self.topics.cancel_subscription, 1),
            (self.topics.workers_subscription, 1),
        ]
        self.session = BrokerSession(
            link_options(settings),
            subscriptions,
            self._inbox_send,
            will=lambda: self.presence.will(),
            on_connected=lambda: self.presence.connected(),
        )
        claim_signing = security.claim_signing
        # A task_id is the group's for as long as its status is kept; a signed job's claim
        # also outlives every moment its signature could still be accepted.
        lifetime: float | None = worker.status_retention or None
        if claim_signing is not None:
            lifetime = max(lifetime or LONGEST_CLAIM, security.max_task_age + 2 * security.max_clock_skew)
        self.claims = GroupClaims(
            self.session,
            self.topics,
            worker_id=worker.worker_id,
            lifetime=lifetime,
            release_lifetime=security.max_task_age + security.max_clock_skew,
            signer=claim_signing[0] if claim_signing is not None else None,
            trusted=claim_signing[1] if claim_signing is not None else None,
        )
        self.gate: SignedTaskGate | None = None
        if trusted is not None:
            from ansible_worker.worker.task_gate import SignedTaskGate

            self.gate = SignedTaskGate(security, trusted, self.topics, released=self.claims.released)
        self.events = EventPublisher(self.session, qos=worker.events_qos) if worker.publish_events else None
        password = settings.mqtt.password
        self.metrics = WorkerMetrics()
        self.http_port: int | None = None
        self.runner = JobRunner(
            worker,
            self.outbox,
            topics=self.topics,
            events=self.events,
            on_transition=lambda: self.presence.changed(),
            hidden_values=[password.get_secret_value()] if password is not None else [],
            metrics=self.metrics,
        )
        self.dispatcher = Dispatcher(
            self.runner,
            worker_id=worker.worker_id,
            capacity=worker.max_queue_size,
            concurrency=worker.concurrency,
            journal=self.journal,
        )
        self.presence = PresenceAnnouncer(
            self.session,
            self.topics.worker(worker.worker_id),
            worker_id=worker.worker_id,
            capacity=worker.concurrency,
            interval=worker.heartbeat_interval,
            load=lambda: Load(self.dispatcher.running_count, self.dispatcher.queued_count, self.dispatcher.jobs_done),
            metrics=self.metrics,
        )
        self._shutdown = trio.Event()
        self._drain_wait = trio.CancelScope()
        self._hurry = False
        self._infrastructure: trio.Nursery | None = None
        # Where claims run, and the hand-backs of jobs claimed while draining: shutdown waits
        # for them (each is bounded), since a job in a claim belongs to no one else yet.
        self._claiming: trio.Nursery | None = None
        # One entry per job whose claim is in flight, or that is being handed back: the
        # cancel request that arrived meanwhile, if any (bounded by the queue's size).
        self._claims_in_flight: dict[str, CancelRequest | None] = {}
        self._handing_back: dict[str, CancelRequest | None] = {}
        self._cancel_arrived = trio.Event()
        # This worker's claim on each job it holds, queued or running, until the job's
        # terminal status has renewed it (bounded by the jobs held).
        self._claim_ids: dict[str, str] = {}
        self._renewals_send, self._renewals_receive = trio.open_memory_channel[tuple[str, str]](math.inf)
        # The state of every other worker of the group, from their presence messages.
        self.peers = PeerBook()

    def request_shutdown(self, *, hurry: bool = False) -> None:
        """Begin a graceful shutdown; with `hurry`, stop waiting for running jobs to finish."""
        self._shutdown.set()
        if hurry:
            self._hurry = True
            self._drain_wait.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        worker = self.settings.worker
        log.info(
            "worker %s starting: group %s, concurrency %d, queue %d, playbooks in %s",
            worker.worker_id,
            worker.group_name,
            worker.concurrency,
            worker.max_queue_size,
            worker.playbook_directory,
        )
        async with trio.open_nursery() as infrastructure:
            self._infrastructure = infrastructure
            if worker.http.port is not None:
                # First, so that liveness holds while the broker is still out of reach.
                self.http_port = await infrastructure.start(self._serve_http)
            await infrastructure.start(self.session.run)
            infrastructure.start_soon(self._publish_statuses)
            infrastructure.start_soon(self._take_messages)
            infrastructure.start_soon(self._serve_answers)
            infrastructure.start_soon(self._renew_claims)
            infrastructure.start_soon(self._keep_claims_alive)
            infrastructure.start_soon(self.presence.run)
            await infrastructure.start(self.runner.serve_warm_pool)
            if self.events is not None:
                infrastructure.start_soon(self.events.run)
            async with trio.open_nursery() as claiming:
                self._claiming = claiming
                async with trio.open_nursery() as serving:
                    await serving.start(self.dispatcher.run)
                    if self.journal is not None:
                        await self._settle_journal(self.journal)
                    task_status.started()
                    await self._shutdown.wait()
                    await self._drain(serving.cancel_scope)
                # Before the nursery closes: a job arriving now is refused, not lost.
                self._claiming = None
            with trio.move_on_after(SHUTDOWN_MARGIN) as flush:
                await self.outbox.wait_idle()
            if flush.cancelled_caught:
                log.warning("%d statuses could not be published before exit", self.outbox.pending_count)
            # Its own bound: a slow flush must not leave the presence saying `draining` for ever.
            with trio.move_on_after(OFFLINE_TIMEOUT):
                await self.presence.publish_offline()
            infrastructure.cancel_scope.cancel()
        if self.journal is not None:
            self.journal.close()
        log.info("worker %s stopped", worker.worker_id)

    def readiness(self) -> str | None:
        """Why this worker should not be sent jobs now, or None when it should."""
        if self._shutdown.is_set():
            return "draining"
        if not self.session.connected:
            return "not connected to the broker"
        return None

    def snapshot(self) -> Snapshot:
        return Snapshot(
            counts=self.metrics,
            queued=self.dispatcher.queued_count,
            running=self.dispatcher.running_count,
            capacity=self.settings.worker.concurrency,
            connected=self.session.connected,
            draining=self._shutdown.is_set(),
            reconnects=self.session.reconnects,
        )

    async def _serve_http(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        # Loaded only when asked for: prometheus_client and h11 are of no use otherwise.
        from ansible_worker.ops.health import HealthEndpoint, worker_collector

        endpoint = HealthEndpoint(ready=self.readiness, collector=worker_collector(self.snapshot))
        http = self.settings.worker.http
        assert http.port is not None
        await endpoint.serve(http.host, http.port, task_status=task_status)

    async def _settle_journal(self, journal: Journal) -> None:
        """Settle what a previous run of this worker left: run, report or re-publish.

        A job that was running is ended first (its processes outlive a worker killed
        alone), then reported, and its run directory removed.

        Cancellation: the kill grace of a left-over run is cut short.
        """
        for entry in journal.entries():
            if entry.state == State.QUEUED:
                match read_task_message(entry.payload, max_bytes=self.settings.worker.max_message_bytes):
                    case Accepted(request) if self._holds(entry.task_id):
                        # A copy arrived before the journal was read, and is being claimed.
                        continue
                    case Accepted(request):
                        log.info("task %s was queued before a restart: queueing it again", entry.task_id)
                        # Its claim is this worker's, unless the group gave it to another since.
                        earlier = frozenset((entry.claim_id or "").split())
                        self._start_claim(request, entry.payload, earlier=earlier, from_journal=True)
                        continue
                journal.settled(entry.task_id)
                continue
            status = JobStatus.model_validate(entry.status)
            if entry.state == State.RUNNING:
                log.info("task %s was running when the worker stopped: ending it, reporting it failed", entry.task_id)
                if entry.run_dir is not None:
                    await self._end_left_over_run(Path(entry.run_dir))
                status = status.model_copy(
                    update={
                        "state": State.FAILED,
                        "error_message": "interrupted: worker restarted",
                        "completed_at": utc_now(),
                        "current_task": None,
                    }
                )
            else:
                log.info("task %s: publishing its %s status again", entry.task_id, entry.state)
            if entry.claim_id:
                # Renewed once this terminal status is out, as for any job that ends.
                self._claim_ids[entry.task_id] = entry.claim_id.split()[-1]
            self.outbox.post(status)

    async def _end_left_over_run(self, run_dir: Path) -> None:
        """End every process of a run a previous worker process left, and remove its directory."""
        from ansible_worker.run.stray_processes import end_marked

        await end_marked(FIFO_VARIABLE, str(run_dir / EVENT_FIFO_NAME), kill_grace=self.settings.worker.kill_grace)
        _remove_run_directory(run_dir)

    async def _drain(self, serving: trio.CancelScope) -> None:
        """Stop taking jobs, hand queued ones back, let running ones finish in time, or end them."""
        worker = self.settings.worker
        log.info(
            "draining: no new jobs; %d queued to hand back, %d running (waiting up to %gs)",
            self.dispatcher.queued_count,
            self.dispatcher.running_count,
            0 if self._hurry else worker.drain_timeout,
        )
        self.presence.set_state(WorkerState.DRAINING)
        with trio.move_on_after(1):
            await self.session.unsubscribe(self.tasks_subscription)
        queued = self.dispatcher.stop_taking()
        async with trio.open_nursery() as handing_back:
            # All at once, each step bounded: with the broker away, one at a time would add up.
            for job in queued:
                claim_id = self._claim_ids.get(job.task_id)
                if claim_id is None:
                    # Not claimed through this worker (cannot happen): no release could free it.
                    self._cancel_unstarted(job.request, job)
                    continue
                self._handing_back[job.task_id] = None
                handing_back.start_soon(self._hand_back, job.request, job.payload, claim_id, job)
            self._drain_wait.deadline = trio.current_time() + worker.drain_timeout
            with self._drain_wait:
                await self.dispatcher.wait_idle()
            if self.dispatcher.jobs:
                reason = "a second signal" if self._hurry else f"the drain timeout ({worker.drain_timeout:g}s)"
                log.info("cancelling %d running jobs after %s", len(self.dispatcher.jobs), reason)
                self.dispatcher.cancel_running("cancelled: worker shutting down")
        # The jobs end their process groups (SIGTERM, kill_grace, SIGKILL), then the slots stop.
        serving.deadline = trio.current_time() + worker.kill_grace + SHUTDOWN_MARGIN

    async def _hand_back(self, request: TaskRequest, payload: bytes, claim_id: str, job: Job | None = None) -> None:
        """Give a job this worker claimed (as `claim_id`) but did not start back to the group.

        The job has one owner at every moment. It stays this worker's until its `queued`
        status (saying who handed it back) has reached the broker through the outbox, so
        that no status of the next worker can be overtaken by it; then the claim is released
        and the request published again. If no other worker claims it within
        `HAND_BACK_ANSWER_TIMEOUT`, or a cancel request for it arrives meanwhile, this worker
        claims it back and cancels it with a reason. With no fresh peer, it is cancelled at once.

        The caller has entered the job in `_handing_back`. Cancellation: the job is left to
        the journal (when there is one) as it stands.
        """
        task_id = request.task_id
        try:
            await self._give_back(request, payload, claim_id, job)
        finally:
            self._handing_back.pop(task_id, None)

    async def _give_back(self, request: TaskRequest, payload: bytes, claim_id: str, job: Job | None) -> None:
        task_id = request.task_id
        online = self.peers.online()
        if not online or not payload:
            self._cancel_unstarted(request, job)
            return
        self.outbox.post(
            JobStatus(
                task_id=task_id,
                state=State.QUEUED,
                created_at=job.created_at if job else utc_now(),
                playbook=request.playbook,
                handed_back_by=self.settings.worker.worker_id,
            )
        )
        with trio.move_on_after(HAND_BACK_TIMEOUT):
            await self.outbox.wait_sent(task_id)
        if self.outbox.holds(task_id):
            log.warning("task %s: its hand-back status did not reach the broker; cancelling it here", task_id)
            self._cancel_unstarted(request, job)
            return
        cancel = self._handing_back.get(task_id)
        if cancel is not None:
            # Still this worker's: the cancel ends it here.
            self._cancel_unstarted(request, job, cancel.describe())
            return
        try:
            with trio.fail_after(HAND_BACK_TIMEOUT):
                await self.claims.release(task_id, claim_id)
        except (LinkError, trio.TooSlowError) as exc:
            # The release may be out or not: who owns the job is settled by a claim below.
            log.warning("task %s: its release was not confirmed (%s)", task_id, exc)
        else:
            # A cancel that came meanwhile keeps the request back: the job is taken back below.
            if self._handing_back.get(task_id) is None:
                await self._republish(task_id, payload)
        ours = frozenset({claim_id})
        taken: Claim | None = None
        with trio.move_on_after(HAND_BACK_ANSWER_TIMEOUT):
            async with trio.open_nursery() as waiting:
                waiting.start_soon(self._cancel_when_asked, task_id, waiting.cancel_scope)
                taken = await self.claims.wait_taken(task_id, ours)
                waiting.cancel_scope.cancel()
        if taken is None:
            # Nobody answered, or a cancel came: take it back with a claim of its own (the
            # released one never holds again), unless the release never took effect.
            back_id = new_claim_id()
            if self.journal is not None:
                # Either may hold the job after a crash now: the release may not have landed.
                self.journal.claimed(task_id, f"{claim_id} {back_id}")
            try:
                back = await self.claims.claim(task_id, back_id, also_ours=ours)
            except ClaimFailed as exc:
                log.error(
                    "task %s: handed back, but neither taken by another worker nor back here (%s);"
                    " the journal, if any, keeps it for this worker's next start",
                    task_id,
                    exc,
                )
                return
            if back:
                holder = self.claims.holder(task_id)
                if holder is not None:
                    # Renewed when its cancelled status is out.
                    self._claim_ids[task_id] = holder.claim_id
                cancel = self._handing_back.get(task_id)
                if cancel is not None:
                    reason = cancel.describe()
                else:
                    reason = (
                        f"cancelled: handed back by {self.settings.worker.worker_id} while it shut down, but no"
                        f" other worker took it within {HAND_BACK_ANSWER_TIMEOUT:g}s"
                    )
                self._cancel_unstarted(request, job, reason)
                return
            taken = self.claims.holder(task_id)
        self._claim_ids.pop(task_id, None)
        if self._handing_back.get(task_id) is not None:
            log.warning(
                "task %s: a cancel request came during its hand-back, but worker %s had taken it; cancel it again"
                " there if it still runs",
                task_id,
                taken.worker_id if taken is not None else "(unknown)",
            )
        log.info(
            "task %s handed back to the group: worker %s took it",
            task_id,
            taken.worker_id if taken is not None else "(unknown)",
        )
        if self.journal is not None:
            self.journal.settled(task_id)

    async def _republish(self, task_id: str, payload: bytes) -> None:
        try:
            with trio.fail_after(HAND_BACK_TIMEOUT):
                await self.session.publish(self.topics.tasks, payload, qos=2)
        except (LinkError, trio.TooSlowError) as exc:
            # It may still arrive: the next worker's claim, or this one's, decides.
            log.warning("task %s: its request was not confirmed by the broker (%s)", task_id, exc)

    async def _cancel_when_asked(self, task_id: str, waiting: trio.CancelScope) -> None:
        """End the wait for another worker's answer as soon as a cancel request for the job arrives."""
        while self._handing_back.get(task_id) is None:
            await self._cancel_arrived.wait()
        waiting.cancel()

    def _cancel_unstarted(
        self,
        request: TaskRequest,
        job: Job | None,
        description: str = "cancelled: the worker shut down before the job started",
    ) -> None:
        if job is None:
            now = utc_now()
            refused = JobStatus(
                task_id=request.task_id,
                state=State.CANCELLED,
                created_at=now,
                completed_at=now,
                error_message=description,
                worker_id=self.settings.worker.worker_id,
                playbook=request.playbook,
            )
            self.outbox.post(refused)
            log.info("task %s %s", request.task_id, description)
            return
        job.finish(State.CANCELLED, description)
        self.runner.announce(job)

    async def _take_messages(self) -> None:
        async with self._inbox_receive:
            async for message in self._inbox_receive:
                try:
                    self._take_message(message)
                except Exception:
                    # Whatever the network sends, the worker goes on.
                    log.exception("could not handle a message on %s", message.topic)

    def _take_message(self, message: InboundMessage) -> None:
        if message.topic == self.topics.tasks:
            self._take_task(message)
            return
        task_id = self.topics.task_id_of_cancel(message.topic)
        if task_id is not None:
            self._take_cancel(task_id, message)
            return
        task_id = self.topics.task_id_of_claim(message.topic)
        if task_id is not None:
            self.claims.hear(task_id, message)
            return
        if message.topic.startswith(self.topics.worker("")):
            self._take_presence(message)
            return
        log.warning("ignoring a message on unexpected topic %s", message.topic)

    def _take_presence(self, message: InboundMessage) -> None:
        worker_id = message.topic.rsplit("/", 1)[-1]
        if worker_id != self.settings.worker.worker_id:
            self.peers.hear(worker_id, message.payload)

    def _take_cancel(self, task_id: str, message: InboundMessage) -> None:
        verify = self.gate.cancel_verifier(task_id) if self.gate is not None else None
        request = read_cancel_message(message.payload, max_bytes=MAX_CANCEL_BYTES, verify=verify)
        if not isinstance(request, CancelRequest):
            log.warning("task %s: ignoring a cancel request: %s", task_id, request.reason)
            return
        if self.dispatcher.cancel(task_id, request.describe(), requested_by=request.requested_by):
            return
        if task_id in self._claims_in_flight:
            # Its claim is on the way: the cancel applies as soon as the job is queued.
            self._claims_in_flight[task_id] = request
            return
        if task_id in self._handing_back:
            # Still this worker's, or about to be again: the hand-back ends it here.
            self._handing_back[task_id] = request
            self._cancel_arrived.set()
            self._cancel_arrived = trio.Event()
            return
        log.debug("task %s: not held here; ignoring its cancel request", task_id)

    def _take_task(self, message: InboundMessage) -> None:
        verify = self.gate.verify_task if self.gate is not None else None
        payload = message.payload
        match read_task_message(payload, max_bytes=self.settings.worker.max_message_bytes, verify=verify):
            case Accepted(job) if job.task_id in self.dispatcher.jobs:
                self.dispatcher.submit(job, payload)  # logs and ignores the duplicate
            case Accepted(job) if (refusal := self.runner.admission_error(job)) is not None:
                self._refuse(job.task_id, refusal)
            case Accepted(job, signed) if (holder := self.claims.holder(job.task_id)) is not None:
                what = f"a replay signed by {signed.signer}" if signed is not None else "a duplicate"
                log.warning(
                    "task %s: refused %s: the group already took this task_id (worker %s);"
                    " the original job's status is left alone",
                    job.task_id,
                    what,
                    holder.worker_id,
                )
            case Accepted(job) if job.task_id in self._claims_in_flight:
                log.warning("task %s: this worker is claiming it already; ignoring the copy", job.task_id)
            case Accepted(job) if self._queue_full and not self._shutdown.is_set():
                self._refuse(job.task_id, f"queue full (max {self.dispatcher.capacity})")
            case Accepted(job) if job.task_id in self._handing_back:
                log.warning("task %s: this worker is handing it back; ignoring the copy", job.task_id)
            case Accepted(job) if self._claiming is None or (
                len(self._claims_in_flight) + len(self._handing_back) >= self.dispatcher.capacity
            ):
                # Shutting down: the claims waiting to be handed back are bounded as well.
                self._refuse(job.task_id, "the worker is shutting down")
            case Accepted(job, signed):
                self._start_claim(job, payload, signer=signed.signer if signed is not None else None)
            case Rejected(task_id, reason):
                self._refuse(task_id, reason)
            case Dropped(reason):
                self.metrics.messages_refused += 1
                log.warning("dropped a task message (%d bytes) with no usable task_id: %s", len(payload), reason)

    @property
    def _queue_full(self) -> bool:
        # The claims in flight will take room in the queue too.
        # A job cancelled while queued leaves its place in the queue only when a slot takes it.
        waiting = max(self.dispatcher.queued_count, self.dispatcher.buffered)
        return waiting + len(self._claims_in_flight) >= self.dispatcher.capacity

    def _refuse(self, task_id: str, reason: str) -> None:
        """Answer a message that cannot run with `failed`, without harming a job the group holds.

        The answer is live only (not retained), and there is none for a task_id this worker
        or the group holds: a message that never became a job here must
        not replace the status the broker keeps for a job that ran anywhere in the group.
        """
        self.metrics.messages_refused += 1
        holder = self.claims.holder(task_id)
        if holder is not None or self._holds(task_id):
            who = holder.worker_id if holder is not None else self.settings.worker.worker_id
            log.warning(
                "task %s: refused a message (%s) for a job the group holds (worker %s); its status is left alone",
                task_id,
                reason,
                who,
            )
            return
        log.warning("task %s refused: %s", task_id, reason)
        try:
            self._answers_send.send_nowait((task_id, reason))
        except trio.WouldBlock:
            # A flood of bad messages: answering each would grow without bound.
            log.warning("task %s: too many refusals waiting to be sent; this one is not answered", task_id)

    def _holds(self, task_id: str) -> bool:
        """Whether this worker holds the job of `task_id`, or is claiming or handing it back."""
        return task_id in self.dispatcher.jobs or task_id in self._claims_in_flight or task_id in self._handing_back

    async def _serve_answers(self) -> None:
        """Send the live answers to refused messages, one at a time, each bounded."""
        async with self._answers_receive:
            async for task_id, reason in self._answers_receive:
                await self._answer_refusal(task_id, reason)

    async def _answer_refusal(self, task_id: str, reason: str) -> None:
        status = JobStatus.refusal(task_id, reason, worker_id=self.settings.worker.worker_id, live_only=True)
        try:
            with trio.fail_after(ANSWER_TIMEOUT):
                await self.session.publish(self.topics.status(task_id), status.to_json(), qos=1)
        except (LinkError, trio.TooSlowError) as exc:
            log.warning("task %s: could not send its refusal: %s", task_id, exc)

    def _start_claim(
        self,
        job: TaskRequest,
        payload: bytes,
        *,
        signer: str | None = None,
        earlier: frozenset[str] = frozenset(),
        from_journal: bool = False,
    ) -> None:
        """Claim a job in the background, then queue it; `earlier`: this worker's claims on it before a restart."""
        # Bounded: a claim in flight counts against the queue's size (see `_take_task`).
        assert self._claiming is not None
        claim_id = new_claim_id()
        if self.journal is not None:
            from ansible_worker.worker.journal import JournalError

            # On disk with its claim id before the claim: a worker killed now finds the job
            # at its next start (the broker will not send it again) and knows its claim.
            now = utc_now()
            arrived = JobStatus(task_id=job.task_id, state=State.QUEUED, created_at=now, playbook=job.playbook)
            try:
                if not from_journal:
                    self.journal.accepted(job.task_id, payload, arrived, claim_id=claim_id)
                else:
                    # Any of them may hold the job once this claim is out.
                    self.journal.claimed(job.task_id, " ".join([*sorted(earlier), claim_id]))
            except JournalError as exc:
                log.error("task %s: %s", job.task_id, exc)
                self._refuse(job.task_id, str(exc))
                return
        self._claims_in_flight[job.task_id] = None
        self._claiming.start_soon(self._claim_then_submit, job, payload, claim_id, earlier, signer)

    async def _claim_then_submit(
        self,
        job: TaskRequest,
        payload: bytes,
        claim_id: str,
        earlier: frozenset[str],
        signer: str | None,
    ) -> None:
        """Queue a job once the group agrees it is this worker's; a job another worker took is left to it.

        While the broker does not confirm the claim, it is tried again once connected (a
        claim that did reach the broker comes back as this worker's), until the worker
        shuts down: then the journal keeps the job for the next start, or without one the
        claim is released and the job refused. A claim the broker's ACL refuses is refused
        at once. Any other error fails this one job, not the worker.
        """
        try:
            await self._claim_and_queue(job, payload, claim_id, earlier, signer)
        except Exception:
            log.exception("task %s: could not claim and queue it", job.task_id)
            self._claims_in_flight.pop(job.task_id, None)
            self._claim_ids.pop(job.task_id, None)
            if self.journal is not None:
                self.journal.settled(job.task_id)

    async def _claim_and_queue(
        self, job: TaskRequest, payload: bytes, claim_id: str, earlier: frozenset[str], signer: str | None
    ) -> None:
        task_id = job.task_id
        try:
            while True:
                try:
                    won = await self.claims.claim(task_id, claim_id, also_ours=earlier)
                    break
                except ClaimFailed as exc:
                    if exc.permanent or self._shutdown.is_set():
                        await self._give_up_claim(job, claim_id, exc, keep=not exc.permanent)
                        return
                    log.warning("task %s: could not claim it yet (%s); trying again", task_id, exc)
                    # Bounded, so that a shutdown meanwhile is noticed.
                    with trio.move_on_after(CLAIM_RETRY_PAUSE):
                        await self.session.wait_connected()
        finally:
            cancel = self._claims_in_flight.pop(task_id, None)
        if not won:
            holder = self.claims.holder(task_id)
            log.warning(
                "task %s: refused %s: worker %s claimed it first; the original job's status is left alone",
                task_id,
                f"a replay signed by {signer}" if signer is not None else "a copy",
                holder.worker_id if holder is not None else "(unknown)",
            )
            if self.journal is not None:
                self.journal.settled(task_id)
            return
        if signer is not None:
            log.info("task %s: signed by %s, claimed for this worker", task_id, signer)
        else:
            log.info("task %s: claimed for this worker", task_id)
        holder = self.claims.holder(task_id)
        # The claim that holds it: this one, or one made before a restart.
        claim_id = holder.claim_id if holder is not None else claim_id
        self._claim_ids[task_id] = claim_id
        if self._shutdown.is_set() and cancel is None:
            self._handing_back[task_id] = None
            await self._hand_back(job, payload, claim_id)
            return
        # (Shutting down, a cancelled job is not handed back: it ends here, `cancelled`.)
        # (A refused one gets a terminal status too, after which its claim is renewed.)
        self.dispatcher.submit(job, payload)
        if cancel is not None:
            self.dispatcher.cancel(task_id, cancel.describe(), requested_by=cancel.requested_by)

    async def _give_up_claim(self, job: TaskRequest, claim_id: str, exc: ClaimFailed, *, keep: bool) -> None:
        """Stop claiming a job: the journal keeps it when there is one, else it is released and refused."""
        if keep and self.journal is not None:
            log.warning("task %s: could not claim it (%s); the journal keeps it for the next start", job.task_id, exc)
            return
        reason = f"could not claim the job for this worker: {exc}"
        log.error("task %s: %s", job.task_id, reason)
        if self.journal is not None:
            self.journal.settled(job.task_id)
        holder = self.claims.holder(job.task_id)
        if holder is not None and holder.claim_id != claim_id:
            # Another worker holds it: no word from this one may look like its end.
            return
        # The claim may have reached the broker after all: it must not hold the task_id
        # for a job that no one runs.
        with trio.move_on_after(RELEASE_TIMEOUT):
            try:
                await self.claims.release(job.task_id, claim_id)
            except LinkError as release_error:
                log.debug("task %s: could not release the claim: %s", job.task_id, release_error)
        # Live only: without a confirmed claim this worker does not hold the job, and another
        # worker of the group may (its status is not ours).
        await self._answer_refusal(job.task_id, reason)

    async def _keep_claims_alive(self) -> None:
        """Renew the claims of the jobs held here every half lifetime, so that a long job's claim never lapses."""
        lifetime = self.claims.lifetime
        if lifetime is None:
            return
        while True:
            await trio.sleep(lifetime / 2)
            for task_id, claim_id in list(self._claim_ids.items()):
                self._renewals_send.send_nowait((task_id, claim_id))

    async def _renew_claims(self) -> None:
        """Publish the claim of each job that ended again, so that it lasts as long as the job's status."""
        async with self._renewals_receive:
            async for task_id, claim_id in self._renewals_receive:
                try:
                    with trio.fail_after(ANSWER_TIMEOUT):
                        await self.claims.refresh(task_id, claim_id)
                except Exception as exc:
                    # The claim still holds for its first lifetime, from when it was made.
                    log.warning("task %s: could not renew its claim: %s", task_id, exc)

    async def _publish_statuses(self) -> None:
        """The one task that publishes statuses: QoS 1, retained, in the order jobs made them.

        A status that cannot be sent for any reason but the link fails its own job, with
        the reason, and the worker goes on.
        """
        while True:
            status = await self.outbox.take()
            retention = self.settings.worker.status_retention
            expiry = retention if status.state.terminal and retention else None
            try:
                sent_at = trio.current_time()
                await self.session.publish(
                    self.topics.status(status.task_id), status.to_json(), qos=1, retain=True, expiry=expiry
                )
            except PublishRefused as exc:
                # Sending it again would be refused again; a clear line is all that helps.
                log.error("status of %s is lost: %s (check the broker's ACL for this worker)", status.task_id, exc)
                self.outbox.sent(status)
            except LinkError as exc:
                log.debug("status of %s not published yet: %s", status.task_id, exc)
                self.outbox.put_back(status)
                # The session may not have noticed the loss yet; pause before asking.
                await trio.sleep(PUBLISH_RETRY_PAUSE)
                await self.session.wait_connected()
            except Exception as exc:
                log.exception("task %s: its %s status could not be published", status.task_id, status.state)
                self.outbox.sent(status)
                self._fail_unpublishable(status, f"{UNPUBLISHABLE}: {exc}")
            else:
                self.metrics.status_publish_latency.observe(trio.current_time() - sent_at)
                self.outbox.sent(status)
                if status.state.terminal:
                    if self.journal is not None:
                        self.journal.settled(status.task_id)
                    claim_id = self._claim_ids.pop(status.task_id, None)
                    if claim_id is not None:
                        self._renewals_send.send_nowait((status.task_id, claim_id))

    def _fail_unpublishable(self, status: JobStatus, reason: str) -> None:
        """End the job whose status could not be sent; its terminal status carries the reason.

        The replacement is tried once: if even it cannot be sent, the status is lost (logged)
        rather than retried for ever.
        """
        reason = reason[:1000]
        if status.error_message is not None and status.error_message.startswith(UNPUBLISHABLE):
            log.error("task %s: its replacement status could not be published either; it is lost", status.task_id)
            return
        if not status.state.terminal and self.dispatcher.cancel(status.task_id, reason, state=State.FAILED):
            return
        # Nothing left to end: send the little that is certain to serialize.
        self.outbox.post(
            JobStatus(
                task_id=status.task_id,
                state=State.FAILED,
                created_at=status.created_at,
                completed_at=utc_now(),
                error_message=reason,
                worker_id=self.settings.worker.worker_id,
            )
        )
