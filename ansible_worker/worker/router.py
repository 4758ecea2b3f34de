"""Decide what this worker does with each message from the broker. Pure: no I/O, no clock.

`route` maps a message and a view of the worker's state to one action; the worker only
carries actions out. Everything that can be judged without the broker is judged here, before
anything is journaled, claimed or queued: a message that cannot run is refused before it
costs anything, and one that is not for this worker is dropped with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ansible_worker.mqtt.options import InboundMessage
from ansible_worker.protocol.claims import request_digest
from ansible_worker.protocol.models import CancelRequest, TaskRequest
from ansible_worker.protocol.topics import Topics
from ansible_worker.templates.loading import NO_TEMPLATES, Templates
from ansible_worker.templates.ticks import TickCheck
from ansible_worker.worker.intake import Accepted, Dropped, Rejected, Verify, read_cancel_message, read_task_message

# A cancel request is a reason and a name, signed at most: anything larger is not one.
MAX_CANCEL_BYTES = 16 * 1024


class WorkerView(Protocol):
    """What the router may ask of the worker's state; every answer is about this moment."""

    def holder_of(self, task_id: str) -> str | None:
        """The worker (maybe this one) whose claim holds `task_id` in the group, if any."""

    def in_queue(self, task_id: str) -> bool:
        """Whether the job is queued or running here."""

    def claiming(self, task_id: str) -> bool:
        """Whether this worker is claiming the job now."""

    def handing_back(self, task_id: str) -> bool:
        """Whether this worker is handing the job back to the group now."""

    @property
    def queue_full(self) -> bool:
        """Whether a new job would find no room in the queue (claims in flight count)."""

    @property
    def shutting_down(self) -> bool:
        """Whether a shutdown was asked for."""

    @property
    def taking_claims(self) -> bool:
        """Whether new claims may start: false once the claims' nursery closes, or when it is full."""


@dataclass(frozen=True, slots=True)
class Claim:
    """Claim the job for this worker, then queue it; `signer` names who signed it, if checked."""

    request: TaskRequest
    payload: bytes
    signer: str | None = None


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer with a live `failed` status carrying `reason` (unless the group holds the job)."""

    task_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ignore:
    """Do nothing but log `reason` at `level` (`warning` or `debug`); `task_id` when one is known."""

    reason: str
    task_id: str | None = None
    level: str = "warning"
    # Counted as a refused message in the metrics.
    refused: bool = False


@dataclass(frozen=True, slots=True)
class Cancel:
    """End the job with `request`: queued or running here, in its claim, or in its hand-back."""

    task_id: str
    request: CancelRequest
    where: str  # "queue", "claim" or "hand-back"


@dataclass(frozen=True, slots=True)
class HearClaim:
    """A message of the group's claims: the claim book reads it."""

    task_id: str
    message: InboundMessage


@dataclass(frozen=True, slots=True)
class HearContent:
    """Shipped content, or the marker that ends a fetch of it: the content fetcher waits for these."""

    message: InboundMessage


@dataclass(frozen=True, slots=True)
class HearLocks:
    """A message of the group's locks topic: the lock book reads it."""

    message: InboundMessage


