"""What the worker's health endpoint shows: whether it should be sent jobs, and the metrics snapshot."""

from __future__ import annotations

import trio

from ansible_worker.mqtt.session import BrokerSession
from ansible_worker.ops.metrics import Snapshot, WorkerMetrics
from ansible_worker.worker.group_claims import GroupClaims
from ansible_worker.worker.jobs import JobTable
from ansible_worker.worker.phases import Phase

__all__ = ["HealthView"]


class HealthView:
    """Readiness and the metrics snapshot, read from the worker's parts when asked; `serve` answers HTTP."""

    def __init__(
        self,
        *,
        shutdown: trio.Event,
        session: BrokerSession,
        jobs: JobTable,
        claims: GroupClaims,
        metrics: WorkerMetrics,
        concurrency: int,
    ) -> None:
        self.shutdown, self.session, self.jobs, self.claims = shutdown, session, jobs, claims
        self.metrics, self.concurrency = metrics, concurrency

    def readiness(self) -> str | None:
        """Why this worker should not be sent jobs now, or None when it should."""
        if self.shutdown.is_set():
            return "draining"
        if not self.session.connected:
            return "not connected to the broker"
        return None

    def snapshot(self) -> Snapshot:
        """What the metrics endpoint shows now."""
        return Snapshot(
            counts=self.metrics,
            queued=self.jobs.count(Phase.QUEUED),
            running=self.jobs.running_count,
            capacity=self.concurrency,
            connected=self.session.connected,
            draining=self.shutdown.is_set(),
            reconnects=self.session.reconnects,
            claims=self.claims.book.live(now=trio.current_time()),
        )

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Answer `/healthz`, `/readyz` and `/metrics` until cancelled; reports started with the port."""
        # Loaded only when asked for: prometheus_client and h11 are of no use otherwise.
        from ansible_worker.ops.health import HealthEndpoint, worker_collector

        endpoint = HealthEndpoint(ready=self.readiness, collector=worker_collector(self.snapshot))
        await endpoint.serve(host, port, task_status=task_status)
