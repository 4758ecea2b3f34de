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
from functools import partial
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).parent.parent))

from ansible_worker.history.archiver import serve_archiver
from ansible_worker.history.messages import RecordRow, Row, StatusRow, read_record
from ansible_worker.history.reader import History, open_history
from ansible_worker.history.store import JobQuery, write_rows
from ansible_worker.mqtt.link import LinkOptions, open_mqtt_link
from ansible_worker.protocol.records import encode_record, record_document
from ansible_worker.protocol.topics import Topics
from testing.broker import Broker
from testing.postgres import Postgres

TOPICS = Topics("ansible", "bench")
SEED_BATCH = 20_000
PUBLISHERS = 16


def job_status(number: int, now: datetime, span: float) -> tuple[dict[str, Any], list[str]]:
    """A finished job spread over `span` seconds before `now`: its status and the hosts it ran on."""
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
    return status, list(dict.fromkeys(hosts))


def job(number: int, now: datetime, span: float) -> tuple[dict[str, Any], bytes]:
    """A finished job spread over `span` seconds before `now`: its status and its record."""
    status, hosts = job_status(number, now, span)
    events = [
        {"event": "runner_on_ok", "host": host, "task": f"task {t}", "seq": t, "line": f"ok: [{host}]"}
        for t in range(12)
        for host in hosts
    ]
    output = "".join(f"TASK [task {t}] ****\nok: [{host}]\n" for t in range(12) for host in hosts)
    document = record_document(status, events, output, output_bytes=len(output), events_total=len(events))
    return status, encode_record(document, 1_048_576).payload


JOBS = 700_000
# Distinct records generated per host count; the other jobs reuse one of them (see `seed`).
RECORD_POOL = 500


