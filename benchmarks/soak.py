"""Soak: three workers, many short jobs, workers restarted at random; count losses and duplicates.

Starts its own Mosquitto and three `ansible-worker run` processes, each with its own
`state_dir`, publishes jobs at a steady rate while one worker at a time is restarted at
random (SIGTERM, the way a rolling update stops it; with --kill, sometimes SIGKILL), then
waits for every job's terminal status. Jobs run a stand-in ansible-playbook that writes a
few events and exits after a random pause up to 0.3 s: the soak is about the workers'
bookkeeping, and real Ansible would make 1,000 jobs take half an hour on two cores.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from ansible_worker.client import Client, open_client, target_from_url

sys.path.insert(0, str(Path(__file__).parent))
from run import BIN, GROUP, Lab, rss_kib, wait_for_worker

TERMINAL = {"success", "failed", "cancelled", "timeout"}

STAND_IN = """\
#!{python}
import json, os, random, time
fd = os.open(os.environ["ANSIBLE_WORKER_EVENT_FIFO"], os.O_WRONLY)
def emit(event):
    os.write(fd, (json.dumps(event) + "\\n").encode())
emit({{"event": "playbook_on_play_start", "play": "soak"}})
time.sleep(random.random() * 0.3)
emit({{"event": "runner_on_ok", "task": "t", "host": "h", "changed": False}})
emit({{"event": "playbook_on_stats", "hosts": {{"h": {{"ok": 1}}}}}})
"""


class Fleet:
    """Three worker processes that can be restarted on the same configuration."""

    def __init__(self, lab: Lab, stand_in: Path, count: int) -> None:
        self.lab = lab
        self.configs: dict[str, Path] = {}
        self.processes: dict[str, trio.Process] = {}
        for index in range(count):
            name = f"soak-{index}"
            state = lab.root / f"state-{name}"
            state.mkdir()
            worker = {
                "group_name": GROUP,
                "worker_id": name,
                "playbook_directory": str(lab.playbooks),
                "ansible_playbook_path": str(stand_in),
                "concurrency": 2,
                "max_queue_size": 5000,
                "drain_timeout": 5,
                "kill_grace": 2,
                "state_dir": str(state),
            }
            config = lab.root / f"{name}.json"
            mqtt = {"host": "127.0.0.1", "port": lab.port, "keepalive": 5}
            config.write_text(json.dumps({"mqtt": mqtt, "worker": worker, "log_level": "WARNING"}))
            self.configs[name] = config

    async def start(self, name: str) -> None:
        with (self.lab.root / f"{name}.log").open("ab") as log:
            command = [str(BIN / "ansible-worker"), "run", "-c", str(self.configs[name])]
            self.processes[name] = await trio.lowlevel.open_process(command, stdout=log, stderr=log)

    async def stop(self, name: str, how: signal.Signals) -> None:
        process = self.processes[name]
        process.send_signal(how)
        # A stopping worker drains: drain_timeout plus kill_grace plus its margins.
        with trio.CancelScope(shield=True), trio.fail_after(60):
            await process.wait()

    async def stop_all(self) -> None:
        for name, process in self.processes.items():
            if process.returncode is None:
                await self.stop(name, signal.SIGTERM)


async def collect(
    client: Client,
    seen: dict[str, list[dict[str, Any]]],
    expected: set[str],
    all_seen: trio.Event,
    *,
    task_status: trio.TaskStatus[None],
) -> None:
    """Gather every terminal status; set `all_seen` once each expected job has one."""
    receive = await client.subscribe([f"{client.topics.tasks}/+/status"])
    task_status.started()
    async for message in receive:
        if message.payload and not message.retain:
            status = json.loads(message.payload)
            if status.get("state") in TERMINAL:
                seen.setdefault(status["task_id"], []).append(status)
                if expected <= seen.keys():
                    all_seen.set()


async def soak(lab: Lab, fleet: Fleet, jobs: int, rate: float, kill: bool) -> dict[str, Any]:
    seen: dict[str, list[dict[str, Any]]] = {}
    ids = [f"soak-{uuid.uuid4().hex[:10]}" for _ in range(jobs)]
    all_seen = trio.Event()
    restarts = {"SIGTERM": 0, "SIGKILL": 0}
    target = target_from_url(f"mqtt://127.0.0.1:{lab.port}", group=GROUP)
    async with open_client(target) as watcher, open_client(target) as client, trio.open_nursery() as nursery:
        await nursery.start(collect, watcher, seen, set(ids), all_seen)
        for name in fleet.configs:
            await fleet.start(name)
            await wait_for_worker(client, name)
        memory_before = {name: rss_kib(process.pid) for name, process in fleet.processes.items()}

        async def chaos() -> None:
            while True:
                await trio.sleep(random.uniform(2, 5))
                name = random.choice(sorted(fleet.configs))
                how = signal.SIGKILL if kill and random.random() < 0.3 else signal.SIGTERM
                restarts[how.name] += 1
                await fleet.stop(name, how)
                await fleet.start(name)
                await wait_for_worker(client, name)

        nursery.start_soon(chaos)
        started = time.monotonic()
        for index, task_id in enumerate(ids):
            job = {"task_id": task_id, "playbook": "one.yml", "inventory": "local.ini"}
            await client.link.publish(client.topics.tasks, json.dumps(job).encode(), qos=2)
            await trio.sleep_until(trio.current_time() + max(0.0, started + (index + 1) / rate - time.monotonic()))
        published = time.monotonic() - started
        # Whatever has not ended three minutes after the last publish counts as lost.
        with trio.move_on_after(180):
            await all_seen.wait()
        nursery.cancel_scope.cancel()
    memory_after = {name: rss_kib(process.pid) for name, process in fleet.processes.items()}
    distinct = {
        task_id: {(s["state"], s.get("completed_at"), s.get("worker_id")) for s in seen[task_id]} for task_id in seen
    }
    return {
        "jobs_submitted": jobs,
        "publish_seconds": round(published, 1),
        "terminal_statuses_seen": sum(len(statuses) for statuses in seen.values()),
        "jobs_with_terminal_status": len(set(ids) & seen.keys()),
        "lost": len(set(ids) - seen.keys()),
        "duplicated": sum(1 for task_id in ids if len(distinct.get(task_id, ())) > 1),
        "states": {state: sum(1 for t in ids if seen.get(t) and seen[t][-1]["state"] == state) for state in TERMINAL},
        "restarts": restarts,
        "memory_kb_before": memory_before,
        "memory_kb_after": memory_after,
    }


async def soak_fleet(lab: Lab, fleet: Fleet, jobs: int, rate: float, kill: bool) -> dict[str, Any]:
    """`soak`, with every worker stopped afterwards whatever happened."""
    try:
        return await soak(lab, fleet, jobs, rate, kill)
    finally:
        await fleet.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20, help="jobs published per second")
    parser.add_argument("--kill", action="store_true", help="restart with SIGKILL too, not only SIGTERM")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ansible-worker-soak-") as scratch:
        lab = Lab(Path(scratch))
        stand_in = lab.root / "stand-in-ansible-playbook"
        stand_in.write_text(STAND_IN.format(python=sys.executable))
        stand_in.chmod(0o755)
        fleet = Fleet(lab, stand_in, 3)
        lab.start_broker()
        try:
            report = trio.run(soak_fleet, lab, fleet, args.jobs, args.rate, args.kill)
        finally:
            lab.stop_broker()
    print(json.dumps(report, indent=2))
    return 0 if report["lost"] == 0 and report["duplicated"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
