"""Measure what a worker adds to running ansible-playbook, side by side with running it directly.

Starts its own Mosquitto on a free loopback port and real `ansible-worker run` processes,
runs each scenario both ways in the same run, prints one table and writes a JSON file.
See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ansible_worker import __version__
from ansible_worker.controller.client import Client, open_client, target_from_url

BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = str(BIN / "ansible-playbook")
TERMINAL = {"success", "failed", "cancelled", "timeout"}
GROUP = "bench"

ONE_TASK = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: One task
      ansible.builtin.debug:
        msg: hello
"""

FAKE_ANSIBLE = """\
#!{python}
# Stands in for ansible-playbook: writes {events} events and a stats event, then exits.
import json, os, time
fd = os.open(os.environ["ANSIBLE_WORKER_EVENT_FIFO"], os.O_WRONLY)
lines = [json.dumps({{"event": "playbook_on_play_start", "play": "p", "time": time.time()}})]
for index in range({events}):
    lines.append(json.dumps({{"event": "runner_on_ok", "task": "t%d" % index, "host": "h", "time": time.time()}}))
lines.append(json.dumps({{"event": "playbook_on_stats", "hosts": {{"h": {{"ok": {events}}}}}}}))
os.write(fd, ("\\n".join(lines) + "\\n").encode())
"""


def heavy_playbook(tasks: int) -> str:
    steps = "".join(
        f"    - name: Step {index}\n      ansible.builtin.debug:\n"
        f"        msg: step {index} on {{{{ inventory_hostname }}}}\n"
        for index in range(tasks)
    )
    return f"- hosts: all\n  gather_facts: false\n  tasks:\n{steps}"


