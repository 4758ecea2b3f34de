"""What a survivor does with each unsettled job of a lost worker, and the request copies it reads them from. Pure.

The group's unsettled jobs are those whose request copy is retained on
`…/tasks/<task_id>/request`. For each one held by a lost worker (its claim holds the job, or
its release handed it back and nobody took it), `decide` says what the survivor that wins
the takeover does:

- `AlreadyEnded`: the job's last status is terminal (the worker died after it, before it
  cleared the copy); nothing is published but the copy's clearing.
- `EndAsLost`: the claim says the job may have started (`started_at`), or its last status
  says `running`: a half-run playbook is not safe to repeat, so it ends `failed`. A job
  whose `queued` status was published but that cannot be run here (no copy matches its
  claim, as with a claim of a worker from before request copies, or the copy is refused)
  ends `failed` too, with `why`: a controller already saw it accepted, so it must not stay
  `queued`.
- `RunHere`: it never started: the copy is checked again and the job runs on the survivor.
- `Free`: no copy matches the claim and no status was published (the worker was lost
  between its claim and its copy): nothing ran; the takeover is released, so that a
  controller's retry runs the job once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ansible_worker.protocol.claims import Claim, request_digest
from ansible_worker.protocol.models import State
from ansible_worker.protocol.timestamps import format_utc

if TYPE_CHECKING:
    from ansible_worker.protocol.signing import TrustedKeys, Verified

__all__ = [
    "AlreadyEnded",
    "EndAsLost",
    "Free",
    "RequestCopies",
    "RunHere",
    "Verdict",
    "check_taken_over",
    "decide",
    "lost_reason",
]

# Copies kept per task_id: the genuine one and a few others (a stale one, a forgery) at most.
MAX_COPIES_PER_TASK = 4
# Request copies remembered at once: the group's unsettled jobs, far below this; and their
# bytes, so that a flood of large copies (anyone who may write the topic) costs no more.
MAX_TASKS = 100_000
MAX_TOTAL_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AlreadyEnded:
    """The job has its terminal status: only its copy is left to clear."""


@dataclass(frozen=True, slots=True)
class EndAsLost:
    """The job may have started on the lost worker, or cannot be run here (`why`): it ends `failed`."""

    why: str | None = None


@dataclass(frozen=True, slots=True)
class RunHere:
    """The job never started: run `payload` (the copy) here; `accepted_at` is when the group first took it."""

    payload: bytes
    accepted_at: datetime | None


@dataclass(frozen=True, slots=True)
class Free:
    """Nothing ran and no copy can be trusted: release the task_id for a controller's retry."""

    reason: str


Verdict = AlreadyEnded | EndAsLost | RunHere | Free


def decide(claim: Claim, *, copy: bytes | None, last_state: State | None) -> Verdict:
    """What to do with a lost worker's job, from the claim (or release) it left, its copy and its last status."""
    if last_state is not None and last_state.terminal:
        return AlreadyEnded()
    if claim.started_at is not None or last_state is State.RUNNING:
        return EndAsLost()
    if copy is None:
        if last_state is not None:
            return EndAsLost("no request copy matches its claim")
        return Free("no request copy matches its claim")
    return RunHere(copy, claim.accepted_at)


def lost_reason(worker_id: str, last_heard_at: datetime | None, why: str | None = None) -> str:
    """The `error_message` of a job whose worker was lost: one that may have started, or one not run here (`why`)."""
    when = (
        format_utc(last_heard_at, timespec="seconds")
        if last_heard_at is not None
        else "never, since this worker connected"
    )
    reason = f"worker lost: {worker_id} (last heard {when})"
    return reason if why is None else f"{reason}; it had not started, and was not run here: {why}"


def copy_digest(claim: Claim) -> str | None:
    """The digest of the request copy a claim (or a hand-back release) names."""
    return claim.request_sha256


class RequestCopies:
    """The request copies heard on `…/tasks/+/request`, a few per task_id, until one is cleared.

    Kept by digest, so that a copy published over the genuine one (by anyone who may write
    the topic) hides nothing: `matching` picks the one a claim names.
    """

    def __init__(self, *, max_tasks: int = MAX_TASKS, max_bytes: int = MAX_TOTAL_BYTES) -> None:
        self._copies: dict[str, dict[str, bytes]] = {}
        self._max_tasks = max_tasks
        self._max_bytes = max_bytes
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._copies)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._copies

    def hear(self, task_id: str, payload: bytes, *, max_bytes: int) -> None:
        """A message on a request topic; an empty one (the copy cleared) forgets every copy of the task."""
        if not payload:
            self.forget(task_id)
            return
        if len(payload) > max_bytes:
            return
        while self._copies and (len(self._copies) >= self._max_tasks or self._bytes + len(payload) > self._max_bytes):
            # The one heard of longest ago goes first.
            self.forget(next(iter(self._copies)))
        copies = self._copies.setdefault(task_id, {})
        if len(copies) >= MAX_COPIES_PER_TASK:
            self._bytes -= len(copies.pop(next(iter(copies))))
        digest = request_digest(payload)
        self._bytes += len(payload) - len(copies.get(digest, b""))
        copies[digest] = payload

    def task_ids(self) -> list[str]:
        """The task_ids that have a copy now: the group's unsettled jobs."""
        return list(self._copies)

    def matching(self, task_id: str, digest: str | None) -> bytes | None:
        """The copy of `task_id` whose SHA-256 is `digest`, if one was heard."""
        if digest is None:
            return None
        return self._copies.get(task_id, {}).get(digest)

    def forget(self, task_id: str) -> None:
        """Drop what is known of `task_id`'s copies."""
        self._bytes -= sum(len(copy) for copy in self._copies.pop(task_id, {}).values())


def check_taken_over(
    document: Mapping[str, Any],
    *,
    trusted: TrustedKeys,
    topic: str,
    accepted_at: datetime | None,
    max_age: float,
    max_skew: float,
) -> Verified:
    """Check a signed job taken over from a lost worker as the first worker checked it.

    The age counts from `accepted_at`, the moment a worker-signed claim says the group first
    accepted the job: the request must have been fresh then, not now. Without it (a claim
    that does not say), the job is refused.

    Errors: `SignatureRefused`.
    """
    from ansible_worker.protocol.signing import SignatureRefused, check_age, issued_at

    trusted.check_key(document)
    if accepted_at is None:
        raise SignatureRefused("its claim does not say when the group accepted it")
    check_age(issued_at(document), now=accepted_at, max_age=max_age, max_skew=max_skew)
    return trusted.verify(topic, document)
