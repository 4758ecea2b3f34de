"""The worker's nursery tree: it wires the parts, carries out the router's actions, and drains."""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

import trio

from ansible_worker.mqtt.link import InboundMessage, LinkOptions
from ansible_worker.mqtt.reconnect import keep_trying_within
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.ops.config import MIN_FREEZE, Settings
from ansible_worker.ops.metrics import Snapshot, WorkerMetrics
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.runner import JobRunner
from ansible_worker.run.wiring import job_runner
from ansible_worker.templates.catalogue import build_catalogue
from ansible_worker.templates.schedules import scheduled_entries
from ansible_worker.templates.ticks import TickCheck
from ansible_worker.worker.catalogue_publisher import CataloguePublisher, read_catalogue
from ansible_worker.worker.claim_keeper import ClaimKeeper
from ansible_worker.worker.claim_sync import ClaimSync
from ansible_worker.worker.claiming import Claimer
from ansible_worker.worker.content_fetcher import ContentFetcher
from ansible_worker.worker.dispatcher import Dispatcher
from ansible_worker.worker.drain import Drain
from ansible_worker.worker.event_publisher import EventPublisher
from ansible_worker.worker.group_claims import GroupClaims
from ansible_worker.worker.group_locks import GroupLocks, LockPolicy
from ansible_worker.worker.hand_back import HandBack
from ansible_worker.worker.health_view import HealthView
from ansible_worker.worker.jobs import JobTable
from ansible_worker.worker.lost_workers import LostWorkers, copy_check
from ansible_worker.worker.message_handler import MessageHandler
from ansible_worker.worker.notifications import Notifier
from ansible_worker.worker.peers import PeerBook
from ansible_worker.worker.phases import Phase
from ansible_worker.worker.policies import RecordPolicy, SignaturePolicy, WorkerPolicies
from ansible_worker.worker.presence import Changes, Load, PresenceAnnouncer
from ansible_worker.worker.record_publisher import RecordPublisher
from ansible_worker.worker.recovery import settle_journal
from ansible_worker.worker.request_copy import RequestCopyPublisher
from ansible_worker.worker.router import Router
from ansible_worker.worker.scheduler import Clock, Scheduler, WallClock
from ansible_worker.worker.status_path import StatusPath
from ansible_worker.worker.templating import worker_templates

if TYPE_CHECKING:
    # sqlite3 is loaded only by workers that keep a journal, cryptography only by workers
    # that check signatures.
    from ansible_worker.worker.journal import Journal

log = logging.getLogger(__name__)

# Messages from the broker waiting for the router; the session waits when it is full.
INBOX_SIZE = 256


def link_options(settings: Settings) -> LinkOptions:
    """How this worker connects: the `mqtt` settings, with its own client id by default."""
    client_id = settings.mqtt.client_id or f"ansible-worker-{settings.worker.worker_id}"
    return settings.mqtt.link_options(client_id=client_id)


