"""Soak: three workers, many short jobs, workers restarted at random; count losses and duplicates.

Starts its own Mosquitto and three `ansible-worker run` processes, each with its own
`state_dir`, publishes jobs at a steady rate while one worker at a time is restarted at
random (SIGTERM, the way a rolling update stops it; with --kill, sometimes SIGKILL), then
waits for every job's terminal status. Jobs run a stand-in ansible-playbook that writes a
few events and exits after a random pause up to 0.3 s: the soak is about the workers'
bookkeeping, and real Ansible would make 1,000 jobs take half an hour on two cores.

With --broker-restarts, Mosquitto itself is restarted at random too (SIGTERM, then started
again on the same port with the same persistence file, so retained statuses survive as on
a production broker), and jobs come from clients that publish a job again when no worker
answers it (`Client.submit`), reconnecting after each restart.

With --lose, a worker is now and then lost for good instead: SIGKILL, its `state_dir`
deleted, and a new worker (a new worker_id, an empty `state_dir`) joins in its place, as a
Kubernetes Deployment replaces a pod on a dead node. The group takes the lost worker's jobs
over after `worker.lost_after` (4 s here): a job falsely reaped is one taken over from a
worker that was never lost.

A job is lost when no terminal status of it arrived; duplicated when it got more than one
distinct terminal status, or when the stand-in ran for it more than once (each run
appends the job's task_id to a file).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ansible_worker.controller.client import Client, NoWorkerAnswered, open_client, target_from_url

sys.path.insert(0, str(Path(__file__).parent))
from lab import BIN, GROUP, TERMINAL, Lab, rss_kib, wait_for_worker

from testing.broker import Broker

STAND_IN = """\
#!{python}
import json, os, random, re, sys, time
for argument in sys.argv:
    if argument.startswith("--extra-vars=@"):
        with open(argument.split("@", 1)[1]) as extra_vars:
            marker = re.search(r'"soak_marker": !unsafe "([^"]+)"', extra_vars.read())
        if marker:
            runs = os.open({runs!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(runs, (marker.group(1) + "\\n").encode())
            os.close(runs)
fd = os.open(os.environ["ANSIBLE_WORKER_EVENT_FIFO"], os.O_WRONLY)
def emit(event):
    os.write(fd, (json.dumps(event) + "\\n").encode())
emit({{"event": "playbook_on_play_start", "play": "soak"}})
time.sleep(random.random() * 0.3)
emit({{"event": "runner_on_ok", "task": "t", "host": "h", "changed": False}})
emit({{"event": "playbook_on_stats", "hosts": {{"h": {{"ok": 1}}}}}})
"""


class BrokerRestarts:
    """Restarts of the lab's broker, counted: SIGTERM (Mosquitto writes its persistence file), a pause, start."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.restarts = 0

    async def restart(self) -> None:
        # Shielded: the soak never ends with the broker stopped half-way.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(partial(self.broker.stop, timeout=30))
            await trio.sleep(random.uniform(0, 1))
            await trio.to_thread.run_sync(self.broker.start)
            self.restarts += 1


class Fleet:
    """Three worker processes that can be restarted on the same configuration."""

    def __init__(self, lab: Lab, stand_in: Path, count: int, *, lose: bool = False) -> None:
        self.lab = lab
        self.stand_in = stand_in
        # Losing workers: a short lost_after, so that the group takes their jobs over soon.
        self.liveness = {"heartbeat_interval": 1, "lost_after": LOST_AFTER} if lose else {}
        self.configs: dict[str, Path] = {}
        self.processes: dict[str, trio.Process] = {}
        self.lost: set[str] = set()
        self._next = count
        for index in range(count):
            self.add(f"soak-{index}")

    def add(self, name: str) -> None:
        """A worker's configuration, with a `state_dir` of its own."""
        lab, stand_in = self.lab, self.stand_in
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
            **self.liveness,
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

    async def lose(self, name: str) -> str:
        """Lose `name` for good (SIGKILL, its state_dir deleted); a new worker joins. Returns the new one's name."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        with trio.CancelScope(shield=True), trio.fail_after(30):
            await process.wait()
        shutil.rmtree(self.lab.root / f"state-{name}")
        del self.configs[name]
        self.lost.add(name)
        joining = f"soak-{self._next}"
        self._next += 1
        self.add(joining)
        await self.start(joining)
        return joining

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
    """Gather every terminal status; set `all_seen` once each expected job has one.

    Retained ones too: after a broker restart the client subscribes again, and a status
    published while it was away arrives retained. A copy of one already seen is not a new
    distinct status.
    """
    receive = await client.subscribe([f"{client.topics.tasks}/+/status"])
    task_status.started()
    async for message in receive:
        if message.payload:
            status = json.loads(message.payload)
            if status.get("state") in TERMINAL:
                seen.setdefault(status["task_id"], []).append(status)
                if expected <= seen.keys():
                    all_seen.set()


@dataclass
class Chaos:
    """What to break while jobs flow."""

    kill: bool = False
    # Workers lost for good (killed, state deleted) and replaced by new ones.
    lose: bool = False
    worker_restarts: bool = True
    broker: BrokerRestarts | None = None
    # Publishes per job allowed to the clients (None: the client's default within ANSWER_WITHIN).
    attempts: int | None = None


@dataclass
class Submissions:
    """What the retrying clients saw."""

    attempts: dict[str, int] = field(default_factory=dict)
    unanswered: list[str] = field(default_factory=list)


async def submit_with_retries(
    client: Client, job: dict[str, Any], submissions: Submissions, attempts: int | None
) -> None:
    try:
        handle = await client.submit(job, events=False, answer_within=ANSWER_WITHIN, attempts=attempts)
    except NoWorkerAnswered:
        submissions.unanswered.append(job["task_id"])
        return
    submissions.attempts[job["task_id"]] = handle.attempts
    await handle.close()


# The workers' worker.lost_after: short, so that the soak sees many takeovers.
LOST_AFTER = 4

# With broker restarts a client keeps publishing a job again for this long before it gives up.
ANSWER_WITHIN = 120.0


async def publish_jobs(
    senders: list[Client], ids: list[str], rate: float, chaos: Chaos, submissions: Submissions
) -> tuple[float, int]:
    """Publish a job for each of `ids` at `rate` a second; the seconds it took, and the broker restarts meanwhile.

    The first sender publishes alone, unless the broker restarts: then they take turns, each
    submitting with retries.
    """
    client = senders[0]
    started = time.monotonic()
    async with trio.open_nursery() as submitting:
        for index, task_id in enumerate(ids):
            job = {
                "task_id": task_id,
                "playbook": "one.yml",
                "inventory": "local.ini",
                "extra_vars": {"soak_marker": task_id},
            }
            if chaos.broker is not None:
                sender = senders[index % len(senders)]
                submitting.start_soon(submit_with_retries, sender, job, submissions, chaos.attempts)
            else:
                await client.link.publish(client.topics.tasks, json.dumps(job).encode(), qos=2)
            pause = started + (index + 1) / rate - time.monotonic()
            await trio.sleep_until(trio.current_time() + max(0.0, pause))
        published = time.monotonic() - started
        restarts_while_publishing = chaos.broker.restarts if chaos.broker is not None else 0
    return published, restarts_while_publishing


def tally(lab: Lab, ids: list[str], seen: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """What became of the jobs: terminal statuses seen, jobs lost, duplicated, run twice or never, final states."""
    distinct = {
        task_id: {(s["state"], s.get("completed_at"), s.get("worker_id")) for s in seen[task_id]} for task_id in seen
    }
    runs_file = lab.root / "runs"
    ran = Counter(runs_file.read_text().split()) if runs_file.exists() else Counter()
    twice = {task_id for task_id in ids if ran[task_id] > 1}
    return {
        "terminal_statuses_seen": sum(len(statuses) for statuses in seen.values()),
        "jobs_with_terminal_status": len(set(ids) & seen.keys()),
        "lost": len(set(ids) - seen.keys()),
        "duplicated": sum(1 for task_id in ids if len(distinct.get(task_id, ())) > 1 or task_id in twice),
        "ran_more_than_once": len(twice),
        "never_ran": sum(1 for task_id in ids if ran[task_id] == 0),
        "states": {state: sum(1 for t in ids if seen.get(t) and seen[t][-1]["state"] == state) for state in TERMINAL},
    }


async def restart_workers(fleet: Fleet, client: Client, chaos: Chaos, restarts: dict[str, int]) -> None:
    """Restart a random worker every few seconds, for ever: stopped, killed, or lost for good as `chaos` says."""
    while True:
        await trio.sleep(random.uniform(2, 5))
        name = random.choice(sorted(fleet.configs))
        if chaos.lose and random.random() < 0.3:
            restarts["lost"] += 1
            joining = await fleet.lose(name)
            await wait_for_worker(client, joining)
            # The group needs lost_after to take the jobs over; losing the next one sooner
            # would lose the survivor too, which the soak does not set out to test.
            await trio.sleep(LOST_AFTER)
            continue
        how = signal.SIGKILL if chaos.kill and random.random() < 0.3 else signal.SIGTERM
        restarts[how.name] += 1
        await fleet.stop(name, how)
        await fleet.start(name)
        await wait_for_worker(client, name)


async def soak(lab: Lab, fleet: Fleet, jobs: int, rate: float, chaos: Chaos) -> dict[str, Any]:
    seen: dict[str, list[dict[str, Any]]] = {}
    ids = [f"soak-{uuid.uuid4().hex[:10]}" for _ in range(jobs)]
    all_seen = trio.Event()
    restarts = {"SIGTERM": 0, "SIGKILL": 0, "lost": 0}
    submissions = Submissions()
    target = target_from_url(f"mqtt://127.0.0.1:{lab.port}", group=GROUP)
    async with AsyncExitStack() as stack:
        watcher = await stack.enter_async_context(open_client(target))
        client = await stack.enter_async_context(open_client(target))
        # Jobs come from several clients when the broker restarts: each reconnects on its own.
        senders = [client] + [await stack.enter_async_context(open_client(target)) for _ in range(2)]
        nursery = await stack.enter_async_context(trio.open_nursery())
        await nursery.start(collect, watcher, seen, set(ids), all_seen)
        for name in fleet.configs:
            await fleet.start(name)
            await wait_for_worker(client, name)
        memory_before = {name: rss_kib(process.pid) for name, process in fleet.processes.items()}

        async def restart_broker(broker: BrokerRestarts) -> None:
            while True:
                await trio.sleep(random.uniform(2, 5))
                await broker.restart()

        if chaos.worker_restarts:
            nursery.start_soon(restart_workers, fleet, client, chaos, restarts)
        if chaos.broker is not None:
            nursery.start_soon(restart_broker, chaos.broker)
        published, restarts_while_publishing = await publish_jobs(senders, ids, rate, chaos, submissions)
        # Whatever has not ended three minutes after the last publish counts as lost.
        with trio.move_on_after(180):
            await all_seen.wait()
        nursery.cancel_scope.cancel()
    memory_after = {name: _rss_or_none(process.pid) for name, process in fleet.processes.items()}
    taken_from = {task_id: _taken_over_from(seen.get(task_id, [])) for task_id in ids}
    report: dict[str, Any] = {
        "jobs_submitted": jobs,
        "publish_seconds": round(published, 1),
        **tally(lab, ids, seen),
        "restarts": restarts,
        "taken_over": sum(1 for worker in taken_from.values() if worker is not None),
        "falsely_reaped": sum(1 for worker in taken_from.values() if worker is not None and worker not in fleet.lost),
        "memory_kb_before": memory_before,
        "memory_kb_after": memory_after,
    }
    if chaos.broker is not None:
        report["broker_restarts"] = chaos.broker.restarts
        report["broker_restarts_while_publishing"] = restarts_while_publishing
        report["published_again"] = sum(count - 1 for count in submissions.attempts.values())
        report["jobs_published_again"] = sum(1 for count in submissions.attempts.values() if count > 1)
        report["unanswered"] = len(submissions.unanswered)
    return report


def _taken_over_from(statuses: list[dict[str, Any]]) -> str | None:
    """The lost worker a job was taken over from, by its terminal status, if it was."""
    for status in statuses:
        if status.get("taken_over_from"):
            return str(status["taken_over_from"])
        message = str(status.get("error_message") or "")
        if status.get("taken_over_by") and message.startswith("worker lost: "):
            return message.removeprefix("worker lost: ").split(" ", 1)[0]
    return None


def _rss_or_none(pid: int) -> int | None:
    """A worker's resident memory, or None if a restart at the very end left it not running."""
    try:
        return rss_kib(pid)
    except FileNotFoundError:
        return None


async def soak_fleet(lab: Lab, fleet: Fleet, jobs: int, rate: float, chaos: Chaos) -> dict[str, Any]:
    """`soak`, with every worker stopped afterwards whatever happened."""
    try:
        return await soak(lab, fleet, jobs, rate, chaos)
    finally:
        await fleet.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20, help="jobs published per second")
    parser.add_argument("--kill", action="store_true", help="restart with SIGKILL too, not only SIGTERM")
    parser.add_argument(
        "--lose", action="store_true", help="lose workers for good too (SIGKILL, state deleted) and add new ones"
    )
    parser.add_argument(
        "--broker-restarts",
        action="store_true",
        help="restart Mosquitto at random too (persistent); jobs come from clients that publish again",
    )
    parser.add_argument(
        "--worker-restarts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="restart workers at random (default: yes)",
    )
    parser.add_argument(
        "--attempts",
        type=int,
        help="with --broker-restarts: publishes per job at most (1: never again, to see what is lost without)",
    )
    args = parser.parse_args()
    # A client's notices (a job published again, a reconnect) would be thousands of lines.
    logging.getLogger("ansible_worker.controller.client").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="ansible-worker-soak-") as scratch:
        lab = Lab(Path(scratch), persistent=args.broker_restarts)
        stand_in = lab.root / "stand-in-ansible-playbook"
        stand_in.write_text(STAND_IN.format(python=sys.executable, runs=str(lab.root / "runs")))
        stand_in.chmod(0o755)
        fleet = Fleet(lab, stand_in, 3, lose=args.lose)
        chaos = Chaos(kill=args.kill, lose=args.lose, worker_restarts=args.worker_restarts, attempts=args.attempts)
        if args.broker_restarts:
            chaos.broker = BrokerRestarts(lab.broker)
        lab.broker.start()
        try:
            report = trio.run(soak_fleet, lab, fleet, args.jobs, args.rate, chaos)
        finally:
            lab.broker.stop(timeout=30)
    print(json.dumps(report, indent=2))
    return 0 if report["lost"] == 0 and report["duplicated"] == 0 and report["falsely_reaped"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
