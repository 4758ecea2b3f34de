"""Measure what a worker adds to running ansible-playbook, side by side with running it directly.

Starts its own Mosquitto on a free loopback port and real `ansible-worker run` processes,
runs each scenario both ways in the same run, prints one table and writes a JSON file.
See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import trio
from lab import (
    FAKE_ANSIBLE,
    GROUP,
    Figures,
    Lab,
    direct_many,
    rss_kib,
    run_in_lab,
    run_many,
    timed_job,
    wait_for_worker,
)

from ansible_worker.controller.client import Client, open_client, target_from_url


async def overhead_and_latency(lab: Lab, client: Client, one: dict[str, Any], repeats: int) -> dict[str, Any]:
    """One-task jobs run directly and through the worker, alternating: the added time, and the time to start."""
    # 1 and 2: overhead per job and start latency, alternating direct and worker runs.
    async with lab.worker("w-single"):
        await wait_for_worker(client, "w-single")
        await timed_job(client, one)  # warm the page cache and Python's bytecode cache
        await lab.direct("one.yml", "local.ini")
        direct, worker, running, first_event = Figures(), Figures(), Figures(), Figures()
        # What the group keeps so that a survivor could take each job over: claims and request copies.
        kept = await client.subscribe([f"{client.topics.tasks}/+/claim", f"{client.topics.tasks}/+/request"])
        await client.barrier()
        while True:
            try:
                kept.receive_nowait()  # retained ones from the warm-up
            except trio.WouldBlock:
                break
        for _ in range(repeats):
            direct.values.append(await lab.direct("one.yml", "local.ini"))
            timing, _ = await timed_job(client, one)
            worker.values.append(timing.terminal)
            running.values.append(timing.running)
            first_event.values.append(timing.first_event)
        overhead = {
            "direct_s": direct.summary(),
            "worker_s": worker.summary(),
            "ratio": round(worker.median / direct.median, 4),
            "added_ms": round((worker.median - direct.median) * 1000, 1),
        }
        latency = {"running_ms": running.summary(1000), "first_event_ms": first_event.summary(1000)}
        await client.barrier()
        takeover_cost = _per_job(kept, repeats, client.topics.tasks)
        print("  overhead and latency done", file=sys.stderr)
    return {"overhead": overhead, "latency": latency, "takeover_cost": takeover_cost}


async def throughput(lab: Lab, client: Client, one: dict[str, Any], jobs: int) -> dict[str, Any]:
    """Jobs a minute through the worker and run directly, at concurrency 1 and 2."""
    # 3: throughput, in four interleaved quarters so that drift in the machine's speed
    # falls on both sides alike.
    figures: dict[str, Any] = {}
    for concurrency in (1, 2):
        through_worker = through_direct = 0.0
        part = jobs // 4
        async with lab.worker(f"w-c{concurrency}", concurrency=concurrency):
            await wait_for_worker(client, f"w-c{concurrency}")
            for _ in range(4):
                through_direct += await direct_many(lab, part, concurrency)
                through_worker += await run_many(client, one, part)
        per_minute_worker = jobs / through_worker * 60
        per_minute_direct = jobs / through_direct * 60
        figures[f"concurrency_{concurrency}"] = {
            "jobs": jobs,
            "worker_jobs_per_min": round(per_minute_worker, 1),
            "direct_jobs_per_min": round(per_minute_direct, 1),
            "ratio": round(per_minute_worker / per_minute_direct, 4),
        }
        print(f"  throughput at concurrency {concurrency} done", file=sys.stderr)
    return figures


async def event_heavy(lab: Lab, client: Client, repeats: int) -> dict[str, Any]:
    """The fifty-host, forty-task playbook run directly and through the worker, and how late its events arrive."""
    # 4: event-heavy jobs.
    heavy = {"playbook": "heavy.yml", "inventory": "fifty.ini", "forks": 10}
    async with lab.worker("w-heavy", events_per_second=100_000):
        await wait_for_worker(client, "w-heavy")
        direct, worker, delays = Figures(), Figures(), Figures()
        for _ in range(repeats):
            direct.values.append(await lab.direct("heavy.yml", "fifty.ini", forks=10))
            # A controller waiting for the result, as in the direct run nobody watches.
            timing, _ = await timed_job(client, heavy, watch_events=False)
            if timing.state != "success":
                raise RuntimeError(f"heavy job ended {timing.state}")
            worker.values.append(timing.terminal)
        # One more run with a watcher on the events, for their delay.
        _, event_delays = await timed_job(client, heavy)
        delays.values.extend(event_delays)
        ordered = sorted(delays.values)
        figures = {
            "hosts": 50,
            "tasks": 40,
            "direct_s": direct.summary(),
            "worker_s": worker.summary(),
            "ratio": round(worker.median / direct.median, 4),
            "event_delay_ms": {
                **delays.summary(1000),
                "p95": round(ordered[int(len(ordered) * 0.95)] * 1000, 3),
            },
        }
        print("  event-heavy jobs done", file=sys.stderr)
    return figures


async def pipeline_and_memory(lab: Lab, client: Client, one: dict[str, Any], scale: dict[str, int]) -> dict[str, Any]:
    """The worker's own rate with a fake `ansible-playbook`, and its memory over many jobs."""
    # 5 and 6: the worker's own pipeline, and its memory over many jobs.
    fake = lab.root / "fake-ansible-playbook"
    fake.write_text(FAKE_ANSIBLE.format(python=sys.executable, events=100))
    fake.chmod(0o755)
    async with lab.worker(
        "w-pipeline", ansible_playbook_path=str(fake), concurrency=2, events_per_second=1_000_000
    ) as process:
        await wait_for_worker(client, "w-pipeline")
        idle = rss_kib(process.pid)
        # Memory first, in steady batches of 100 (a controller that floods the queue
        # with 1,000 jobs at once would measure the high-water mark of 1,000 queued
        # jobs instead). The allocator's pools fill over the first few hundred jobs, then
        # stay flat: growth is measured after that, so that a leak would show.
        for _ in range(scale["warm_up_jobs"] // 100):
            await run_many(client, one, 100)
        after_warm = rss_kib(process.pid)
        for _ in range(scale["pipeline_jobs"] // 100):
            await run_many(client, one, 100)
        after = rss_kib(process.pid)
        # Then the rate, with every job published at once.
        elapsed = await run_many(client, one, scale["pipeline_jobs"])
        peak = rss_kib(process.pid)
        events = scale["pipeline_jobs"] * 102
        pipeline = {
            "jobs": scale["pipeline_jobs"],
            "events_per_job": 102,
            "jobs_per_s": round(scale["pipeline_jobs"] / elapsed, 1),
            "events_per_s": round(events / elapsed, 0),
        }
        memory = {
            "after_burst_of_jobs_mb": round(peak / 1024, 1),
            "idle_mb": round(idle / 1024, 1),
            "warm_up_jobs": scale["warm_up_jobs"],
            "after_warm_up_mb": round(after_warm / 1024, 1),
            "after_jobs_mb": round(after / 1024, 1),
            "jobs": scale["pipeline_jobs"],
            "growth_mb_per_1000_jobs": round((after - after_warm) / 1024 * 1000 / scale["pipeline_jobs"], 2),
        }
        print("  pipeline and memory done", file=sys.stderr)
    return {"pipeline": pipeline, "memory": memory}


async def bench(lab: Lab, scale: dict[str, int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    target = target_from_url(f"mqtt://127.0.0.1:{lab.port}", group=GROUP)
    one = {"playbook": "one.yml", "inventory": "local.ini"}
    async with open_client(target) as client:
        results.update(await overhead_and_latency(lab, client, one, scale["repeats"]))
        results["throughput"] = await throughput(lab, client, one, scale["jobs"])
        results["event_heavy"] = await event_heavy(lab, client, scale["heavy_repeats"])
        results.update(await pipeline_and_memory(lab, client, one, scale))
    return results


TARGETS = {
    "overhead": "<= 3% or 20 ms",
    "running": "<= 10 ms",
    "throughput": ">= 97% of direct",
    "event_heavy": "<= 1.10",
    "idle": "<= 45 MB",
    "growth": "<= 5 MB / 1000 jobs",
}


def _per_job(received: trio.MemoryReceiveChannel[Any], jobs: int, tasks: str) -> dict[str, float]:
    """Messages and bytes per job on the claim and request-copy topics, from what `received` holds."""
    counts = {"claim_messages": 0, "claim_bytes": 0, "request_copy_messages": 0, "request_copy_bytes": 0}
    while True:
        try:
            message = received.receive_nowait()
        except trio.WouldBlock:
            break
        kind = "claim" if message.topic.endswith("/claim") else "request_copy"
        counts[f"{kind}_messages"] += 1
        counts[f"{kind}_bytes"] += len(message.payload)
    return {key: round(value / jobs, 1) for key, value in counts.items()}


def job_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The rows of one-task jobs: overhead, latency, throughput."""
    overhead, latency = results["overhead"], results["latency"]
    rows: list[tuple[str, str, str, str]] = [
        (
            "overhead per job (1 task)",
            f"direct {overhead['direct_s']['median']:.3f}s, worker {overhead['worker_s']['median']:.3f}s",
            f"+{overhead['added_ms']:.1f} ms, x{overhead['ratio']:.3f}",
            TARGETS["overhead"],
        ),
        (
            "publish -> running",
            f"min {latency['running_ms']['min']:.1f} / max {latency['running_ms']['max']:.1f} ms",
            f"{latency['running_ms']['median']:.1f} ms",
            TARGETS["running"],
        ),
        (
            "kept for a takeover, per job",
            "claim {claim_messages:g} msgs / {claim_bytes:g} B, request copy {request_copy_messages:g} msgs /"
            " {request_copy_bytes:g} B".format(**results["takeover_cost"]),
            "",
            "",
        ),
        (
            "publish -> first event",
            f"min {latency['first_event_ms']['min']:.1f} / max {latency['first_event_ms']['max']:.1f} ms",
            f"{latency['first_event_ms']['median']:.1f} ms",
            "",
        ),
    ]
    for key, figures in results["throughput"].items():
        rows.append(
            (
                f"throughput, {key.replace('_', ' ')} ({figures['jobs']} jobs)",
                f"direct {figures['direct_jobs_per_min']:.0f}/min, worker {figures['worker_jobs_per_min']:.0f}/min",
                f"{figures['ratio'] * 100:.1f}%",
                TARGETS["throughput"],
            )
        )
    return rows


def heavy_and_memory_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The rows of event-heavy jobs, the pipeline and memory."""
    heavy = results["event_heavy"]
    return [
        (
            "event-heavy (50 hosts x 40 tasks)",
            f"direct {heavy['direct_s']['median']:.2f}s, worker {heavy['worker_s']['median']:.2f}s",
            f"x{heavy['ratio']:.3f}",
            TARGETS["event_heavy"],
        ),
        (
            "event in Ansible -> on the broker",
            f"p95 {heavy['event_delay_ms']['p95']:.1f} ms, max {heavy['event_delay_ms']['max']:.1f} ms",
            f"{heavy['event_delay_ms']['median']:.1f} ms",
            "",
        ),
        (
            "pipeline (fake ansible, 102 events/job)",
            f"{results['pipeline']['events_per_s']:.0f} events/s",
            f"{results['pipeline']['jobs_per_s']:.1f} jobs/s",
            "",
        ),
        (
            "memory idle",
            f"resident set size; {results['memory']['after_burst_of_jobs_mb']:.1f} MB after 1000 queued at once",
            f"{results['memory']['idle_mb']:.1f} MB",
            TARGETS["idle"],
        ),
        (
            f"memory growth ({results['memory']['jobs']} jobs after {results['memory']['warm_up_jobs']})",
            f"{results['memory']['after_warm_up_mb']:.1f} -> {results['memory']['after_jobs_mb']:.1f} MB",
            f"{results['memory']['growth_mb_per_1000_jobs']:.2f} MB/1000 jobs",
            TARGETS["growth"],
        ),
    ]


def table(results: dict[str, Any]) -> str:
    """The figures against their targets, as a Markdown table."""
    rows = job_rows(results) + heavy_and_memory_rows(results)
    widths = [max(len(row[index]) for row in rows) for index in range(4)]
    header = ("figure", "detail", "result", "target")
    widths = [max(width, len(title)) for width, title in zip(widths, header, strict=True)]
    lines = ["| " + " | ".join(title.ljust(width) for title, width in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in rows:
        lines.append("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, for a quick look")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results.json")
    args = parser.parse_args()
    scale = (
        {"repeats": 5, "jobs": 20, "heavy_repeats": 1, "pipeline_jobs": 200, "warm_up_jobs": 100}
        if args.quick
        else {"repeats": 25, "jobs": 200, "heavy_repeats": 3, "pipeline_jobs": 1000, "warm_up_jobs": 300}
    )
    report = run_in_lab(bench, scale, prefix="ansible-worker-bench-", quick=args.quick, targets=TARGETS)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    info = report["machine"]
    print(f"\n{info['cpu']}, {info['cores']} cores, Python {info['python']}, {info['ansible']}, {info['mosquitto']}")
    print(table(report["results"]))
    print(f"\n{report['duration_s']:.0f}s; written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
