"""`history.keep`: old jobs leave the store in the background, in batches, with their records and hosts."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from ansible_worker.history.messages import PresenceRow
from ansible_worker.history.reader import open_history
from ansible_worker.history.store import JobQuery
from testing.broker import Broker
from tests.history.helpers import TOPICS, publish_status, publisher, record, running_archiver, status, wait_until


async def test_jobs_older_than_keep_are_removed_in_batches(broker: Broker, store_url: str) -> None:
    now = datetime.now(UTC)
    async with publisher(broker) as link:
        for number in range(10):
            old = status(f"old-{number}", began=now - timedelta(days=91))
            await publish_status(link, old)
            await link.publish(TOPICS.record(old["task_id"]), record(old, ("web3",)), qos=1, retain=True)
            await publish_status(link, status(f"new-{number}", began=now - timedelta(days=89)))
    keep = 90 * 86400
    async with running_archiver(broker, store_url, keep_seconds=keep, purge_every=0.2, purge_batch=3) as (history, _):

        async def only_new_left() -> bool:
            page = await history.jobs(JobQuery(limit=100))
            return sorted(job["task_id"] for job in page.statuses) == [f"new-{n}" for n in range(10)]

        await wait_until(only_new_left, within=30)
        assert await history.record("old-0") is None
        assert (await history.jobs(JobQuery(host="web3"))).statuses == []


async def test_workers_last_heard_before_keep_are_removed(broker: Broker, store_url: str) -> None:
    """Pods come and go with new names: the store keeps the presences heard within `keep`, not every name ever."""
    keep = 90 * 86400
    long_ago = time.time() - keep - 86400
    async with open_history(store_url, migrate=True) as history:
        gone = PresenceRow("pod-gone", json.dumps({"worker_id": "pod-gone", "state": "offline"}))
        # As the archiver wrote it when it last heard the worker, 91 days ago.
        await history.write([gone], now=long_ago)
    async with publisher(broker) as link:
        here = {"worker_id": "pod-here", "state": "online"}
        await link.publish(TOPICS.worker("pod-here"), json.dumps(here).encode(), qos=1, retain=True)
    async with running_archiver(broker, store_url, keep_seconds=keep, purge_every=0.2, purge_batch=3) as (history, _):

        async def only_the_live_worker() -> bool:
            return [worker["worker_id"] for worker in await history.workers()] == ["pod-here"]

        await wait_until(only_the_live_worker, within=30)
