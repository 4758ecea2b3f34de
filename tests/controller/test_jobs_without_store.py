"""`jobs` without a store, against a broker that retains many statuses: bounded in memory, and in time after its read bound.

A broker with no cap on what it queues for a client sends every retained status at once.
"""

from __future__ import annotations

import json
import logging
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from ansible_worker.controller.job_listing import newest_jobs
from ansible_worker.mqtt.link import LinkOptions, open_mqtt_link
from ansible_worker.protocol.topics import Topics
from testing.broker import Broker
from tests.conftest import client_for

# publish_nowait's queue takes 10,000; a QoS 1 publish after each share waits for the broker.
SHARE = 5000
BEGAN = datetime(2026, 1, 1, tzinfo=UTC)


async def retain_statuses(broker: Broker, group: str, count: int, padding: int) -> None:
    """Retain `count` finished jobs' statuses, each with `padding` bytes of output."""
    topics = Topics("ansible", group)
    options = LinkOptions("127.0.0.1", broker.port, f"seed-{uuid.uuid4().hex[:8]}")
    with trio.fail_after(60):
        async with open_mqtt_link(options) as link:
            for first in range(0, count, SHARE):
                for number in range(first, min(count, first + SHARE)):
                    task_id = f"job-{number:06d}"
                    status = {
                        "task_id": task_id,
                        "state": "success",
                        "created_at": (BEGAN + timedelta(seconds=number)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "output": {"text": "x" * padding},
                    }
                    link.publish_nowait(topics.status(task_id), json.dumps(status).encode(), retain=True)
                # Retained QoS 0 messages go in order: once this one is acknowledged, they are held.
                await link.publish(topics.status("job-seeded"), b"", qos=1, retain=True)


@pytest.fixture
def unlimited_broker(tmp_path: Path) -> Iterator[Broker]:
    instance = Broker(tmp_path, "max_queued_messages 0\nmax_queued_bytes 0\n")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


async def test_a_listing_that_cannot_keep_up_holds_the_broker_back_instead_of_filling_memory(
    unlimited_broker: Broker,
) -> None:
    """10,000 statuses of 4 KB each: whatever the listing has not looked at yet waits at the broker."""
    group = "g" + uuid.uuid4().hex[:10]
    await retain_statuses(unlimited_broker, group, 10_000, 4000)
    tracemalloc.start()
    try:
        async with client_for(unlimited_broker, group) as client:
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            listing = await newest_jobs(client, limit=10)
            peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # Every status at once would be 40 MB and more.
    assert peak < 24_000_000, f"{peak} bytes at most while listing"
    assert listing.read == 10_000
    assert listing.partial is not None
    assert [status["task_id"] for status in listing.statuses] == [f"job-{n:06d}" for n in range(9_999, 9_989, -1)]


async def test_a_listing_stopped_by_its_bound_returns_at_once_while_the_broker_still_sends(
    unlimited_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker has many statuses still to send when the listing's time is up: it neither waits for
    them to pass (its subscriptions' answers come behind them) nor logs the answers that come late."""
    group = "g" + uuid.uuid4().hex[:10]
    await retain_statuses(unlimited_broker, group, 30_000, 500)
    with caplog.at_level(logging.WARNING):
        async with client_for(unlimited_broker, group) as client:
            started = time.monotonic()
            listing = await newest_jobs(client, limit=1000, within=0.5)
            listed = time.monotonic() - started
        closed = time.monotonic() - started
    assert listing.partial == "stopped reading after 0.5s"
    assert 0 < listing.read < 30_000
    assert listed < 1.5, f"listing returned {listed:.1f}s after it began"
    assert closed < 3.0, f"the client closed {closed:.1f}s after the listing began"
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
