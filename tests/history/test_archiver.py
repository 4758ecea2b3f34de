"""The archiver on a real broker and a real database: what it keeps, what it refuses, what survives restarts."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.history import archiver as archiver_module
from ansible_worker.history.reader import History, open_history
from ansible_worker.history.store import JobQuery
from testing.broker import Broker
from testing.postgres import Postgres
from tests.history.helpers import (
    TOPICS,
    publish_status,
    publisher,
    record,
    running_archiver,
    status,
    wait_until,
)


async def test_statuses_and_records_reach_the_store(broker: Broker, store_url: str) -> None:
    async with running_archiver(broker, store_url) as (history, _), publisher(broker) as link:
        await publish_status(link, status("job-1", "running"))
        final = status("job-1", "success")
        await publish_status(link, final)
        await link.publish(TOPICS.record("job-1"), record(final, ("web3", "db1")), qos=1, retain=True)

        async def recorded() -> bool:
            return await history.record("job-1") is not None

        await wait_until(recorded)
        stored = await history.status("job-1")
        assert stored is not None
        assert stored["state"] == "success"
        kept = await history.record("job-1")
        assert kept is not None
        assert kept["output"] == "PLAY [all]\n"
        on_web3 = await history.jobs(JobQuery(host="web3"))
        assert [job["task_id"] for job in on_web3.statuses] == ["job-1"]
        assert (await history.jobs(JobQuery(host="web9"))).statuses == []


async def test_a_late_status_never_undoes_the_end(broker: Broker, sqlite_url: str) -> None:
    began = datetime.now(UTC)
    async with running_archiver(broker, sqlite_url) as (history, archiver), publisher(broker) as link:
        await publish_status(link, status("job-2", "success", began=began))
        await wait_until(lambda: _has(history, "job-2"))
        # A running status delivered after the end (a replay, a second archiver's slower copy).
        await publish_status(link, status("job-2", "running", began=began))
        written = archiver.stats.written
        await wait_until(lambda: _true(archiver.stats.written > written))
        stored = await history.status("job-2")
        assert stored is not None
        assert stored["state"] == "success"
        assert await history.count() == 1


async def test_an_archiver_restart_loses_no_status(broker: Broker, store_url: str) -> None:
    async with publisher(broker) as link:
        async with running_archiver(broker, store_url) as (history, _):
            await publish_status(link, status("before", "success"))
            await wait_until(lambda: _has(history, "before"))
        # Published while no archiver runs: the retained statuses bring them on the next start.
        for number in range(50):
            await publish_status(link, status(f"away-{number}", "failed" if number % 10 == 0 else "success"))
        async with running_archiver(broker, store_url) as (history, _):
            await wait_until(lambda: _count_is(history, 51))
            failed = await history.jobs(JobQuery(states=frozenset({"failed"})))
            assert sorted(job["task_id"] for job in failed.statuses) == [f"away-{n}" for n in range(0, 50, 10)]


async def test_a_broker_restart_loses_no_status(tmp_path: Path, sqlite_url: str) -> None:
    directory = tmp_path / "persistent"
    directory.mkdir()
    broker = Broker(directory, persistence=directory / "db")
    broker.start()
    try:
        async with running_archiver(broker, sqlite_url) as (history, _):
            async with publisher(broker) as link:
                for number in range(20):
                    await publish_status(link, status(f"first-{number}", "running"))
            broker.stop()
            broker.start()
            async with publisher(broker) as link:
                # What ended while... the statuses after the restart, and the ends of the first ones.
                for number in range(20):
                    await publish_status(link, status(f"first-{number}", "success"))
                    await publish_status(link, status(f"second-{number}", "success"))

            async def all_ended() -> bool:
                page = await history.jobs(JobQuery(states=frozenset({"success"}), limit=1000))
                return len(page.statuses) == 40

            await wait_until(all_ended, within=60)
    finally:
        broker.stop()


def _deep(levels: int) -> bytes:
    return b'{"task_id":"evil","state":"success","x":' + b"[" * levels + b"]" * levels + b"}"


HOSTILE_STATUSES = [
    pytest.param("victim", json.dumps(status("other", "success")).encode(), id="names-another-job"),
    pytest.param("victim", json.dumps({**status("victim"), "state": "pwned"}).encode(), id="unknown-state"),
    pytest.param("victim", json.dumps({**status("victim"), "playbook": ["x"]}).encode(), id="playbook-not-text"),
    pytest.param("victim", json.dumps({**status("victim"), "created_at": 12}).encode(), id="time-not-text"),
    pytest.param("victim", json.dumps({**status("victim"), "created_at": "noon"}).encode(), id="time-not-a-time"),
    pytest.param("victim", json.dumps({**status("victim"), "worker_id": "w\u0000"}).encode(), id="nul-in-text"),
    pytest.param("victim", json.dumps({**status("victim"), "playbook": "\ud800"}).encode(), id="lone-surrogate"),
    pytest.param("victim", b'{"task_id": "victim", "state": "success", "x": "\xff\xfe"}', id="not-utf8"),
    pytest.param("victim", b"[1, 2, 3]", id="not-an-object"),
    pytest.param("victim", b"{nope", id="not-json"),
    pytest.param("evil", _deep(100_000), id="deep"),
    pytest.param("victim", json.dumps({**status("victim"), "pad": "x" * 2_000_000}).encode(), id="huge"),
]


@pytest.mark.parametrize(("topic_id", "payload"), HOSTILE_STATUSES)
async def test_a_hostile_status_is_logged_and_skipped(
    broker: Broker, sqlite_url: str, topic_id: str, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_archiver(broker, sqlite_url) as (history, archiver), publisher(broker) as link:
        await publish_status(link, payload, task_id=topic_id)
        await publish_status(link, status("honest", "success"))
        await wait_until(lambda: _has(history, "honest"))
        assert archiver.stats.skipped == 1
        assert await history.count() == 1
        assert "skipped a message on" in caplog.text


async def test_a_record_that_is_not_its_jobs_is_skipped(broker: Broker, store_url: str) -> None:
    async with running_archiver(broker, store_url) as (history, archiver), publisher(broker) as link:
        theirs = status("theirs", "success")
        # A record of job "theirs" retained on job "mine"'s topic, and one whose ids disagree.
        await link.publish(TOPICS.record("mine"), record(theirs), qos=1, retain=True)
        document = json.loads(zlib.decompress(record(status("mixed", "success"))))
        document["task_id"] = "other"
        mixed = zlib.compress(json.dumps(document).encode())
        await link.publish(TOPICS.record("mixed"), mixed, qos=1, retain=True)
        await link.publish(TOPICS.record("bomb"), zlib.compress(b"{" * 10 + b"0" * 100_000_000), qos=1, retain=True)
        await publish_status(link, status("honest", "success"))
        await wait_until(lambda: _has(history, "honest"))
        await wait_until(lambda: _true(archiver.stats.skipped == 3))
        assert await history.record("mine") is None
        assert await history.record("mixed") is None
        assert await history.status("theirs") is None
        assert await history.count() == 1


async def test_the_store_is_migrated_from_its_first_version(store_url: str) -> None:
    from ansible_worker.history import database
    from ansible_worker.history.schema import jobs, records

    engine = database.open_engine(store_url, create=True)
    try:
        database.migrate(engine, "0001")
        began = (datetime.now(UTC) - timedelta(days=1)).timestamp()
        final = status("old-job", "success")
        with engine.begin() as connection:
            # Version 1's tables are version 2's, less the hosts: the schema's own tables write them.
            row = {"task_id": "old-job", "state": "success", "rank": 2, "playbook": "site.yml", "worker_id": "w1"}
            connection.execute(
                jobs.insert(), {**row, "began_at": began, "status": json.dumps(final), "archived_at": began}
            )
            connection.execute(
                records.insert(), {"task_id": "old-job", "payload": record(final, ("web3",)), "archived_at": began}
            )
        assert database.current_version(engine) == "0001"
    finally:
        engine.dispose()
    async with open_history(store_url, migrate=True) as history:
        page = await history.jobs(JobQuery(host="web3"))
        assert [job["task_id"] for job in page.statuses] == ["old-job"]
    engine = database.open_engine(store_url, create=False)
    try:
        assert database.current_version(engine) == database.head_version()
    finally:
        engine.dispose()


async def test_a_reader_does_not_make_an_empty_store(tmp_path: Path) -> None:
    from ansible_worker.history.database import HistoryError

    with pytest.raises(HistoryError, match="no history store at"):
        async with open_history(f"sqlite:///{tmp_path / 'missing.db'}"):
            pass
    assert not (tmp_path / "missing.db").exists()


async def _has(history: History, task_id: str) -> bool:
    return await history.status(task_id) is not None


async def _count_is(history: History, count: int) -> bool:
    return await history.count() == count


async def _true(value: bool) -> bool:
    await trio.lowlevel.checkpoint()
    return value


async def test_two_archivers_on_one_postgresql_write_each_job_once(broker: Broker, postgres: Postgres) -> None:
    url = postgres.new_database()
    async with (
        running_archiver(broker, url) as (history, first),
        running_archiver(broker, url) as (_, second),
        publisher(broker) as link,
    ):
        # Both have subscribed once both have written the first job: an archiver reports started
        # before it is connected, and one that subscribed late would see only retained messages.
        await publish_status(link, status("job-first", "success"))

        async def both_subscribed() -> bool:
            return first.stats.written >= 1 and second.stats.written >= 1

        await wait_until(both_subscribed, within=60)
        for number in range(200):
            await publish_status(link, status(f"job-{number}", "running"))
            final = status(f"job-{number}", "success")
            await publish_status(link, final)
            await link.publish(TOPICS.record(f"job-{number}"), record(final, ("web1",)), qos=1, retain=True)

        async def both_done() -> bool:
            return first.stats.written >= 601 and second.stats.written >= 601

        await wait_until(both_done, within=60)
        assert await history.count() == 201
        page = await history.jobs(JobQuery(host="web1", limit=1000))
        assert len(page.statuses) == 200
        assert {job["state"] for job in page.statuses} == {"success"}


def _hostile_record(task_id: str, status_value: object) -> bytes:
    document = {"format": "ansible-worker-record/1", "task_id": task_id, "status": status_value}
    return zlib.compress(json.dumps({**document, "events": [], "output": ""}).encode())


async def test_a_hostile_record_is_skipped_and_the_archiver_goes_on(broker: Broker, sqlite_url: str) -> None:
    async with running_archiver(broker, sqlite_url) as (history, archiver), publisher(broker) as link:
        # A state that is no string, and a record nested deeper than a parser recurses.
        await link.publish(
            TOPICS.record("job1"), _hostile_record("job1", {"task_id": "job1", "state": []}), qos=1, retain=True
        )
        deep = b'{"format": "ansible-worker-record/1", "status": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
        await link.publish(TOPICS.record("job2"), zlib.compress(deep), qos=1, retain=True)
        await publish_status(link, status("honest", "success"))
        await wait_until(lambda: _has(history, "honest"))
        await wait_until(lambda: _true(archiver.stats.skipped == 2))
        assert await history.count() == 1


class StalledStore:
    """A history store whose writes wait until `resume` is set: a database that stalls for a while."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.resume = trio.Event()

    async def write(self, rows: list[Any]) -> None:
        await self.resume.wait()
        await self.history.write(rows)


async def test_a_stalled_store_holds_the_link_within_the_inbox_byte_bound(
    broker: Broker, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large messages behind a slow database wait at the broker, not in the archiver's memory."""
    limit = 1024 * 1024
    monkeypatch.setattr(archiver_module, "INBOX_BYTES", limit)
    big = "x" * 200_000
    task_ids = [f"big-{number}" for number in range(20)]
    async with running_archiver(broker, sqlite_url) as (history, archiver), publisher(broker) as link:
        stalled = StalledStore(history)
        archiver.history = stalled  # type: ignore[assignment]
        for task_id in task_ids:
            await publish_status(link, status(task_id, output={"padding": big}))
        # The budget fills: the first batch waits on the store, the rest on the broker.
        with trio.fail_after(20):
            while archiver.budget.held < limit - 2 * len(big):  # noqa: ASYNC110 - the archiver's counter, bounded
                await trio.sleep(0.05)
        assert archiver.budget.most_held <= limit + len(big) + 4096
        stalled.resume.set()

        async def all_written() -> bool:
            return all([await history.status(task_id) is not None for task_id in task_ids])

        await wait_until(all_written, within=60)
    assert archiver.budget.most_held <= limit + len(big) + 4096
