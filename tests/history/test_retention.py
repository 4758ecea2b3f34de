"""`history.keep`: old jobs leave the store in the background, in batches, with their records and hosts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