class Worker:
    """One worker process's parts, supervised by `serve`.

    Shutdown is `request_shutdown`: the worker says it is draining, stops taking jobs, hands
    queued ones back to the group (or cancels them when no other worker is online), lets
    running ones finish within `drain_timeout`, then cancels what is left, which then has
    `kill_grace` plus a margin to end. Statuses are flushed (bounded), the presence says
    offline, and the broker session is cancelled and disconnects cleanly.
    """

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        worker = settings.worker
        self.policies = WorkerPolicies.of(settings)
        self.worker_id = worker.worker_id
        self.group_name = worker.group_name
        self.max_message_bytes = worker.max_message_bytes
        self.http_settings = worker.http
        self.http_port: int | None = None
        self.topics = Topics(worker.topic_prefix, worker.group_name)
        self.tasks_subscription = self.topics.tasks_subscription(shared=worker.shared_subscription)
        self.journal: Journal | None = None
        if worker.state_dir is not None:
            from ansible_worker.worker.journal import Journal

            self.journal = Journal(worker.state_dir)
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[InboundMessage](INBOX_SIZE)
        # Claims first: their retained messages reach the claim book before any job does.
        subscriptions = [
            (self.topics.claims_subscription, 1),
            (self.topics.requests_subscription, 1),
            (self.tasks_subscription, 2),
            (self.topics.cancel_subscription, 1),
            (self.topics.workers_subscription, 1),
            (self.topics.locks, 1),
        ]
        self.session = BrokerSession(
            link_options(settings),
            subscriptions,
            self._inbox_send,
            reconnect=keep_trying_within(self.policies.presence.lost_after),
        )
        self._shutdown = trio.Event()
        self._wire_jobs(settings)
        self._wire_presence(settings)
        self._wire_group(settings)
        self._wire_templates(settings, clock or WallClock())

    def _wire_templates(self, settings: Settings, clock: Clock) -> None:
        """The catalogue and the schedules of `worker.templates`, if it is set."""
        self.clock = clock
        self.scheduler, self.catalogue = _schedules_and_catalogue(
            settings, self.session, self.topics, self.messages, clock
        )

    def _wire_jobs(self, settings: Settings) -> None:
        """The parts that carry a job: claims, the status path, the job table, the runner, the slots, presence."""
        worker, policies = settings.worker, self.policies
        self.claims = GroupClaims(self.session, self.topics, worker_id=self.worker_id, policy=policies.claims)
        # The state of every other worker of the group, from their presence messages.
        self.peers = PeerBook()
        lost_after = policies.presence.lost_after
        lock_signing = LockPolicy(policies.claims.signer, policies.claims.trusted)
        self.locks = GroupLocks(
            self.session, self.topics, worker_id=self.worker_id, policy=lock_signing, lost_after=lost_after
        )
        self.keeper = ClaimKeeper(self.claims)
        self.metrics = WorkerMetrics()
        self.statuses = StatusPath(
            self.session, self.topics, worker_id=self.worker_id, policy=policies.statuses, metrics=self.metrics
        )
        self.content = ContentFetcher(
            self.session, self.topics, client_id=self.session.options.client_id, timeout=worker.content_fetch_timeout
        )
        # Nothing is published for a job after a reconnection or a freeze until the claims are heard again.
        # The round trip is the presence's own echo, which every worker may publish and read.
        self.sync = ClaimSync(self.session, self._round_trip, gap=max(lost_after / 2, MIN_FREEZE))
        self.statuses.gate = self.claims.gate = self.sync.wait_synced
        self.copies = RequestCopyPublisher(self.session, self.topics)
        self.changes = Changes()
        self.jobs = JobTable(
            self.statuses,
            self.keeper,
            worker_id=self.worker_id,
            queue=policies.queue,
            journal=self.journal,
            on_change=self.changes.ring,
        )
        self.events = EventPublisher(self.session, qos=worker.events_qos) if worker.publish_events else None
        password = settings.mqtt.password
        # The table is the runner's status sink: it journals each move a status makes.
        self.runner = job_runner(
            worker,
            self.jobs,
            topics=self.topics,
            events=self.events,
            on_transition=self.changes.ring,
            hidden_values=[password.get_secret_value()] if password is not None else [],
            metrics=self.metrics,
            content=self.content,
            records=_record_publisher(policies.records, self.session, self.topics, self.statuses),
            locks=self.locks,
        )
        # A job that never runs is announced as the runner announces the others: logged and counted.
        self.jobs.announce = self.runner.announce
        self.dispatcher = Dispatcher(
            self.runner, self.jobs.waiting, concurrency=policies.queue.concurrency, taken=self.jobs.taken
        )

    def _wire_presence(self, settings: Settings) -> None:
        """What the worker tells the group of itself (its presence) and the world of its jobs (notifications)."""
        policies = self.policies
        self.notifier = _notifier(settings, self.metrics, self.statuses)
        self.presence = PresenceAnnouncer(
            self.session,
            self.topics.worker(self.worker_id),
            worker_id=self.worker_id,
            policy=policies.presence,
            load=self._load,
            changes=self.changes,
            metrics=self.metrics,
            signer=policies.claims.signer,
        )

    def _wire_group(self, settings: Settings) -> None:
        """The parts that deal with the group: peers, hand-backs, claiming, and the message handler."""
        self.hand_back = HandBack(self.session, self.topics, self.claims, self.peers, self.jobs)
        self.claimer = Claimer(self.session, self.claims, self.jobs, self.hand_back, self._shutdown)
        self.claimer.copies = self.copies
        self.claimer.read_status = self._retained_status
        router = _router(settings, self.policies.signatures, self.topics, self.claims, self.runner)
        self.lost = LostWorkers(
            self.policies,
            self.topics,
            worker_id=self.worker_id,
            claims=self.claims,
            sync=self.sync,
            jobs=self.jobs,
            statuses=self.statuses,
            copies=self.copies,
            stopping=self._shutdown.is_set,
            read_retained=partial(self.content.read_retained, sync=self._round_trip),
            check_copy=copy_check(
                settings.worker.max_message_bytes, self.policies.signatures, self.topics, self.runner, router
            ),
            locks=self.locks,
        )
        self.messages = MessageHandler(
            router,
            content=self.content,
            claims=self.claims,
            jobs=self.jobs,
            claimer=self.claimer,
            peers=self.peers,
            metrics=self.metrics,
            shutdown=self._shutdown,
            locks=self.locks,
        )
        self.messages.on_peer = self.lost.heard_peer
        self.messages.on_own_presence = self.presence.heard_own
        self.messages.on_request_copy = partial(self.lost.hear_copy, max_bytes=settings.worker.max_message_bytes)
        self.runner.may_start = self.lost.may_start
        self.health = HealthView(
            shutdown=self._shutdown,
            session=self.session,
            jobs=self.jobs,
            claims=self.claims,
            metrics=self.metrics,
            concurrency=self.policies.queue.concurrency,
        )
        self.drain = Drain(
            self.policies.drain,
            session=self.session,
            tasks_subscription=self.tasks_subscription,
            jobs=self.jobs,
            hand_back=self.hand_back,
            presence=self.presence,
            statuses=self.statuses,
            lost=self.lost,
            notifier=self.notifier,
        )

    async def _retained_status(self, task_id: str) -> bytes | None:
        # Its own sync marker per read: any number of reads may be in flight at once.
        return await self.content.read_retained(self.topics.status(task_id))

    async def _round_trip(self) -> None:
        await self.presence.round_trip()

    def _connected(self) -> None:
        self.presence.connected()
        self.lost.connected()

    def request_shutdown(self, *, hurry: bool = False) -> None:
        """Begin a graceful shutdown; with `hurry`, stop waiting for running jobs to finish."""
        self._shutdown.set()
        if hurry:
            self.drain.hurry()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the worker until a shutdown was asked for and its drain is over.

        Reports started once the journal is settled and jobs are taken.

        Errors: `SourceCacheError`, before anything starts, when the source cache is not
        private to the worker's user.

        Cancellation: running jobs end their process groups (shielded, within their kill
        grace); statuses not yet published are left in the journal, if there is one.
        """
        # First: a cache that others could change is refused before any job is taken.
        self.runner.sources.prepare()
        try:
            await self._serve_prepared(task_status)
        finally:
            # No job holds a tree any more: every nursery has ended.
            self.runner.sources.discard_temporary()
        log.info("worker %s stopped", self.worker_id)

    async def _serve_prepared(self, task_status: trio.TaskStatus[None]) -> None:
        log.info(
            "worker %s starting: group %s, concurrency %d, queue %d, playbooks in %s",
            self.worker_id,
            self.group_name,
            self.policies.queue.concurrency,
            self.policies.queue.size,
            self.runner.sources.playbook_directory,
        )
        async with trio.open_nursery() as infrastructure:
            if self.http_settings.port is not None:
                # First, so that liveness holds while the broker is still out of reach.
                serve_http = partial(self.health.serve, self.http_settings.host, self.http_settings.port)
                self.http_port = await infrastructure.start(serve_http)
            await infrastructure.start(
                partial(self.session.serve, will=self.presence.will, on_connected=self._connected)
            )
            infrastructure.start_soon(self.messages.serve, self._inbox_receive)
            # What the broker acknowledges goes back to the table.
            infrastructure.start_soon(self.statuses.serve_publisher, self.jobs)
            infrastructure.start_soon(self.keeper.serve_keep_alive, self.jobs.held_claims)
            for serve in (
                self.statuses.serve_answers,
                self.keeper.serve_renewals,
                self.presence.serve,
                self.sync.serve,
                self.copies.serve_clearing,
            ):
                infrastructure.start_soon(serve)
            await infrastructure.start(self.runner.warm_pool.serve)
            await infrastructure.start(self.locks.serve)
            if self.notifier is not None:
                infrastructure.start_soon(self.notifier.serve)
            if self.catalogue is not None and self.scheduler is not None:
                infrastructure.start_soon(self.catalogue.serve, self.clock.now)
                # Not waited for: it reads the catalogue from the broker, which may be away.
                infrastructure.start_soon(self.scheduler.serve)
            if self.events is not None:
                infrastructure.start_soon(self.events.serve)
            async with trio.open_nursery() as claiming:
                self.claimer.nursery = claiming
                async with trio.open_nursery() as serving:
                    await serving.start(self.dispatcher.serve)
                    if self.journal is not None:
                        # Only once the claims are heard: a job taken over meanwhile is fenced, not reported.
                        await self.sync.wait_synced()
                        await self._settle_journal(self.journal)
                    serving.start_soon(self.lost.serve)
                    task_status.started()
                    await self._shutdown.wait()
                    await self.drain.run(serving.cancel_scope)
                # Before the nursery closes: a job arriving now is refused, not lost.
                self.claimer.nursery = None
            await self.drain.say_goodbye()
            infrastructure.cancel_scope.cancel()
        if self.journal is not None:
            self.journal.close()

    def readiness(self) -> str | None:
        """Why this worker should not be sent jobs now, or None when it should."""
        return self.health.readiness()

    def snapshot(self) -> Snapshot:
        """What the metrics endpoint shows now."""
        return self.health.snapshot()

    def _load(self) -> Load:
        return Load(self.jobs.running_count, self.jobs.count(Phase.QUEUED), self.jobs.jobs_done)

    async def _settle_journal(self, journal: Journal) -> None:
        await settle_journal(
            journal.entries(),
            jobs=self.jobs,
            claimer=self.claimer,
            refuse=self.messages.refuse,
            max_message_bytes=self.max_message_bytes,
            kill_grace=self.policies.drain.kill_grace,
            holder_of=self.claims.holder,
            templates=self.messages.router.templates,
            templates_only=self.messages.router.templates_only,
        )


def _schedules_and_catalogue(
    settings: Settings, session: BrokerSession, topics: Topics, messages: MessageHandler, clock: Clock
) -> tuple[Scheduler | None, CataloguePublisher | None]:
    """The scheduler and the catalogue publisher of `worker.templates`, or neither when it is not set."""
    if settings.worker.templates is None:
        return None, None
    templates, only = messages.router.templates, settings.worker.templates_only
    worker_id = settings.worker.worker_id
    scheduler = Scheduler(
        scheduled_entries(templates),
        messages.launch_scheduled,
        clock=clock,
        read_catalogue=partial(read_catalogue, session, topics, client_id=session.options.client_id),
    )
    history = scheduler.history
    catalogue = CataloguePublisher(
        session,
        topics,
        lambda now: build_catalogue(templates, worker_id=worker_id, now=now, templates_only=only, history=history),
    )
    scheduler.on_change = catalogue.changed
    return scheduler, catalogue


def _record_publisher(
    policy: RecordPolicy | None, session: BrokerSession, topics: Topics, statuses: StatusPath
) -> RecordPublisher | None:
    """Where finished jobs' records go, unless `worker.publish_records` is off; gated and fenced as the statuses."""
    if policy is None:
        return None
    records = RecordPublisher(session, topics, limit=policy.limit, retention=policy.retention)
    records.gate, records.fenced = statuses.gate, statuses.fenced
    return records


