"""Count what the worker does, for its metrics endpoint: jobs by final state, durations, events, latencies.

Plain counters that cost nothing to update; `ops.health` turns them into Prometheus
text only when an endpoint is configured and scraped.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

JOB_DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
PUBLISH_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class Histogram:
    """Observations counted into buckets by upper bound, as Prometheus histograms are."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Count `value` into the first bucket whose upper bound is at least `value`."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) for every bound, then +Inf."""
        running, result = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            result.append((bound, running))
        return result


@dataclass
class WorkerMetrics:
    """The worker's counters: jobs by final state, job durations, status publish latencies, events and refusals."""

    jobs_by_state: Counter[str] = field(default_factory=Counter)
    job_duration: Histogram = field(default_factory=lambda: Histogram(JOB_DURATION_BUCKETS))
    status_publish_latency: Histogram = field(default_factory=lambda: Histogram(PUBLISH_LATENCY_BUCKETS))
    events_processed: int = 0
    events_dropped: int = 0
    messages_refused: int = 0
    # Jobs started as forks of a warm Ansible parent, and those started cold.
    warm_starts: int = 0
    cold_starts: int = 0
    warm_parents_started: int = 0
    warm_parents_lost: int = 0
    warm_pool_size: int = 0
    # Notification attempts that reached their target, and those that failed (each retry counts).
    notifications_sent: int = 0
    notifications_failed: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The counters and the gauges of one moment, as a scrape sees them."""

    counts: WorkerMetrics
    queued: int
    running: int
    capacity: int
    connected: bool
    draining: bool
    reconnects: int
