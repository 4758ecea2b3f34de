"""The one path of every status to the broker: outbox, publisher, and live refusals.

Every status of every job (accepted, refused, handed back, recovered from the journal) is
posted here by the job table, which journals it first, and one task publishes them in order;
what the broker does with each is told back to the table (`PublishOutcomes`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from ansible_worker.mqtt.link import LinkError, PublishRefused
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.protocol.models import JobStatus, State
from ansible_worker.protocol.statuses import early_status
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker.outbox import StatusOutbox
from ansible_worker.worker.policies import StatusPolicy

log = logging.getLogger(__name__)

UNPUBLISHABLE = "internal error: its status could not be published"
# Refusals waiting for their live answer; past this, a flood's answers are skipped (and logged).
MAX_PENDING_ANSWERS = 64
# How long a refusal's live answer may wait for the broker before it is given up (and logged).
ANSWER_TIMEOUT = 5.0
PUBLISH_RETRY_PAUSE = 0.2


class PublishOutcomes(Protocol):
    """What the publisher tells the owner of the jobs (the job table) about the statuses it sent."""

    def sent(self, status: JobStatus) -> None:
        """The broker acknowledged `status`."""

    def unpublishable(self, status: JobStatus, reason: str) -> None:
        """`status` can never be sent (it does not serialize); `reason` says why."""


class StatusPath:
    """Statuses in (`post`, `post_progress`, `refuse`), the broker out."""

    def __init__(
        self, session: BrokerSession, topics: Topics, *, worker_id: str, policy: StatusPolicy, metrics: WorkerMetrics
    ) -> None:
        self.session = session
        self.topics = topics
        self.worker_id = worker_id
        self.retention = policy.retention
        self.metrics = metrics
        self.outbox = StatusOutbox(interval=policy.interval)
        # Told of every status posted (never a live refusal); must not block: notifications.
        self.on_post: Callable[[JobStatus], None] = lambda status: None
        self._answers_send, self._answers_receive = trio.open_memory_channel[tuple[str, str]](MAX_PENDING_ANSWERS)
        # Waited on before each publish: after a reconnection or a freeze, the claims are heard
        # again first, so that a job taken over meanwhile is fenced before anything of it goes out.
        self.gate: Callable[[], Awaitable[None]] | None = None
        # Jobs fenced: whatever of them is still pending is dropped, not published.
        self._fenced: set[str] = set()

    def drop(self, task_id: str) -> None:
        """The job was taken over by another worker: publish nothing more of it."""
        self._fenced.add(task_id)
        self.outbox.drop(task_id)

    # Statuses of jobs.

    def post(self, status: JobStatus) -> None:
        """Send `status` (a change of state, or a terminal status); never blocks."""
        self.outbox.post(status)
        self.on_post(status)

    def post_progress(self, task_id: str, build: Callable[[], JobStatus]) -> None:
        """A `running` update, built by `build` only when it is about to be published."""
        self.outbox.post_progress(task_id, build)

    def refuse(self, task_id: str, reason: str) -> None:
        """Answer a message that never became a job, live only; a flood's excess is logged, not sent."""
        try:
            self._answers_send.send_nowait((task_id, reason))
        except trio.WouldBlock:
            log.warning("task %s: too many refusals waiting to be sent; this one is not answered", task_id)

    async def send_refusal(self, task_id: str, reason: str) -> None:
        """Publish a live refusal now, within `ANSWER_TIMEOUT`; a failure is logged.

        Cancellation: the refusal may or may not have reached the broker.
        """
        status = early_status(task_id, State.FAILED, reason, worker_id=self.worker_id, live_only=True)
        try:
            with trio.fail_after(ANSWER_TIMEOUT):
                await self.session.publish(self.topics.status(task_id), status.to_json(), qos=1)
        except (LinkError, trio.TooSlowError) as exc:
            log.warning("task %s: could not send its refusal: %s", task_id, exc)

    # Waiting for the broker.

    def holds(self, task_id: str) -> bool:
        """Whether a status of `task_id` is waiting or being published."""
        return self.outbox.holds(task_id)

    async def wait_sent(self, task_id: str) -> None:
        """Wait until every status posted for `task_id` so far is published.

        Cancellation: nothing is lost; the statuses stay queued.
        """
        await self.outbox.wait_sent(task_id)

    async def wait_idle(self) -> None:
        """Wait until every posted status is published.

        Cancellation: nothing is lost; the statuses stay queued.
        """
        await self.outbox.wait_idle()

    @property
    def pending_count(self) -> int:
        """Statuses not yet acknowledged by the broker."""
        return self.outbox.pending_count

    # The tasks.

    async def serve_publisher(self, outcomes: PublishOutcomes) -> None:
        """Publish statuses for ever: QoS 1, retained, in the order jobs made them; tell `outcomes` how each went.

        A status that cannot be sent for any reason but the link is given to
        `outcomes.unpublishable`, and the worker goes on.

        Cancellation: the status being published is left in the outbox, unsent.
        """
        while True:
            await self._publish(await self.outbox.take(), outcomes)

    async def serve_answers(self) -> None:
        """Send the live answers to refused messages, one at a time, each bounded.

        Cancellation: the answers not yet sent are dropped (they are live only).
        """
        async with self._answers_receive:
            async for task_id, reason in self._answers_receive:
                await self.send_refusal(task_id, reason)

    async def _publish(self, status: JobStatus, outcomes: PublishOutcomes) -> None:
        if self.gate is not None:
            await self.gate()
        if status.task_id in self._fenced:
            self.outbox.sent(status)
            return
        expiry = self.retention if status.state.terminal and self.retention else None
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
            # Its replacement first, so that the outbox is never idle in between.
            outcomes.unpublishable(status, f"{UNPUBLISHABLE}: {exc}"[:1000])
            self.outbox.sent(status)
        else:
            self.metrics.status_publish_latency.observe(trio.current_time() - sent_at)
            self.outbox.sent(status)
            outcomes.sent(status)