@dataclass
class Figures:
    """Repeated measurements of one quantity."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def summary(self, scale: float = 1.0) -> dict[str, float]:
        return {
            "median": round(self.median * scale, 3),
            "min": round(min(self.values) * scale, 3),
            "max": round(max(self.values) * scale, 3),
            "n": len(self.values),
        }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Lab:
    """A scratch directory with a broker, playbooks and worker processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.playbooks = root / "playbooks"
        self.playbooks.mkdir()
        (self.playbooks / "one.yml").write_text(ONE_TASK)
        (self.playbooks / "local.ini").write_text(
            'localhost ansible_connection=local ansible_python_interpreter="{{ ansible_playbook_python }}"\n'
        )
        hosts = "".join(f"host{index:02d}\n" for index in range(50))
        (self.playbooks / "fifty.ini").write_text(
            f"[fleet]\n{hosts}\n[fleet:vars]\nansible_connection=local\n"
            'ansible_python_interpreter="{{ ansible_playbook_python }}"\n'
        )
        (self.playbooks / "heavy.yml").write_text(heavy_playbook(40))
        self.broker: subprocess.Popen[bytes] | None = None

    def start_broker(self) -> None:
        config = self.root / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
            "max_queued_messages 100000\n" + ("user root\n" if os.geteuid() == 0 else "")
        )
        executable = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.broker = subprocess.Popen([executable, "-c", str(config)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.terminate()
            self.broker.wait(timeout=10)

    @asynccontextmanager
    async def worker(self, name: str, **settings: Any) -> AsyncIterator[trio.Process]:
        worker = {
            "group_name": GROUP,
            "worker_id": name,
            "playbook_directory": str(self.playbooks),
            "ansible_playbook_path": ANSIBLE_PLAYBOOK,
            "max_queue_size": 5000,
            **settings,
        }
        config = self.root / f"{name}.json"
        # YAML is a superset of JSON: a JSON config file is a valid config file.
        mqtt = {"host": "127.0.0.1", "port": self.port}
        config.write_text(json.dumps({"mqtt": mqtt, "worker": worker, "log_level": "WARNING"}))
        with (self.root / f"{name}.log").open("wb") as log:
            command = [str(BIN / "ansible-worker"), "run", "-c", str(config)]
            process = await trio.lowlevel.open_process(command, stdout=log, stderr=log)
            try:
                yield process
            finally:
                process.terminate()
                with trio.CancelScope(shield=True), trio.fail_after(30):
                    await process.wait()

    async def direct(self, playbook: str, inventory: str, *, forks: int = 5) -> float:
        start = time.perf_counter()
        await trio.run_process(
            [ANSIBLE_PLAYBOOK, "-i", inventory, f"--forks={forks}", playbook],
            cwd=self.playbooks,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return time.perf_counter() - start


async def wait_for_worker(client: Client, name: str) -> None:
    with trio.fail_after(30):
        await client.wait_for_worker(name)


@dataclass
class JobTiming:
    running: float
    first_event: float
    terminal: float
    state: str


async def timed_job(client: Client, job: dict[str, Any], *, watch_events: bool = True) -> tuple[JobTiming, list[float]]:
    """Publish one job; seconds from publish to running, first event and terminal status.

    Also the delays from each event's emission inside Ansible to its arrival here. Without
    `watch_events` only the status is followed, as a controller that waits for a result
    does; the worker publishes its events all the same.
    """
    task_id = f"b-{uuid.uuid4().hex[:10]}"
    handle = await client.follow(task_id, events=watch_events)
    delays: list[float] = []
    async with handle:
        start = time.perf_counter()
        await client.link.publish(client.topics.tasks, json.dumps({"task_id": task_id, **job}).encode(), qos=2)
        running = first_event = terminal = float("nan")
        state = "?"
        async for update in handle.updates():
            now = time.perf_counter() - start
            if update.kind == "event":
                if first_event != first_event:
                    first_event = now
                emitted = update.data.get("time")
                if isinstance(emitted, str):
                    delays.append(time.time() - _epoch(emitted))
            elif update.data["state"] == "running" and running != running:
                running = now
            elif update.data["state"] in TERMINAL:
                terminal, state = now, update.data["state"]
    return JobTiming(running, first_event, terminal, state), delays


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def run_many(client: Client, job: dict[str, Any], count: int) -> float:
    """Publish `count` jobs at once; seconds until the last one's terminal status."""
    receive = await client.subscribe([f"{client.topics.tasks}/+/status"])
    ids = {f"t-{uuid.uuid4().hex[:10]}" for _ in range(count)}
    done: set[str] = set()
    start = time.perf_counter()
    for task_id in ids:
        await client.link.publish(client.topics.tasks, json.dumps({"task_id": task_id, **job}).encode(), qos=2)
    async for message in receive:
        status = json.loads(message.payload or b"{}")
        if status.get("task_id") in ids and status.get("state") in TERMINAL:
            if status["state"] != "success":
                raise RuntimeError(f"job {status['task_id']} ended {status['state']}: {status.get('error_message')}")
            done.add(status["task_id"])
            if len(done) == count:
                break
    elapsed = time.perf_counter() - start
    await client.unsubscribe([f"{client.topics.tasks}/+/status"], receive)
    return elapsed


async def direct_many(lab: Lab, count: int, parallel: int) -> float:
    start = time.perf_counter()
    # The way people run a batch in parallel by hand: one line per run, xargs -P.
    await trio.run_process(
        ["xargs", "-P", str(parallel), "-I{}", ANSIBLE_PLAYBOOK, "-i", "local.ini", "one.yml"],
        stdin="".join(f"{index}\n" for index in range(count)).encode(),
        cwd=lab.playbooks,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


async def bench(lab: Lab, scale: dict[str, int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    target = target_from_url(f"mqtt://127.0.0.1:{lab.port}", group=GROUP)
    one = {"playbook": "one.yml", "inventory": "local.ini"}
    async with open_client(target) as client:
        # 1 and 2: overhead per job and start latency, alternating direct and worker runs.
        async with lab.worker("w-single"):
            await wait_for_worker(client, "w-single")
            await timed_job(client, one)  # warm the page cache and Python's bytecode cache
            await lab.direct("one.yml", "local.ini")
            direct, worker, running, first_event = Figures(), Figures(), Figures(), Figures()
            for _ in range(scale["repeats"]):
                direct.values.append(await lab.direct("one.yml", "local.ini"))
                timing, _ = await timed_job(client, one)
                worker.values.append(timing.terminal)
                running.values.append(timing.running)
                first_event.values.append(timing.first_event)
            results["overhead"] = {
                "direct_s": direct.summary(),
                "worker_s": worker.summary(),
                "ratio": round(worker.median / direct.median, 4),
                "added_ms": round((worker.median - direct.median) * 1000, 1),
            }
            results["latency"] = {"running_ms": running.summary(1000), "first_event_ms": first_event.summary(1000)}
            print("  overhead and latency done", file=sys.stderr)

        # 3: throughput, in four interleaved quarters so that drift in the machine's speed
        # falls on both sides alike.
        results["throughput"] = {}
        for concurrency in (1, 2):
            through_worker = through_direct = 0.0
            part = scale["jobs"] // 4
            async with lab.worker(f"w-c{concurrency}", concurrency=concurrency):
                await wait_for_worker(client, f"w-c{concurrency}")
                for _ in range(4):
                    through_direct += await direct_many(lab, part, concurrency)
                    through_worker += await run_many(client, one, part)
            per_minute_worker = scale["jobs"] / through_worker * 60
            per_minute_direct = scale["jobs"] / through_direct * 60
            results["throughput"][f"concurrency_{concurrency}"] = {
                "jobs": scale["jobs"],
                "worker_jobs_per_min": round(per_minute_worker, 1),
                "direct_jobs_per_min": round(per_minute_direct, 1),
                "ratio": round(per_minute_worker / per_minute_direct, 4),
            }
            print(f"  throughput at concurrency {concurrency} done", file=sys.stderr)

        # 4: event-heavy jobs.
        heavy = {"playbook": "heavy.yml", "inventory": "fifty.ini", "forks": 10}
        async with lab.worker("w-heavy", events_per_second=100_000):
            await wait_for_worker(client, "w-heavy")
            direct, worker, delays = Figures(), Figures(), Figures()
            for _ in range(scale["heavy_repeats"]):
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
            results["event_heavy"] = {
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
            results["pipeline"] = {
                "jobs": scale["pipeline_jobs"],
                "events_per_job": 102,
                "jobs_per_s": round(scale["pipeline_jobs"] / elapsed, 1),
                "events_per_s": round(events / elapsed, 0),
            }
            results["memory"] = {
                "after_burst_of_jobs_mb": round(peak / 1024, 1),
                "idle_mb": round(idle / 1024, 1),
                "warm_up_jobs": scale["warm_up_jobs"],
                "after_warm_up_mb": round(after_warm / 1024, 1),
                "after_jobs_mb": round(after / 1024, 1),
                "jobs": scale["pipeline_jobs"],
                "growth_mb_per_1000_jobs": round((after - after_warm) / 1024 * 1000 / scale["pipeline_jobs"], 2),
            }
            print("  pipeline and memory done", file=sys.stderr)
    return results


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mosquitto = subprocess.run(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[0]
    ansible = subprocess.run([ANSIBLE_PLAYBOOK, "--version"], capture_output=True, text=True, check=True)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "ansible": ansible.stdout.splitlines()[0],
        "mosquitto": mosquitto,
        "ansible_worker": __version__,
    }


TARGETS = {
    "overhead": "<= 3% or 20 ms",
    "running": "<= 10 ms",
    "throughput": ">= 97% of direct",
    "event_heavy": "<= 1.10",
    "idle": "<= 45 MB",
    "growth": "<= 5 MB / 1000 jobs",
}


def table(results: dict[str, Any]) -> str:
    overhead, latency = results["overhead"], results["latency"]
    rows = [
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
    heavy = results["event_heavy"]
    rows += [
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
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ansible-worker-bench-") as scratch:
        lab = Lab(Path(scratch))
        lab.start_broker()
        try:
            results = trio.run(bench, lab, scale)
        finally:
            lab.stop_broker()
    report = {
        "machine": machine(),
        "quick": args.quick,
        "duration_s": round(time.perf_counter() - started, 1),
        "targets": TARGETS,
        "results": results,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    info = report["machine"]
    print(f"\n{info['cpu']}, {info['cores']} cores, Python {info['python']}, {info['ansible']}, {info['mosquitto']}")
    print(table(results))
    print(f"\n{report['duration_s']:.0f}s; written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
