"""What the worker's parts take from the settings: small frozen values, all built once by `WorkerPolicies.of`.

A part is given the one value it needs, never the whole settings: what it may depend on is
then plain at its constructor, and a test builds it without a config file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # For their types only: a part given a policy loads neither the settings model nor cryptography.
    from ansible_worker.ops.config import Settings
    from ansible_worker.protocol.signing import Signer, TrustedKeys

# Longest lifetime a claim can be given (the MQTT message expiry's limit), for "for ever".
LONGEST_CLAIM = 2**32 - 1


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """How many jobs one worker holds: `size` waiting for a slot, `concurrency` running at once."""

    size: int
    concurrency: int


@dataclass(frozen=True, slots=True)
class DrainPolicy:
    """How a worker stops: running jobs get `timeout` to finish; a job cancelled then gets `kill_grace` to end."""

    timeout: float
    kill_grace: float


@dataclass(frozen=True, slots=True)
class StatusPolicy:
    """How statuses go out: `interval` between two `running` updates of a job, terminal ones kept `retention`.

    `retention` is the message expiry of terminal statuses in seconds (None: kept for ever).
    """

    interval: float
    retention: int | None


@dataclass(frozen=True, slots=True)
class ClaimPolicy:
    """How long claims hold, and who signs them.

    `lifetime` is how long a claim holds a task_id (None: until the broker forgets it);
    `release_lifetime` how long a release lets another worker take a handed-back job.
    With `signer`, claims and releases are signed, and only those that `trusted` verifies count.
    """

    lifetime: float | None
    release_lifetime: float
    signer: Signer | None = None
    trusted: TrustedKeys | None = None


@dataclass(frozen=True, slots=True)
class PresencePolicy:
    """What the presence announces as the worker's `capacity`, and how often it says it is alive."""

    capacity: int
    interval: float
    # Seconds of silence after which the group takes a worker's jobs over (`worker.lost_after`).
    lost_after: float = 150.0


@dataclass(frozen=True, slots=True)
class SignaturePolicy:
    """Which keys may sign jobs and cancel requests, and how old (or how far ahead of this clock) they may be."""

    trusted: TrustedKeys
    max_age: float
    max_skew: float


@dataclass(frozen=True, slots=True)
class RecordPolicy:
    """How large a finished job's record may be, and how long the broker keeps it (None: for ever)."""

    limit: int
    retention: int | None


@dataclass(frozen=True, slots=True)
class WorkerPolicies:
    """Every value the worker's parts take from the settings."""

    queue: QueuePolicy
    drain: DrainPolicy
    statuses: StatusPolicy
    claims: ClaimPolicy
    presence: PresencePolicy
    # None: jobs are not signed, or records are not published.
    signatures: SignaturePolicy | None
    records: RecordPolicy | None

    @classmethod
    def of(cls, settings: Settings) -> WorkerPolicies:
        """The policies the `worker` and `security` settings describe."""
        worker, security = settings.worker, settings.security
        retention = worker.status_retention or None
        trusted = security.trusted
        return cls(
            queue=QueuePolicy(size=worker.max_queue_size, concurrency=worker.concurrency),
            drain=DrainPolicy(timeout=worker.drain_timeout, kill_grace=worker.kill_grace),
            statuses=StatusPolicy(interval=worker.status_interval, retention=retention),
            claims=_claim_policy(settings, retention),
            presence=PresencePolicy(
                capacity=worker.concurrency, interval=worker.heartbeat_interval, lost_after=settings.lost_after
            ),
            signatures=(
                SignaturePolicy(trusted, max_age=security.max_task_age, max_skew=security.max_clock_skew)
                if trusted is not None
                else None
            ),
            records=RecordPolicy(worker.record_limit_bytes, retention) if worker.publish_records else None,
        )


def _claim_policy(settings: Settings, retention: int | None) -> ClaimPolicy:
    """Claims as this worker makes them, signed when its jobs are."""
    security = settings.security
    signing = security.claim_signing
    release_lifetime = security.max_task_age + security.max_clock_skew
    if signing is None:
        # A task_id is the group's for as long as its status is kept.
        return ClaimPolicy(lifetime=retention, release_lifetime=release_lifetime)
    # A signed job's claim also outlives every moment its signature could still be accepted.
    lifetime = max(retention or LONGEST_CLAIM, security.max_task_age + 2 * security.max_clock_skew)
    signer, trusted = signing
    return ClaimPolicy(lifetime=lifetime, release_lifetime=release_lifetime, signer=signer, trusted=trusted)
