"""Measure the history store: seed a week of a busy group, time the reads people make, and the ingest.

Runs standalone (`python benchmarks/bench_history.py [--quick] [--jobs N]`): seeds a SQLite
file and a throwaway PostgreSQL cluster (testing/postgres.py) by writing the rows directly
(realistic statuses, 5 % failed, records of a typical size, 1 to 4 hosts each out of 500),
times `jobs --state failed --since 1h`, `jobs --host web3 --since 7d`, `logs` of an old job
and the dashboard's first page as the store's reader runs them, then publishes statuses to a
real Mosquitto for a running archiver and times their ingest. Prints the figures and writes
them to bench_history.json here.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).parent.parent))

from ansible_worker.history.archiver import serve_archiver
from ansible_worker.history.messages import Row, read_record, read_status
from ansible_worker.history.reader import History, open_history
from ansible_worker.history.store import JobQuery, write_rows
from ansible_worker.mqtt.link import LinkOptions, open_mqtt_link
from ansible_worker.protocol.records import encode_record, record_document
from ansible_worker.protocol.topics import Topics
from testing.broker import Broker
from testing.postgres import Postgres

TOPICS = Topics("ansible", "bench")
SEED_BATCH = 2000
PUBLISHERS = 16


def job(number: int, now: datetime, span: float) -> tuple[dict[str, Any], bytes]:
    """A finished job spread over `span` seconds before `now`: its status and its record."""
    rng = random.Random(number)
    began = now - timedelta(seconds=span * number / max(1, JOBS))
    state = "failed" if rng.random() < 0.05 else "success"
    hosts = [f"web{rng.randrange(500)}" for _ in range(rng.randint(1, 4))]
    status = {
        "task_id": f"job-{number:07d}",
        "state": state,
        "created_at": began.isoformat().replace("+00:00", "Z"),
        "started_at": (began + timedelta(seconds=1)).isoformat().replace("+00:00", "Z"),
        "completed_at": (began + timedelta(seconds=30)).isoformat().replace("+00:00", "Z"),
        "duration_seconds": 29.0,
        "playbook": f"deploy/app{number % 20}.yml",
        "worker_id": f"worker-{number % 8}",
        "tasks_total": 12,
        "tasks_ok": 10,
        "tasks_changed": 2 - (state == "failed"),
        "tasks_failed": int(state == "failed"),
        "return_code": 2 if state == "failed" else 0,
    }
    events = [
        {"event": "runner_on_ok", "host": host, "task": f"task {t}", "seq": t, "line": f"ok: [{host}]"}
        for t in range(12)
        for host in hosts
    ]
    output = "".join(f"TASK [task {t}] ****\nok: [{host}]\n" for t in range(12) for host in hosts)
    document = record_document(status, events, output, output_bytes=len(output), events_total=len(events))
    return status, encode_record(document, 1_048_576).payload


JOBS = 700_000


def seed(history: History, jobs: int, now: datetime) -> tuple[float, int]:
    """Write `jobs` jobs over the last 7 days; seconds taken and bytes of records."""
    engine = history._engine
    started = time.perf_counter()
    record_bytes = 0
    for first in range(0, jobs, SEED_BATCH):
        rows: list[Row] = []
        for number in range(first, min(jobs, first + SEED_BATCH)):
            status, payload = job(number, now, 7 * 86400)
            record_bytes += len(payload)
            rows.append(read_record(status["task_id"], payload))
            row = read_status(status["task_id"], json.dumps(status).encode())
            assert row is not None
            rows.append(row)
        write_rows(engine, rows)
    return time.perf_counter() - started, record_bytes


async def timed(coroutine: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await coroutine
    return time.perf_counter() - started, result


async def reads(history: History, jobs: int) -> dict[str, float]:
    now = time.time()
    figures = {}
    figures["jobs --state failed --since 1h"], _ = await timed(
        history.newest(JobQuery(states=frozenset({"failed"}), since=now - 3600), 1000)
    )
    figures["jobs --host web3 --since 7d"], _ = await timed(
        history.newest(JobQuery(host="web3", since=now - 7 * 86400), 1000)
    )
    figures["logs of an old job"], found = await timed(history.record(f"job-{jobs - 1:07d}"))
    assert found is not None
    figures["dashboard's first page (100 jobs)"], _ = await timed(history.jobs(JobQuery(limit=100)))
    return {name: round(seconds, 4) for name, seconds in figures.items()}


async def ingest(url: str, statuses: int) -> float:
    """Statuses per second an archiver writes, published as fast as a link sends them."""
    with tempfile.TemporaryDirectory() as directory:
        # The archiver's broker settings (docs/history.md): no cap on a client's queue.
        broker = Broker(Path(directory), "max_queued_messages 0\n")
        broker.start()
        try:
            link_options = LinkOptions("127.0.0.1", broker.port, "bench-archiver")
            async with open_history(url, migrate=True) as history, trio.open_nursery() as nursery:
                archiver = await nursery.start(serve_archiver, history, link_options, TOPICS)
                with trio.fail_after(30):
                    # The broker's log is the only sign that the archiver has subscribed.
                    while not archiver.stats.batches and not await _connected(broker):  # noqa: ASYNC110
                        await trio.sleep(0.05)
                await trio.sleep(0.5)
                now = datetime.now(UTC)
                payloads = []
                for number in range(statuses):
                    status, _ = job(number, now, 3600)
                    status["task_id"] = f"ingest-{uuid.uuid4().hex[:8]}-{number}"
                    payloads.append((TOPICS.status(status["task_id"]), json.dumps(status).encode()))
                started = time.perf_counter()
                # Like a busy group: many workers publishing at once, each waiting for its PUBACK.
                async with trio.open_nursery() as publishers:
                    for share in range(PUBLISHERS):
                        publishers.start_soon(publish, broker, payloads[share::PUBLISHERS])
                with trio.fail_after(300):
                    # A counter no event announces: look again, within the bound.
                    while archiver.stats.written < statuses:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                seconds = time.perf_counter() - started
                nursery.cancel_scope.cancel()
            return statuses / seconds
        finally:
            broker.stop()


async def publish(broker: Broker, payloads: list[tuple[str, bytes]]) -> None:
    async with open_mqtt_link(LinkOptions("127.0.0.1", broker.port, f"bench-pub-{uuid.uuid4().hex[:6]}")) as link:
        for topic, payload in payloads:
            await link.publish(topic, payload, qos=1)


async def _connected(broker: Broker) -> bool:
    await trio.sleep(0.05)
    return "bench-archiver" in broker.log.read_text()


def main() -> None:
    global JOBS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="50,000 jobs instead of 700,000")
    parser.add_argument("--jobs", type=int, help="how many jobs to seed")
    parser.add_argument("--ingest", type=int, default=20_000, help="statuses for the ingest figure")
    args = parser.parse_args()
    JOBS = args.jobs or (50_000 if args.quick else 700_000)
    results: dict[str, Any] = {"jobs": JOBS}
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as directory:
        postgres = Postgres()
        postgres.start()
        try:
            for name, url in (("sqlite", f"sqlite:///{directory}/history.db"), ("postgresql", postgres.new_database())):

                async def run(url: str = url) -> dict[str, Any]:
                    async with open_history(url, migrate=True) as history:
                        seconds, record_bytes = await trio.to_thread.run_sync(seed, history, JOBS, now)
                        figures: dict[str, Any] = {"seed seconds": round(seconds, 1)}
                        figures["record bytes per job"] = round(record_bytes / JOBS)
                        figures.update(await reads(history, JOBS))
                        return figures

                figures = trio.run(run)
                if name == "sqlite":
                    size = sum(path.stat().st_size for path in Path(directory).glob("history.db*"))
                    figures["store bytes per job"] = round(size / JOBS)
                figures["archiver ingest statuses/s"] = round(
                    trio.run(ingest, f"sqlite:///{directory}/ingest.db" if name == "sqlite" else url, args.ingest)
                )
                results[name] = figures
                print(name, json.dumps(figures, indent=2), flush=True)
        finally:
            postgres.remove()
    (Path(__file__).parent / "bench_history.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
