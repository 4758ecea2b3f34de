"""Measure a worker's start-up against the group's history: process start to its first job `running`, and its memory.

Runs standalone (`python benchmarks/bench_startup.py [--quick] [--jobs N]`). Each scenario
has a fresh Mosquitto set up as `deploy/mosquitto` ships it (a queue deep enough for every
retained claim), seeded by publishing directly what workers leave behind for each finished
job of the last week: its retained status and record (kept `status_retention`), and its
claim. Claims are seeded as workers write them now (a settled job's claim lapses after
`worker.claim_lifetime`, so only the last hour's jobs still have one) and, for comparison,
as they wrote them before (kept as long as the status). Then a real `ansible-worker run`
starts; as soon as it says it is online one job is published, and the bench times process
start -> online -> `running`, and reads the worker's resident set size once the job runs.
Writes bench_startup.json here (or `--output`).
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio
from lab import GROUP, Lab, rss_kib, timed_job

from ansible_worker.controller.client import open_client, target_from_url
from ansible_worker.mqtt.link import LinkOptions, open_mqtt_link
from ansible_worker.protocol.records import encode_record, record_document
from ansible_worker.protocol.timestamps import format_utc
from ansible_worker.protocol.topics import Topics

TOPICS = Topics("ansible", GROUP)
WEEK = 7 * 86_400
CLAIM_LIFETIME = 3600
PUBLISHERS = 16
# How long a worker may take to say it is online, and then to start a job.
START_BOUND = 600
# The shipped broker's queue (deploy/mosquitto): enough for every retained claim a worker hears.
MAX_QUEUED = 1_000_000


def history(number: int, jobs: int, now: datetime, *, claims_kept: bool) -> list[tuple[str, bytes, int]]:
    """What workers leave for one finished job, spread over the last week: (topic, payload, expiry) each."""
    age = WEEK * number / max(1, jobs)
    ended = now - timedelta(seconds=age)
    task_id = f"past-{number:07d}"
    worker_id = f"worker-{number % 8}"
    status = {
        "task_id": task_id,
        "state": "failed" if number % 20 == 0 else "success",
        "created_at": format_utc(ended - timedelta(seconds=31)),
        "started_at": format_utc(ended - timedelta(seconds=30)),
        "completed_at": format_utc(ended),
        "duration_seconds": 30.0,
        "playbook": f"deploy/app{number % 20}.yml",
        "worker_id": worker_id,
        "tasks_total": 12,
        "tasks_ok": 10,
        "tasks_changed": 2,
        "return_code": 0,
    }
    events = [{"event": "runner_on_ok", "host": "web1", "task": f"task {t}", "seq": t} for t in range(12)]
    output = "".join(f"TASK [task {t}] ****\nok: [web1]\n" for t in range(12))
    record = encode_record(
        record_document(status, events, output, output_bytes=len(output), events_total=len(events)), 1_048_576
    ).payload
    kept = max(1, int(WEEK - age))
    messages = [(TOPICS.status(task_id), json.dumps(status).encode(), kept), (TOPICS.record(task_id), record, kept)]
    claim_left = kept if claims_kept else int(CLAIM_LIFETIME - age)
    if claim_left > 0:
        claim = {
            "state": "claimed",
            "worker_id": worker_id,
            "claim": secrets.token_hex(8),
            "accepted_at": format_utc(ended - timedelta(seconds=31), timespec="milliseconds"),
            "started_at": format_utc(ended - timedelta(seconds=30), timespec="milliseconds"),
            "expires_at": format_utc(now + timedelta(seconds=claim_left), timespec="milliseconds"),
        }
        messages.append((TOPICS.claim(task_id), json.dumps(claim).encode(), claim_left))
    return messages


async def seed(lab: Lab, jobs: int, *, claims_kept: bool) -> tuple[float, int]:
    """Publish `jobs` jobs of history, retained; seconds taken and claims retained."""
    now = datetime.now(UTC)
    started = time.perf_counter()
    claims = 0

    async def publish(share: int) -> None:
        nonlocal claims
        options = LinkOptions("127.0.0.1", lab.port, f"seed-{uuid.uuid4().hex[:6]}")
        async with open_mqtt_link(options) as link:
            for number in range(share, jobs, PUBLISHERS):
                for topic, payload, expiry in history(number, jobs, now, claims_kept=claims_kept):
                    claims += topic.endswith("/claim")
                    await link.publish(topic, payload, qos=1, retain=True, expiry=expiry)

    async with trio.open_nursery() as nursery:
        for share in range(PUBLISHERS):
            nursery.start_soon(publish, share)
    return time.perf_counter() - started, claims


async def start_up(lab: Lab, name: str) -> dict[str, Any]:
    """Start a worker, publish one job once it is online: seconds to online and to `running`, and its RSS then."""
    target = target_from_url(f"mqtt://127.0.0.1:{lab.port}", group=GROUP)
    one = {"playbook": "one.yml", "inventory": "local.ini"}
    async with open_client(target) as client:
        started = time.perf_counter()
        async with lab.worker(name, claim_lifetime=CLAIM_LIFETIME) as process:
            try:
                with trio.fail_after(START_BOUND):
                    await client.wait_for_worker(name)
                online = time.perf_counter() - started
                with trio.fail_after(START_BOUND):
                    timing, _ = await timed_job(client, one, watch_events=False)
            except trio.TooSlowError:
                said = (lab.root / f"{name}.log").read_text(errors="replace").splitlines()
                return {
                    f"not running within {START_BOUND}s": round(time.perf_counter() - started, 1),
                    "RSS then MB": round(rss_kib(process.pid) / 1024, 1),
                    "worker's last log lines": said[-5:],
                }
            rss = rss_kib(process.pid)
    return {
        "to online s": round(online, 2),
        "to first job running s": round(online + timing.running, 2),
        "online -> running s": round(timing.running, 3),
        "RSS after first job MB": round(rss / 1024, 1),
    }


def scenario(jobs: int, *, claims_kept: bool, label: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ansible-worker-startup-") as scratch:
        lab = Lab(Path(scratch), max_queued=MAX_QUEUED)
        lab.broker.start()
        try:

            async def run() -> dict[str, Any]:
                seconds, claims = await seed(lab, jobs, claims_kept=claims_kept)
                figures: dict[str, Any] = {"jobs of history": jobs, "retained claims": claims}
                figures["seed s"] = round(seconds, 1)
                figures.update(await start_up(lab, "w-start"))
                return figures

            figures = trio.run(run)
        finally:
            lab.broker.stop()
    print(label, json.dumps(figures), flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 jobs of history instead of 50,000")
    parser.add_argument("--jobs", type=int, help="how many jobs of history to seed")
    parser.add_argument("--only", choices=["empty", "now", "before"], help="run one scenario")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "bench_startup.json")
    args = parser.parse_args()
    jobs = args.jobs or (10_000 if args.quick else 50_000)
    scenarios = {
        "empty": ("empty group", 0, False),
        "now": ("claims lapse after claim_lifetime (now)", jobs, False),
        "before": ("claims kept as long as statuses (before)", jobs, True),
    }
    results = {
        label: scenario(seeded, claims_kept=kept, label=label)
        for key, (label, seeded, kept) in scenarios.items()
        if args.only in (None, key)
    }
    args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
