"""Measure warm starts: jobs through a worker with a warm Ansible parent, side by side with direct runs.

Starts its own Mosquitto on a free loopback port and real `ansible-worker run` processes
(warm start on, and off for reference), and runs `ansible-playbook` directly in the same
run: the one-task job from publish to terminal status, throughput at concurrency 1 and 2,
the event-heavy playbook, and the memory of the warm parents with the pool full. Prints the
figures and writes them to bench_warm.json beside this file.

    python benchmarks/bench_warm.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from lab import Figures, Lab, direct_many, lab_main, rss_kib, run_many, timed_job, wait_for_worker

from ansible_worker.controller.client import Client, open_client, target_from_url

GROUP = "bench"
TARGETS = {"one_task_ratio_max": 0.5, "throughput_ratio_min": 1.8, "event_heavy_ratio_max": 1.0}


def warm_parents_of(pid: int) -> list[int]:
    """The warm parents a worker started (its children running warm_parent.py)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == pid and b"warm_parent.py" in cmdline:
            found.append(int(entry.name))
    return found


async def one_task(lab: Lab, client: Any, name: str, repeats: int, **settings: Any) -> Figures:
    one = {"playbook": "one.yml", "inventory": "local.ini"}
    figures = Figures()
    async with lab.worker(name, **settings):
        await wait_for_worker(client, name)
        await timed_job(client, one)  # the first job of a key may wait for its parent
        for _ in range(repeats):
            timing, _ = await timed_job(client, one, watch_events=False)
            if timing.state != "success":
                raise RuntimeError(f"one-task job ended {timing.state}")
            figures.values.append(timing.terminal)
    return figures


async def one_task_figures(lab: Lab, client: Client, repeats: int) -> dict[str, Any]:
    """One-task jobs: run directly, through a warm worker and through a cold one."""
    direct = Figures()
    await lab.direct("one.yml", "local.ini")  # page cache and bytecode cache
    for _ in range(repeats):
        direct.values.append(await lab.direct("one.yml", "local.ini"))
    warm = await one_task(lab, client, "w-warm", repeats)
    cold = await one_task(lab, client, "w-cold", repeats, warm_start=False)
    figures = {
        "direct_s": direct.summary(),
        "warm_worker_s": warm.summary(),
        "cold_worker_s": cold.summary(),
        "warm_ratio": round(warm.median / direct.median, 4),
        "cold_ratio": round(cold.median / direct.median, 4),
    }
    print("  one-task jobs done", file=sys.stderr)
    return figures


async def throughput_figures(lab: Lab, client: Client, one: dict[str, Any], jobs_in_all: int) -> dict[str, Any]:
    """Jobs a minute through the worker and run directly, at concurrency 1 and 2."""
    figures: dict[str, Any] = {}
    for concurrency in (1, 2):
        through_worker = through_direct = 0.0
        part = max(1, jobs_in_all // 2)
        async with lab.worker(f"w-c{concurrency}", concurrency=concurrency):
            await wait_for_worker(client, f"w-c{concurrency}")
            await run_many(client, one, 1)
            for _ in range(2):
                through_direct += await direct_many(lab, part, concurrency)
                through_worker += await run_many(client, one, part)
        jobs = part * 2
        worker_rate, direct_rate = jobs / through_worker * 60, jobs / through_direct * 60
        figures[f"concurrency_{concurrency}"] = {
            "jobs": jobs,
            "worker_jobs_per_min": round(worker_rate, 1),
            "direct_jobs_per_min": round(direct_rate, 1),
            "ratio": round(worker_rate / direct_rate, 4),
        }
        print(f"  throughput at concurrency {concurrency} done", file=sys.stderr)
    return figures


async def event_heavy_figures(lab: Lab, client: Client, repeats: int) -> dict[str, Any]:
    """The fifty-host, forty-task playbook: directly, through a warm worker and through a cold one."""
    heavy = {"playbook": "heavy.yml", "inventory": "fifty.ini", "forks": 10}
    direct, warm_heavy, cold_heavy = Figures(), Figures(), Figures()
    for measured, name, settings in (
        (warm_heavy, "w-heavy-warm", {}),
        (cold_heavy, "w-heavy-cold", {"warm_start": False}),
    ):
        async with lab.worker(name, events_per_second=100_000, **settings):
            await wait_for_worker(client, name)
            for _ in range(repeats):
                direct.values.append(await lab.direct("heavy.yml", "fifty.ini", forks=10))
                timing, _ = await timed_job(client, heavy, watch_events=False)
                if timing.state != "success":
                    raise RuntimeError(f"heavy job ended {timing.state}")
                measured.values.append(timing.terminal)
    figures = {
        "hosts": 50,
        "tasks": 40,
        "direct_s": direct.summary(),
        "warm_worker_s": warm_heavy.summary(),
        "cold_worker_s": cold_heavy.summary(),
        "warm_ratio": round(warm_heavy.median / direct.median, 4),
        "warm_vs_cold": round(warm_heavy.median / cold_heavy.median, 4),
    }
    print("  event-heavy jobs done", file=sys.stderr)
    return figures


async def memory_figures(lab: Lab, client: Client, one: dict[str, Any]) -> dict[str, Any]:
    """The resident memory of the worker and of its warm parents with the pool full."""
    # Memory with the pool full: a second configuration (a changed ansible.cfg) gives a second parent.
    config = lab.playbooks / "ansible.cfg"
    async with lab.worker("w-memory", warm_pool_size=2) as process:
        await wait_for_worker(client, "w-memory")
        await run_many(client, one, 1)
        config.write_text("[defaults]\nforks = 4\n")
        await run_many(client, one, 1)
        parents = warm_parents_of(process.pid)
        parent_kib = [rss_kib(pid) for pid in parents]
        worker_kib = rss_kib(process.pid)
    config.unlink()
    figures = {
        "warm_parents": len(parents),
        "warm_parent_rss_mb": [round(kib / 1024, 1) for kib in parent_kib],
        "worker_rss_mb": round(worker_kib / 1024, 1),
        "worker_total_with_pool_mb": round((worker_kib + sum(parent_kib)) / 1024, 1),
    }
    print("  memory done", file=sys.stderr)
    return figures


async def bench(lab: Lab, scale: dict[str, int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    target = target_from_url(f"mqtt://127.0.0.1:{lab.port}", group=GROUP)
    one = {"playbook": "one.yml", "inventory": "local.ini"}
    async with open_client(target) as client:
        results["one_task"] = await one_task_figures(lab, client, scale["repeats"])
        results["throughput"] = await throughput_figures(lab, client, one, scale["jobs"])
        results["event_heavy"] = await event_heavy_figures(lab, client, scale["heavy_repeats"])
        results["memory"] = await memory_figures(lab, client, one)
    return results


def main() -> int:
    return lab_main(
        bench,
        name="bench_warm",
        description=__doc__,
        quick={"repeats": 5, "jobs": 10, "heavy_repeats": 1},
        full={"repeats": 15, "jobs": 40, "heavy_repeats": 3},
        targets=TARGETS,
    )


if __name__ == "__main__":
    raise SystemExit(main())
