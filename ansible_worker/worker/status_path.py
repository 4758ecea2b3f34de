"""The one path of every status to the broker: outbox, journal, publisher, and live refusals.

Every status of every job (accepted, refused, handed back, recovered from the journal) is
posted here, and one task publishes them in order. This is also the only writer of the
journal, so what the journal says and what the broker was sent cannot drift apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ansible_worker.mqtt.link import LinkError, PublishRefused
from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.protocol.models import JobStatus, State
from ansible_worker.protocol.statuses import early_status
from ansible_worker.protocol.topics import Topics
from ansible_worker.worker.outbox import StatusOutbox

if TYPE_CHECKING:
    # sqlite3 is loaded only by workers that keep a journal.
    from ansible_worker.worker.journal import Journal

log = logging.getLogger(__name__)

UNPUBLISHABLE = "internal error: its status could not be published"
# Refusals waiting for their live answer; past this, a flood's answers are skipped (and logged).
MAX_PENDING_ANSWERS = 64
# How long a refusal's live answer may wait for the broker before it is given up (and logged).
ANSWER_TIMEOUT = 5.0
PUBLISH_RETRY_PAUSE = 0.2


class StatusPath:
    """Statuses in (`post`, `post_progress`, `refuse`), the broker and the journal out.

    `on_terminal_sent(task_id)` runs once a job's terminal status is acknowledged by the
    broker; `fail_job(task_id, reason)` ends a running job whose status cannot be
    serialized, and returns False when there is none to end.
    """

    def __init__(
        self,
        session: BrokerSession,
        topics: Topics,
        *,
        worker_id: str,
        interval: float,
        retention: int | None,
        journal: Journal | None,
        metrics: WorkerMetrics,
        on_terminal_sent: Callable[[str], None] = lambda task_id: None,
    ) -> None:
        self.session = session
        self.topics = topics
        self.worker_id = worker_id
        self.retention = retention
        self.journal = journal
        self.metrics = metrics
        self.on_terminal_sent = on_terminal_sent
        self.fail_job: Callable[[str, str], bool] = lambda task_id, reason: False
        # Told of every status posted (never a live refusal); must not block: notifications.
        self.on_post: Callable[[JobStatus], None] = lambda status: None
        self.outbox = StatusOutbox(interval=interval)
        self._answers_send, self._answers_receive = trio.open_memory_channel[tuple[str, str]](MAX_PENDING_ANSWERS)

    # Statuses of jobs.

    def post(self, status: JobStatus) -> None:
        """Send `status` (a change of state, or a terminal status); journaled first, never blocks."""
        if self.journal is not None:
            # As it is posted, not as it is published: with the broker away, a finished job
            # must not be remembered as running.
            self.journal.status(status)
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

    # The journal: only this component writes it.

    def accepted(self, task_id: str, payload: bytes, status: JobStatus, *, claim_id: str | None = None) -> None:
        """Journal a job before it is claimed or queued. Errors: `JournalError` (refuse the job)."""
        if self.journal is not None:
            self.journal.accepted(task_id, payload, status, claim_id=claim_id)

    def claimed(self, task_id: str, claim_ids: str) -> None:
        """Journal the claim ids (space-separated) that may hold the job after a crash."""
        if self.journal is not None:
            self.journal.claimed(task_id, claim_ids)

    def started(self, task_id: str, run_dir: Path) -> None:
        """Journal the run directory of a job that starts: its processes carry its name."""
        if self.journal is not None:
            self.journal.started(task_id, run_dir)

    def settled(self, task_id: str) -> None:
        """Forget a job: its terminal status is out, or it was handed to another worker."""
        if self.journal is not None:
            self.journal.settled(task_id)

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

    async def serve_publisher(self) -> None:
        """Publish statuses for ever: QoS 1, retained, in the order jobs made them.

        A status that cannot be sent for any reason but the link fails its own job, with
        the reason, and the worker goes on.

        Cancellation: the status being published is left in the outbox, unsent.
        """
        while True:
            status = await self.outbox.take()
            if self.journal is not None and status.state == State.RUNNING:
                self.journal.status(status)
            await self._publish(status)

    async def serve_answers(self) -> None:
        """Send the live answers to refused messages, one at a time, each bounded.

        Cancellation: the answers not yet sent are dropped (they are live only).
        """
        async with self._answers_receive:
            async for task_id, reason in self._answers_receive:
                await self.send_refusal(task_id, reason)

    async def _publish(self, status: JobStatus) -> None:
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
            self._fail_unpublishable(status, f"{UNPUBLISHABLE}: {exc}")
            self.outbox.sent(status)
        else:
            self.metrics.status_publish_latency.observe(trio.current_time() - sent_at)
            self.outbox.sent(status)
            if status.state.terminal:
                self.settled(status.task_id)
                self.on_terminal_sent(status.task_id)

    def _fail_unpublishable(self, status: JobStatus, reason: str) -> None:
        """End the job whose status could not be sent; its terminal status carries the reason.

        The replacement is tried once: if even it cannot be sent, the status is lost (logged)
        rather than retried for ever.
        """
        reason = reason[:1000]
        if status.error_message is not None and status.error_message.startswith(UNPUBLISHABLE):
            log.error("task %s: its replacement status could not be published either; it is lost", status.task_id)
            return
        if not status.state.terminal and self.fail_job(status.task_id, reason):
            return
        # Nothing left to end: send the little that is certain to serialize.
        self.post(
            early_status(status.task_id, State.FAILED, reason, worker_id=self.worker_id, created_at=status.created_at)
        )
