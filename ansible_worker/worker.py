"""The worker's nursery tree: broker session, status publisher, intake, dispatcher, and shutdown."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ansible_worker.broker_session import BrokerSession
from ansible_worker.config import Settings
from ansible_worker.dispatcher import Dispatcher
from ansible_worker.event_publisher import EventPublisher
from ansible_worker.intake import Accepted, Dropped, Rejected, read_cancel_message, read_task_message
from ansible_worker.job import EVENT_FIFO_NAME, RUN_DIRECTORY_PREFIX, Job, JobRunner
from ansible_worker.metrics import Snapshot, WorkerMetrics
from ansible_worker.models import CancelRequest, JobStatus, State, TaskRequest, utc_now
from ansible_worker.mqtt_link import InboundMessage, LinkError, LinkOptions, PublishRefused
from ansible_worker.peers import PeerBook
from ansible_worker.playbook_command import FIFO_VARIABLE
from ansible_worker.presence import Load, PresenceAnnouncer, WorkerState
from ansible_worker.status_outbox import StatusOutbox
from ansible_worker.topics import Topics

if TYPE_CHECKING:
    # sqlite3 is loaded only by workers that keep a journal, cryptography only by workers
    # that check signatures.
    from ansible_worker.journal import Journal
    from ansible_worker.signing import Verified
    from ansible_worker.task_gate import SignedTaskGate

log = logging.getLogger(__name__)

# Time left after the jobs' own kill grace for their statuses to reach the broker.
SHUTDOWN_MARGIN = 5.0
HAND_BACK_TIMEOUT = 5.0
OFFLINE_TIMEOUT = 2.0
UNPUBLISHABLE = "internal error: its status could not be published"
# Refusals waiting for their live answer; past this, a flood's answers are skipped (and logged).
MAX_PENDING_ANSWERS = 64
# How long a refusal's live answer may wait for the broker before it is given up (and logged).
ANSWER_TIMEOUT = 5.0
PUBLISH_RETRY_PAUSE = 0.2


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
            from ansible_worker.journal import Journal

            self.journal = Journal(worker.state_dir)
        self.outbox = StatusOutbox(interval=worker.status_interval, journal=self.journal)
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[InboundMessage](256)
        self._answers_send, self._answers_receive = trio.open_memory_channel[tuple[str, str]](MAX_PENDING_ANSWERS)
        trusted = settings.security.trusted
        subscriptions = [
            (self.tasks_subscription, 2),
            (self.topics.cancel_subscription, 1),
            (self.topics.workers_subscription, 1),
        ]
        if trusted is not None:
            subscriptions.append((self.topics.claims_subscription, 1))
        self.session = BrokerSession(
            link_options(settings),
            subscriptions,
            self._inbox_send,
            will=lambda: self.presence.will(),
            on_connected=lambda: self.presence.connected(),
        )
        self.gate: SignedTaskGate | None = None
        if trusted is not None:
            from ansible_worker.task_gate import SignedTaskGate

            self.gate = SignedTaskGate(
                settings.security, trusted, self.session, self.topics, worker_id=worker.worker_id
            )
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
        )
        self._shutdown = trio.Event()
        self._drain_wait = trio.CancelScope()
        self._hurry = False
        self._infrastructure: trio.Nursery | None = None
        # One entry per signed job whose claim is in flight: the cancel request that arrived
        # meanwhile, if any (bounded by the claims in flight).
        self._cancels_in_flight: dict[str, CancelRequest | None] = {}
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
            infrastructure.start_soon(self.presence.run)
            if self.events is not None:
                infrastructure.start_soon(self.events.run)
            async with trio.open_nursery() as serving:
                await serving.start(self.dispatcher.run)
                if self.journal is not None:
                    await self._settle_journal(self.journal)
                task_status.started()
                await self._shutdown.wait()
                await self._drain(serving.cancel_scope)
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
        from ansible_worker.health_endpoint import HealthEndpoint, worker_collector

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
                    case Accepted(request):
                        log.info("task %s was queued before a restart: queueing it again", entry.task_id)
                        self.dispatcher.submit(request, entry.payload)
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
            self.outbox.post(status)

    async def _end_left_over_run(self, run_dir: Path) -> None:
        """End every process of a run a previous worker process left, and remove its directory."""
        from ansible_worker.stray_processes import end_marked

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
        # One bound for them all: with the broker away, each would otherwise wait its own.
        with trio.move_on_after(HAND_BACK_TIMEOUT):
            while queued:
                await self._hand_back(queued[0].request, queued[0].payload, job=queued[0])
                queued.pop(0)
        for job in queued:
            self._cancel_unstarted(job.request, job)
        self._drain_wait.deadline = trio.current_time() + worker.drain_timeout
        with self._drain_wait:
            await self.dispatcher.wait_idle()
        if self.dispatcher.jobs:
            reason = "a second signal" if self._hurry else f"the drain timeout ({worker.drain_timeout:g}s)"
            log.info("cancelling %d running jobs after %s", len(self.dispatcher.jobs), reason)
            self.dispatcher.cancel_running("cancelled: worker shutting down")
        # The jobs end their process groups (SIGTERM, kill_grace, SIGKILL), then the slots stop.
        serving.deadline = trio.current_time() + worker.kill_grace + SHUTDOWN_MARGIN

    async def _hand_back(
        self, request: TaskRequest, payload: bytes, *, job: Job | None = None, claimed: bool = False
    ) -> None:
        """Give a job that did not start back to the group, or cancel it if nobody is there.

        A queued job (`job`) of a worker that checks signatures was claimed by it, as is one
        with `claimed`: the claim is released before the request goes back.
        """
        online = self.peers.online()
        if online and payload:
            status = JobStatus(
                task_id=request.task_id,
                state=State.QUEUED,
                created_at=job.created_at if job else utc_now(),
                playbook=request.playbook,
                handed_back_by=self.settings.worker.worker_id,
            )
            try:
                with trio.fail_after(HAND_BACK_TIMEOUT):
                    # This status goes first: the next worker's own statuses must follow it.
                    topic = self.topics.status(request.task_id)
                    await self.session.publish(topic, status.to_json(), qos=1, retain=True)
                    if self.gate is not None and (job is not None or claimed):
                        # Without a release the group would take the request for a replay.
                        await self.gate.release(request.task_id)
                    await self.session.publish(self.topics.tasks, payload, qos=2)
            except (LinkError, trio.TooSlowError) as exc:
                log.warning("task %s: could not hand it back (%s); cancelling it", request.task_id, exc)
            else:
                log.info("task %s handed back to the group (online: %s)", request.task_id, ", ".join(online))
                if self.journal is not None:
                    self.journal.settled(request.task_id)
                return
        self._cancel_unstarted(request, job)

    def _cancel_unstarted(self, request: TaskRequest, job: Job | None) -> None:
        description = "cancelled: the worker shut down before the job started"
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
            if self.gate is not None:
                self.gate.hear(task_id, message)
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
        request = read_cancel_message(message.payload, verify=verify)
        if not isinstance(request, CancelRequest):
            log.warning("task %s: ignoring a cancel request: %s", task_id, request.reason)
            return
        if self.dispatcher.cancel(task_id, request.describe(), requested_by=request.requested_by):
            return
        if task_id in self._cancels_in_flight:
            # Its claim is on the way: the cancel applies as soon as the job is queued.
            self._cancels_in_flight[task_id] = request
            return
        log.debug("task %s: not held here; ignoring its cancel request", task_id)

    def _take_task(self, message: InboundMessage) -> None:
        gate = self.gate
        verify = gate.verify_task if gate is not None else None
        payload = message.payload
        match read_task_message(payload, max_bytes=self.settings.worker.max_message_bytes, verify=verify):
            case Accepted(job) if job.task_id in self.dispatcher.jobs:
                self.dispatcher.submit(job, payload)  # logs and ignores the duplicate
            case Accepted(job) if (refusal := self.runner.admission_error(job)) is not None:
                self._refuse(job.task_id, refusal)
            case Accepted(job) if self.dispatcher.full and not self._shutdown.is_set():
                self._refuse(job.task_id, f"queue full (max {self.dispatcher.capacity})")
            case Accepted(job, signed) if gate is not None and signed is not None:
                self._admit_signed(gate, job, payload, signed)
            case Accepted(job) if self._shutdown.is_set() and self._infrastructure is not None:
                # Arrived while draining, just before the unsubscription took effect.
                self._infrastructure.start_soon(self._hand_back, job, payload)
            case Accepted(job):
                self.dispatcher.submit(job, payload)
            case Rejected(task_id, reason):
                self._refuse(task_id, reason)
            case Dropped(reason):
                self.metrics.messages_refused += 1
                log.warning("dropped a task message (%d bytes) with no usable task_id: %s", len(payload), reason)

    def _refuse(self, task_id: str, reason: str) -> None:
        """Answer a message that cannot run with `failed`, without harming a job the group holds.

        The answer is live only (not retained), and there is none for a task_id this worker
        or, with signatures, the group holds: a message that never became a job here must
        not replace the status the broker keeps for a job that ran anywhere in the group.
        """
        self.metrics.messages_refused += 1
        holder = self.gate.book.holder(task_id, now=trio.current_time()) if self.gate is not None else None
        if holder is not None or task_id in self.dispatcher.jobs:
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

    def _admit_signed(self, gate: SignedTaskGate, job: TaskRequest, payload: bytes, signed: Verified) -> None:
        """Queue a signed job once the group agrees it is this worker's; refuse replays and expired jobs."""
        from ansible_worker.signing import SignatureRefused

        replay = gate.replay_reason(job.task_id)
        if replay is not None:
            log.warning(
                "task %s: refused a replay signed by %s: %s; the original job's status is left alone",
                job.task_id,
                signed.signer,
                replay,
            )
            return
        try:
            gate.check_age(job.task_id, signed)
        except SignatureRefused as exc:
            self._refuse(job.task_id, str(exc))
            return
        assert self._infrastructure is not None
        if self._shutdown.is_set():
            # Not claimed yet: the next worker checks and claims it afresh.
            self._infrastructure.start_soon(self._hand_back, job, payload)
            return
        if job.task_id in self._cancels_in_flight:
            log.warning("task %s: this worker is claiming it already; ignoring the copy", job.task_id)
            return
        self._cancels_in_flight[job.task_id] = None
        self._infrastructure.start_soon(self._claim_then_submit, gate, job, payload, signed)

    async def _claim_then_submit(
        self, gate: SignedTaskGate, job: TaskRequest, payload: bytes, signed: Verified
    ) -> None:
        from ansible_worker.task_gate import ClaimFailed

        try:
            won = await gate.claim(job.task_id, signed)
        except ClaimFailed as exc:
            # Live only: without a confirmed claim this worker does not hold the job, and
            # another worker of the group may (its retained status is not ours to replace).
            self._cancels_in_flight.pop(job.task_id, None)
            await self._answer_refusal(job.task_id, f"could not claim the job for this worker: {exc}")
            return
        except BaseException:
            self._cancels_in_flight.pop(job.task_id, None)
            raise
        cancel = self._cancels_in_flight.pop(job.task_id, None)
        if not won:
            holder = gate.book.holder(job.task_id, now=trio.current_time())
            log.warning(
                "task %s: refused a replay signed by %s: worker %s claimed it first; the original job's status"
                " is left alone",
                job.task_id,
                signed.signer,
                holder.worker_id if holder is not None else "(unknown)",
            )
            return
        log.info("task %s: signed by %s, claimed for this worker", job.task_id, signed.signer)
        if self._shutdown.is_set() and cancel is None:
            await self._hand_back(job, payload, claimed=True)
            return
        # (Shutting down, a cancelled job is not handed back: it ends here, `cancelled`.)
        self.dispatcher.submit(job, payload)
        if cancel is not None:
            self.dispatcher.cancel(job.task_id, cancel.describe(), requested_by=cancel.requested_by)

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
                if self.journal is not None and status.state.terminal:
                    self.journal.settled(status.task_id)

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
