"""The benchmarks' shared lab: a broker, playbooks, worker processes, and timed jobs, side by side with direct runs."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

# The checkout's top directory: what the benchmarks share with the tests (`testing`) is there.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ansible_worker import __version__
from ansible_worker.controller.client import Client
from testing.broker import MOSQUITTO, Broker

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


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Lab:
    """A scratch directory with a broker, playbooks and worker processes."""

    def __init__(self, root: Path, *, persistent: bool = False, max_queued: int = 100_000) -> None:
        self.root = root
        # Persistent: its retained messages survive a restart, as a production broker's do.
        persistence = root / "mosquitto-data" if persistent else None
        self.broker = Broker(root, f"max_queued_messages {max_queued}\n", persistence=persistence)
        self.port = self.broker.port
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

    def worker(self, name: str, **settings: Any) -> AbstractAsyncContextManager[trio.Process]:
        """An `ansible-worker run` process named `name` in the lab's group."""
        return self.worker_as([str(BIN / "ansible-worker"), "run"], name, **settings)

    @asynccontextmanager
    async def worker_as(self, command: list[str], name: str, **settings: Any) -> AsyncIterator[trio.Process]:
        """`command`, given `-c` and the config file of a worker named `name` in the lab's group."""
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
            argv = [*command, "-c", str(config)]
            process = await trio.lowlevel.open_process(argv, stdout=log, stderr=log)
            try:
                yield process
            finally:
                process.terminate()
                with trio.CancelScope(shield=True), trio.fail_after(30):
                    await process.wait()

    async def direct(self, playbook: str, inventory: str, *, forks: int = 5, verbosity: int = 0) -> float:
        start = time.perf_counter()
        verbose = [f"-{'v' * verbosity}"] if verbosity else []
        await trio.run_process(
            [ANSIBLE_PLAYBOOK, "-i", inventory, f"--forks={forks}", *verbose, playbook],
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


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, and the versions that ran."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mosquitto = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, check=False).stdout.splitlines()[0]
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


def run_in_lab(
    bench: Callable[[Lab, dict[str, int]], Awaitable[dict[str, Any]]],
    scale: dict[str, int],
    *,
    prefix: str,
    quick: bool,
    targets: Mapping[str, object],
) -> dict[str, Any]:
    """Run `bench` in a fresh lab with its own broker; the report: machine, duration, targets, results."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        lab = Lab(Path(scratch))
        lab.broker.start()
        try:
            results = trio.run(bench, lab, scale)
        finally:
            lab.broker.stop()
    return {
        "machine": machine(),
        "quick": quick,
        "duration_s": round(time.perf_counter() - started, 1),
        "targets": targets,
        "results": results,
    }


def lab_main(
    bench: Callable[[Lab, dict[str, int]], Awaitable[dict[str, Any]]],
    *,
    name: str,
    description: str | None,
    quick: dict[str, int],
    full: dict[str, int],
    targets: Mapping[str, object],
) -> int:
    """A benchmark's command line: `--quick` and `--output`; runs `bench` in a lab, prints and writes the report."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, for a quick look")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name(f"{name}.json"))
    args = parser.parse_args()
    scale = quick if args.quick else full
    report = run_in_lab(
        bench, scale, prefix=f"ansible-worker-{name.replace('_', '-')}-", quick=args.quick, targets=targets
    )
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["results"], indent=2))
    print(f"\n{report['duration_s']:.0f}s; written to {args.output}")
    return 0
