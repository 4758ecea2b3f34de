"""Serve /healthz, /readyz and /metrics over HTTP, for Kubernetes probes and Prometheus.

One request per connection (probes and scrapers open a new one each time), parsed by h11,
each bounded in time, all served by Trio tasks: a slow client cannot hold up the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import h11
import trio

from ansible_worker.ops.metrics import Histogram, Snapshot

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

REQUEST_SECONDS = 10.0
_MAX_REQUEST_BYTES = 16384
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class HealthEndpoint:
    """The routes; `ready` says why the worker is not ready (None when it is)."""

    def __init__(self, *, ready: Callable[[], str | None], collector: Collector) -> None:
        from prometheus_client import CollectorRegistry

        self._ready = ready
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(collector)

    def respond(self, method: str, target: str) -> tuple[int, str, bytes]:
        """Status code, content type and body for one request."""
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        if path == "/healthz":
            # Answering at all shows that the Trio loop is responsive.
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            reason = self._ready()
            if reason is None:
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", f"not ready: {reason}\n".encode()
        if path == "/metrics":
            from prometheus_client import generate_latest

            return 200, PROMETHEUS_TEXT, generate_latest(self._registry)
        return 404, "text/plain", b"not found: try /healthz, /readyz or /metrics\n"

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on `host:port` until cancelled; reports the bound port (useful with port 0).

        Errors: `OSError` when the address cannot be bound.

        Cancellation: the listeners are closed and every request being served is cancelled
        with them; nothing is left open, and serving again is safe.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        log.info("health and metrics endpoint on http://%s:%d/ (/healthz, /readyz, /metrics)", host, bound)
        async with trio.open_nursery() as nursery:
            task_status.started(bound)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST_BYTES)
        async with stream:
            with trio.move_on_after(REQUEST_SECONDS):
                try:
                    request = await _read_request(connection, stream)
                    if request is None:
                        return
                    status, content_type, body = self.respond(request.method.decode(), request.target.decode())
                    headers = [
                        ("content-type", content_type),
                        ("content-length", str(len(body))),
                        ("connection", "close"),
                    ]
                    await stream.send_all(connection.send(h11.Response(status_code=status, headers=headers)))
                    if request.method != b"HEAD":
                        await stream.send_all(connection.send(h11.Data(data=body)))
                    await stream.send_all(connection.send(h11.EndOfMessage()))
                except (h11.ProtocolError, trio.BrokenResourceError, UnicodeDecodeError) as exc:
                    log.debug("health endpoint: dropped a request: %s", exc)


async def _read_request(connection: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await stream.receive_some(4096))
            continue
        if isinstance(event, h11.Request):
            return event
        return None  # the client went away


def worker_collector(snapshot: Callable[[], Snapshot]) -> Collector:
    """A Prometheus collector that reads the worker's numbers at each scrape."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _WorkerCollector:
        def collect(self) -> Any:
            now = snapshot()
            counts = now.counts
            jobs = CounterMetricFamily(
                "ansible_worker_jobs", "Jobs that ended, by their final state.", labels=["state"]
            )
            for state in ("success", "failed", "cancelled", "timeout"):
                jobs.add_metric([state], counts.jobs_by_state.get(state, 0))
            yield jobs
            yield _histogram(
                "ansible_worker_job_duration_seconds", "How long jobs ran, start to end.", counts.job_duration
            )
            yield _histogram(
                "ansible_worker_status_publish_latency_seconds",
                "From sending a status to the broker's acknowledgement.",
                counts.status_publish_latency,
            )
            for name, text, value in _gauges(now):
                yield GaugeMetricFamily(name, text, value=value)
            for name, text, value in _counters(now):
                yield CounterMetricFamily(name, text, value=value)

    return _WorkerCollector()


def _gauges(now: Snapshot) -> tuple[tuple[str, str, float], ...]:
    """The worker's numbers that go up and down: name, help text and value."""
    counts = now.counts
    return (
        ("ansible_worker_queued_jobs", "Jobs waiting for a slot.", now.queued),
        ("ansible_worker_running_jobs", "Jobs running now.", now.running),
        ("ansible_worker_capacity", "Jobs this worker runs at once (worker.concurrency).", now.capacity),
        (
            "ansible_worker_broker_connected",
            "1 while connected and subscribed to the broker.",
            now.connected,
        ),
        ("ansible_worker_draining", "1 while the worker shuts down.", now.draining),
        ("ansible_worker_warm_pool_size", "Warm Ansible parents ready for jobs.", counts.warm_pool_size),
    )


def _counters(now: Snapshot) -> tuple[tuple[str, str, float], ...]:
    """The worker's numbers that only go up: name, help text and value."""
    counts = now.counts
    return (
        ("ansible_worker_broker_reconnects", "Connections to the broker after the first.", now.reconnects),
        ("ansible_worker_events_processed", "Ansible events read from jobs.", counts.events_processed),
        ("ansible_worker_events_dropped", "Live events not published (rate limit).", counts.events_dropped),
        (
            "ansible_worker_messages_refused",
            "Task messages refused before they became jobs.",
            counts.messages_refused,
        ),
        ("ansible_worker_warm_starts", "Jobs started as forks of a warm Ansible parent.", counts.warm_starts),
        ("ansible_worker_cold_starts", "Jobs started as a fresh ansible-playbook.", counts.cold_starts),
        ("ansible_worker_notifications_sent", "Notifications a target accepted.", counts.notifications_sent),
        (
            "ansible_worker_notifications_failed",
            "Notification attempts that failed (each retry counts), and notifications dropped.",
            counts.notifications_failed,
        ),
        (
            "ansible_worker_warm_parents_started",
            "Warm Ansible parents started.",
            counts.warm_parents_started,
        ),
        (
            "ansible_worker_warm_parents_lost",
            "Warm Ansible parents that exited unexpectedly.",
            counts.warm_parents_lost,
        ),
    )


def _histogram(name: str, text: str, histogram: Histogram) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    buckets = [(_bound(bound), float(count)) for bound, count in histogram.cumulative()]
    return HistogramMetricFamily(name, text, buckets=buckets, sum_value=histogram.total)


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)
