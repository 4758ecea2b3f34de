"""The worker's nursery tree: broker session, status publisher, intake, dispatcher, and shutdown."""

from __future__ import annotations

import logging
import math

import trio

from ansible_worker.broker_session import BrokerSession
from ansible_worker.config import Settings
from ansible_worker.dispatcher import Dispatcher
from ansible_worker.event_publisher import EventPublisher
from ansible_worker.intake import Accepted, Dropped, Rejected, read_cancel_message, read_task_message
from ansible_worker.job import JobRunner
from ansible_worker.models import CancelRequest
from ansible_worker.mqtt_link import InboundMessage, LinkError, LinkOptions
from ansible_worker.presence import Load, PresenceAnnouncer, WorkerState
from ansible_worker.status_outbox import StatusOutbox
from ansible_worker.topics import Topics

log = logging.getLogger(__name__)

# Time left after the jobs' own kill grace for their statuses to reach the broker.
SHUTDOWN_MARGIN = 5.0
PUBLISH_RETRY_PAUSE = 0.2


def link_options(settings: Settings) -> LinkOptions:
    mqtt = settings.mqtt
    return LinkOptions(
        host=mqtt.host,
        port=mqtt.port,
        client_id=mqtt.client_id or f"ansible-worker-{settings.worker.worker_id}",
        username=mqtt.username,
        password=mqtt.password.get_secret_value() if mqtt.password is not None else None,
        keepalive=mqtt.keepalive,
        tls_enabled=mqtt.tls_enabled,
        tls_ca_cert=mqtt.tls_ca_cert,
        tls_client_cert=mqtt.tls_client_cert,
        tls_client_key=mqtt.tls_client_key,
    )


class Worker:
    """One worker process's parts, supervised by `run`.

    Shutdown is `request_shutdown`: the serving nursery stops taking jobs, cancels queued and
    running ones, and gets `kill_grace` plus a margin to finish; the statuses are then
    flushed (bounded) before the broker session is cancelled and disconnects cleanly.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        worker = settings.worker
        self.topics = Topics(worker.topic_prefix, worker.group_name)
        self.tasks_subscription = self.topics.tasks_subscription(shared=worker.shared_subscription)
        self.outbox = StatusOutbox(interval=worker.status_interval)
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[InboundMessage](256)
        self.session = BrokerSession(
            link_options(settings),
            [(self.tasks_subscription, 2), (self.topics.cancel_subscription, 1)],
            self._inbox_send,
            will=lambda: self.presence.will(),
            on_connected=lambda: self.presence.connected(),
        )
        self.events = EventPublisher(self.session, qos=worker.events_qos) if worker.publish_events else None
        self.runner = JobRunner(
            worker, self.outbox, topics=self.topics, events=self.events, on_transition=lambda: self.presence.changed()
        )
        self.dispatcher = Dispatcher(
            self.runner, worker_id=worker.worker_id, capacity=worker.max_queue_size, concurrency=worker.concurrency
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
        self._serving: trio.CancelScope | None = None

    def request_shutdown(self, *, hurry: bool = False) -> None:
        """Begin a graceful shutdown; with `hurry`, stop waiting for running jobs."""
        self._shutdown.set()
        if hurry and self._serving is not None:
            self._serving.deadline = -math.inf

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
            await infrastructure.start(self.session.run)
            infrastructure.start_soon(self._publish_statuses)
            infrastructure.start_soon(self._take_messages)
            infrastructure.start_soon(self.presence.run)
            if self.events is not None:
                infrastructure.start_soon(self.events.run)
            async with trio.open_nursery() as serving:
                self._serving = serving.cancel_scope
                await serving.start(self.dispatcher.run)
                task_status.started()
                await self._shutdown.wait()
                log.info(
                    "shutting down: no new jobs; cancelling %d queued and %d running",
                    self.dispatcher.queued_count,
                    self.dispatcher.running_count,
                )
                if serving.cancel_scope.deadline == math.inf:
                    serving.cancel_scope.deadline = trio.current_time() + worker.kill_grace + SHUTDOWN_MARGIN
                self.presence.set_state(WorkerState.DRAINING)
                with trio.move_on_after(1):
                    await self.session.unsubscribe(self.tasks_subscription)
                self.dispatcher.close("cancelled: worker shutting down")
            with trio.move_on_after(SHUTDOWN_MARGIN) as flush:
                await self.outbox.wait_idle()
                await self.presence.publish_offline()
            if flush.cancelled_caught:
                log.warning("%d statuses could not be published before exit", self.outbox.pending_count)
            infrastructure.cancel_scope.cancel()
        log.info("worker %s stopped", worker.worker_id)

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
        log.warning("ignoring a message on unexpected topic %s", message.topic)

    def _take_cancel(self, task_id: str, message: InboundMessage) -> None:
        request = read_cancel_message(message.payload)
        if not isinstance(request, CancelRequest):
            log.warning("task %s: ignoring a cancel request: %s", task_id, request.reason)
            return
        if not self.dispatcher.cancel(task_id, request.describe(), requested_by=request.requested_by):
            log.debug("task %s: not held here; ignoring its cancel request", task_id)

    def _take_task(self, message: InboundMessage) -> None:
        match read_task_message(message.payload, max_bytes=self.settings.worker.max_message_bytes):
            case Accepted(job):
                self.dispatcher.submit(job)
            case Rejected(task_id, reason):
                self.dispatcher.reject(task_id, reason)
            case Dropped(reason):
                log.warning(
                    "dropped a task message (%d bytes) with no usable task_id: %s", len(message.payload), reason
                )

    async def _publish_statuses(self) -> None:
        """The one task that publishes statuses: QoS 1, retained, in the order jobs made them."""
        while True:
            status = await self.outbox.take()
            retention = self.settings.worker.status_retention
            expiry = retention if status.state.terminal and retention else None
            try:
                await self.session.publish(
                    self.topics.status(status.task_id), status.to_json(), qos=1, retain=True, expiry=expiry
                )
            except LinkError as exc:
                log.debug("status of %s not published yet: %s", status.task_id, exc)
                self.outbox.put_back(status)
                # The session may not have noticed the loss yet; pause before asking.
                await trio.sleep(PUBLISH_RETRY_PAUSE)
                await self.session.wait_connected()
            else:
                self.outbox.sent(status)