def _moment(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def seed(history: History, jobs: int, now: datetime, own: set[int]) -> tuple[float, int]:
    """Write `jobs` jobs over the last 7 days, SEED_BATCH per transaction; seconds taken and bytes of records.

    Building and compressing a record costs more than writing it, so only the jobs in `own`
    (those the bench reads) get their own; every other job stores one of RECORD_POOL real
    records with as many hosts, of the same size and compressibility. Rows are built directly,
    as the archiver's checks (`messages`) would build them: those are timed by the ingest figure.
    """
    engine = history._engine
    pool: dict[int, list[bytes]] = {}
    for number in range(RECORD_POOL * 4):
        status, payload = job(number, now, 7 * 86400)
        pool.setdefault(len(read_record(status["task_id"], payload).hosts), []).append(payload)
    started = time.perf_counter()
    record_bytes = 0
    for first in range(0, jobs, SEED_BATCH):
        rows: list[Row] = []
        for number in range(first, min(jobs, first + SEED_BATCH)):
            status, hosts = job_status(number, now, 7 * 86400)
            text = json.dumps(status, separators=(",", ":"))
            began = _moment(status["created_at"])
            row = StatusRow(
                status["task_id"],
                status["state"],
                2,
                status["playbook"],
                status["worker_id"],
                began,
                _moment(status["completed_at"]),
                text,
            )
            if number in own:
                payload = job(number, now, 7 * 86400)[1]
            else:
                choices = pool[len(hosts)]
                payload = choices[number % len(choices)]
            record_bytes += len(payload)
            rows.append(RecordRow(status["task_id"], payload, row, tuple(hosts)))
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


def ingest_payloads(statuses: int) -> list[tuple[str, bytes]]:
    now = datetime.now(UTC)
    payloads = []
    for number in range(statuses):
        status, _ = job_status(number, now, 3600)
        status["task_id"] = f"ingest-{uuid.uuid4().hex[:8]}-{number}"
        payloads.append((TOPICS.status(status["task_id"]), json.dumps(status).encode()))
    return payloads


async def ingest(url: str, statuses: int, *, alone: bool) -> dict[str, float]:
    """Statuses per second an archiver writes, and where its time goes.

    `alone`: the statuses are retained on the broker first, then an archiver starts and drains
    them (what it does after a restart, and its own ceiling). Otherwise: published while it
    runs by PUBLISHERS links at once, each waiting for its PUBACK, like a busy group.
    """
    with tempfile.TemporaryDirectory() as directory:
        # The archiver's broker settings (docs/history.md): no cap on a client's queue.
        broker = Broker(Path(directory), "max_queued_messages 0\n")
        broker.start()
        try:
            payloads = ingest_payloads(statuses)
            if alone:
                async with trio.open_nursery() as publishers:
                    for share in range(PUBLISHERS):
                        publishers.start_soon(publish, broker, payloads[share::PUBLISHERS], True)
            link_options = LinkOptions("127.0.0.1", broker.port, "bench-archiver")
            async with open_history(url, migrate=True) as history, trio.open_nursery() as nursery:
                started, cpu = time.perf_counter(), time.process_time()
                archiver = await nursery.start(serve_archiver, history, link_options, TOPICS)
                if not alone:
                    with trio.fail_after(30):
                        # The broker's log is the only sign that the archiver has subscribed.
                        while not await _connected(broker):  # noqa: ASYNC110
                            await trio.sleep(0.05)
                    await trio.sleep(0.5)
                    started, cpu = time.perf_counter(), time.process_time()
                    async with trio.open_nursery() as publishers:
                        for share in range(PUBLISHERS):
                            publishers.start_soon(publish, broker, payloads[share::PUBLISHERS], False)
                with trio.fail_after(600):
                    # A counter no event announces: look again, within the bound.
                    while archiver.stats.written < statuses:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
                nursery.cancel_scope.cancel()
            stats = archiver.stats
            return {
                "statuses/s": round(statuses / seconds),
                # On a shared machine the wall clock counts other people's work; this does not
                # (with publishers, it counts theirs too: they run in this process).
                "statuses per CPU second": round(statuses / cpu),
                "share checking": round(stats.check_seconds / seconds, 2),
                "share writing": round(stats.write_seconds / seconds, 2),
                "statuses per batch": round(stats.written / max(1, stats.batches)),
            }
        finally:
            broker.stop()


async def publish(broker: Broker, payloads: list[tuple[str, bytes]], retain: bool) -> None:
    async with open_mqtt_link(LinkOptions("127.0.0.1", broker.port, f"bench-pub-{uuid.uuid4().hex[:6]}")) as link:
        for topic, payload in payloads:
            await link.publish(topic, payload, qos=1, retain=retain)


async def jobs_without_store(retained: int, broker_settings: str) -> dict[str, Any]:
    """`ansible-worker jobs --json` against a broker retaining `retained` statuses: seconds, jobs listed, peak RSS."""
    with tempfile.TemporaryDirectory() as directory:
        broker = Broker(Path(directory), broker_settings)
        broker.start()
        try:
            async with trio.open_nursery() as publishers:
                payloads = ingest_payloads(retained)
                for share in range(PUBLISHERS):
                    publishers.start_soon(publish, broker, payloads[share::PUBLISHERS], True)
            # GNU time's last line on stderr: the command's peak RSS, in KiB.
            command = [
                *("/usr/bin/time", "-f", "%M", sys.executable, "-m", "ansible_worker", "jobs", "--json"),
                *("--broker", f"mqtt://127.0.0.1:{broker.port}", "--group", TOPICS.group),
            ]
            started = time.perf_counter()
            done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
            seconds = time.perf_counter() - started
            *said, peak = done.stderr.decode().strip().splitlines()
            return {
                "seconds": round(seconds, 2),
                "exit code": done.returncode,
                "jobs listed": len(done.stdout.splitlines()),
                "peak RSS MiB": round(int(peak) / 1024),
                "said": said[-3:],
            }
        finally:
            broker.stop()


async def _connected(broker: Broker) -> bool:
    await trio.sleep(0.05)
    return "bench-archiver" in broker.log.read_text()


def main() -> None:
    global JOBS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="50,000 jobs instead of 700,000")
    parser.add_argument("--jobs", type=int, help="how many jobs to seed")
    parser.add_argument("--ingest", type=int, default=20_000, help="statuses for the ingest figures")
    parser.add_argument("--only", choices=["sqlite", "postgresql"], help="measure one database only")
    parser.add_argument(
        "--without-store", action="store_true", help="only `jobs` from retained statuses, at 1,000, 10,000 and 50,000"
    )
    args = parser.parse_args()
    JOBS = args.jobs or (50_000 if args.quick else 700_000)
    if args.without_store:
        figures: dict[str, Any] = {}
        for retained in (1000, 10_000, 50_000):
            for name, settings in (("no queue cap", "max_queued_messages 0\n"), ("stock Mosquitto", "")):
                figures[f"{retained} retained, {name}"] = trio.run(jobs_without_store, retained, settings)
                print(retained, name, figures[f"{retained} retained, {name}"], flush=True)
        (Path(__file__).parent / "bench_jobs_without_store.json").write_text(json.dumps(figures, indent=2) + "\n")
        return
    results: dict[str, Any] = {"jobs": JOBS}
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as directory:
        postgres = Postgres()
        postgres.start()
        try:
            for name, url in (("sqlite", f"sqlite:///{directory}/history.db"), ("postgresql", postgres.new_database())):
                if args.only not in (None, name):
                    continue

                async def run(url: str = url) -> dict[str, Any]:
                    async with open_history(url, migrate=True) as history:
                        own = {JOBS - 1}
                        seconds, record_bytes = await trio.to_thread.run_sync(seed, history, JOBS, now, own)
                        figures: dict[str, Any] = {"seed seconds": round(seconds, 1)}
                        figures["record bytes per job"] = round(record_bytes / JOBS)
                        figures.update(await reads(history, JOBS))
                        return figures

                figures = trio.run(run)
                if name == "sqlite":
                    size = sum(path.stat().st_size for path in Path(directory).glob("history.db*"))
                    figures["store bytes per job"] = round(size / JOBS)
                for alone, label in ((True, "archiver ingest, alone"), (False, "archiver ingest, 16 publishers")):
                    ingest_url = (
                        f"sqlite:///{directory}/ingest-{alone}.db" if name == "sqlite" else postgres.new_database()
                    )
                    figures[label] = trio.run(partial(ingest, ingest_url, args.ingest, alone=alone))
                results[name] = figures
                print(name, json.dumps(figures, indent=2), flush=True)
        finally:
            postgres.remove()
    (Path(__file__).parent / "bench_history.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