def _router(
    settings: Settings, signatures: SignaturePolicy | None, topics: Topics, claims: GroupClaims, runner: JobRunner
) -> Router:
    """This worker's rules for incoming messages, with signature checks when jobs must be signed."""
    worker = settings.worker
    verify_task = verify_cancel = None
    if signatures is not None:
        from ansible_worker.worker.task_gate import SignedTaskGate

        gate = SignedTaskGate(signatures, topics, released=claims.released_request)
        verify_task, verify_cancel = gate.task_verifier, gate.cancel_verifier
    templates = worker_templates(settings)
    return Router(
        topics,
        worker_id=worker.worker_id,
        max_message_bytes=worker.max_message_bytes,
        queue_size=worker.max_queue_size,
        admission_error=runner.checks.admission_error,
        verify_task=verify_task,
        verify_cancel=verify_cancel,
        templates=templates,
        templates_only=worker.templates_only,
        ticks=TickCheck.of(scheduled_entries(templates)),
        released=claims.released_request,
    )


def _notifier(settings: Settings, metrics: WorkerMetrics, statuses: StatusPath) -> Notifier | None:
    """The webhooks of `worker.notifications`, offered every status the worker posts; None without any."""
    worker = settings.worker
    if not worker.notifications:
        return None
    notifier = Notifier(
        worker.notifications, dashboard_url=settings.dashboard.url, state_dir=worker.state_dir, metrics=metrics
    )
    statuses.on_post = notifier.offer_status
    notifier.gate, notifier.fenced = statuses.gate, statuses.fenced
    return notifier