@dataclass(frozen=True, slots=True)
class HearOwnPresence:
    """This worker's own presence, heard back."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class HearRequestCopy:
    """The retained request of an unsettled job of the group (empty: cleared), for a takeover."""

    task_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class HearPeer:
    """Another worker's presence; `expiry`, what is left of its message expiry (a will's age is told by it)."""

    worker_id: str
    payload: bytes
    expiry: int | None = None


Action = (
    Claim
    | Refuse
    | Ignore
    | Cancel
    | HearClaim
    | HearContent
    | HearPeer
    | HearRequestCopy
    | HearOwnPresence
    | HearLocks
)


@dataclass(frozen=True, slots=True)
class Router:
    """The rules of one worker: its topics, its own id, its limits and its checks."""

    topics: Topics
    worker_id: str
    max_message_bytes: int
    queue_size: int
    # Why a request cannot run here (policy, paths), or None; no broker involved.
    admission_error: Callable[[TaskRequest], str | None]
    # Checks for a job, given its payload; for a cancel request, given its task_id.
    verify_task: Callable[[bytes], Verify] | None = None
    verify_cancel: Callable[[str], Verify] | None = None
    # The templates a request may name, and whether it must name one.
    templates: Templates = NO_TEMPLATES
    templates_only: bool = False
    # This worker's schedule entries: only a tick fired here, or a tick's job another worker
    # hands back, may use a task_id of theirs; with signed jobs, only the tick itself, unsigned.
    ticks: TickCheck = field(default_factory=TickCheck)
    # The digest of the request a live release of a task_id hands back, if any.
    released: Callable[[str], str | None] = lambda task_id: None

    def route(self, message: InboundMessage, state: WorkerView) -> Action:
        """The action for `message`; never raises on what the network sends."""
        topics = self.topics
        if message.topic.startswith((topics.content(""), topics.clients_prefix)):
            return HearContent(message)
        if topics.task_id_of_status(message.topic) is not None:
            # A status read once, by a short subscription (a worker takes a lost worker's job over).
            return HearContent(message)
        if message.topic == topics.tasks:
            return self.route_task(message.payload, state)
        if message.topic == topics.locks:
            return HearLocks(message)
        if message.topic == topics.templates:
            return Ignore("the group's template catalogue (read by the scheduler)", level="debug")
        task_id = topics.task_id_of_cancel(message.topic)
        if task_id is not None:
            return self.route_cancel(task_id, message.payload, state)
        task_id = topics.task_id_of_claim(message.topic)
        if task_id is not None:
            return HearClaim(task_id, message)
        task_id = topics.task_id_of_request(message.topic)
        if task_id is not None:
            return HearRequestCopy(task_id, message.payload)
        if message.topic.startswith(topics.worker("")):
            worker_id = message.topic.rsplit("/", 1)[-1]
            if worker_id == self.worker_id:
                # Heard back: how a worker learns that the broker sent it everything before.
                return HearOwnPresence(message.payload)
            return HearPeer(worker_id, message.payload, message.expiry)
        return Ignore(f"ignoring a message on unexpected topic {message.topic}")

    def route_task(self, payload: bytes, state: WorkerView, *, scheduled: bool = False) -> Action:
        """A message of the tasks topic: claim, refuse, or ignore it, in that order of checks.

        `scheduled`: the launch of a tick that this worker's scheduler fired, not a message: it
        never came from the network, so no signature is asked of it.
        """
        verify = self.verify_task(payload) if self.verify_task is not None and not scheduled else None
        read = read_task_message(
            payload,
            max_bytes=self.max_message_bytes,
            verify=verify,
            templates=self.templates,
            templates_only=self.templates_only,
            ticks=self.ticks,
        )
        match read:
            case Dropped(reason):
                return Ignore(
                    f"dropped a task message ({len(payload)} bytes) with no usable task_id: {reason}", refused=True
                )
            case Rejected(task_id, reason):
                return Refuse(task_id, reason)
            case Accepted(request, signed, signed_payload):
                # A signed job is kept, journaled and handed back as its signature covers it.
                payload = signed_payload or payload
        task_id = request.task_id
        if not scheduled and self.ticks.is_tick_id(task_id) and not self._handed_back(task_id, payload):
            # Otherwise anyone who may publish a job could run a tick early, with answers of their own.
            return Refuse(task_id, "this task_id is a schedule's tick: only the workers' schedules launch it")
        if state.in_queue(task_id):
            return Ignore("already queued or running on this worker; ignoring the duplicate", task_id)
        if (refusal := self.admission_error(request)) is not None:
            return Refuse(task_id, refusal)
        if (holder := state.holder_of(task_id)) is not None:
            what = f"a replay signed by {signed.signer}" if signed is not None else "a duplicate"
            return Ignore(
                f"refused {what}: the group already took this task_id (worker {holder});"
                " the original job's status is left alone",
                task_id,
            )
        if state.claiming(task_id):
            return Ignore("this worker is claiming it already; ignoring the copy", task_id)
        if state.queue_full and not state.shutting_down:
            return Refuse(task_id, f"queue full (max {self.queue_size})")
        if state.handing_back(task_id):
            return Ignore("this worker is handing it back; ignoring the copy", task_id)
        if not state.taking_claims:
            return Refuse(task_id, "the worker is shutting down")
        return Claim(request, payload, signed.signer if signed is not None else None)

    def _handed_back(self, task_id: str, payload: bytes) -> bool:
        return self.released(task_id) == request_digest(payload)

    def route_cancel(self, task_id: str, payload: bytes, state: WorkerView) -> Action:
        """A cancel request for `task_id`: where the job is decides who ends it."""
        verify = self.verify_cancel(task_id) if self.verify_cancel is not None else None
        request = read_cancel_message(payload, max_bytes=MAX_CANCEL_BYTES, verify=verify)
        if not isinstance(request, CancelRequest):
            return Ignore(f"ignoring a cancel request: {request.reason}", task_id)
        if state.in_queue(task_id):
            return Cancel(task_id, request, "queue")
        if state.claiming(task_id):
            # Its claim is on the way: the cancel applies as soon as the job is queued.
            return Cancel(task_id, request, "claim")
        if state.handing_back(task_id):
            # Still this worker's, or about to be again: the hand-back ends it here.
            return Cancel(task_id, request, "hand-back")
        return Ignore("not held here; ignoring its cancel request", task_id, level="debug")
