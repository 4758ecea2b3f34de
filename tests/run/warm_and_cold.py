"""Run playbooks forked from a warm pool and as fresh `ansible-playbook` processes, side by side, and report both.

The pool belongs to the worker's process, so this runs where the worker runs: imported by a
test whose worker is the test process, or as a script under the worker's own Python and
user (`python warm_and_cold.py TREE RUN_DIRECTORY ANSIBLE_PLAYBOOK` prints the report as
JSON). It imports nothing but the worker's package and Trio.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import trio

from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.run.argv import FIFO_VARIABLE, ansible_environment, child_environment
from ansible_worker.run.events.event_fifo import EventFifo
from ansible_worker.run.process.launch import ExitRecord, Launch, ProcessStarter
from ansible_worker.run.process.output_tail import OutputTail
from ansible_worker.run.process.process_group import run_process_group, run_with_output
from ansible_worker.run.warm.pool import Configuration, WarmPolicy, WarmPool

# Durations and dates that differ between any two runs.
TIMINGS = re.compile(r"\d+\.\d+s|\d{4}-\d\d-\d\d[ T][\d:.]+|\(\d+:\d\d:\d\d\.\d+\)")

PLAYBOOKS = [
    ("recap.yml", "inventory.ini"),
    ("stats.yml", "inventory.ini"),
    ("fail.yml", "inventory.ini"),
    ("options.yml", "inventory.ini"),
    ("broken.yml", "inventory.ini"),
    ("quick.yml", "one_host.ini"),
    ("sleep.yml", "nowhere.ini"),
]

# (exit code, stdout without timings, [event, host] pairs) of one run.
Run = tuple[int, str, list[tuple[str, str | None]]]


async def run_once(
    playbook_dir: Path, playbook: str, inventory: str, start: ProcessStarter, run_dir: Path, executable: str
) -> Run:
    """Exit code, stdout without timings, and (event, host) pairs of one run, warm or cold."""
    fifo = EventFifo(run_dir / "events.fifo")
    env = ansible_environment(child_environment(os.environ), fifo.path)
    tail = OutputTail(1 << 20)
    events: list[dict[str, Any]] = []
    # One fork: with more, hosts finish in any order, in a cold run as in a warm one.
    argv = [executable, f"--inventory={playbook_dir / inventory}", "--forks=1", "--", str(playbook_dir / playbook)]
    try:
        with trio.fail_after(120):
            code = await run_with_output(
                Launch(tuple(argv), playbook_dir, env, kill_grace=3),
                tail=tail,
                record=ExitRecord(),
                side_reader=lambda exited: fifo.read_events(events.append, exited=exited),
                start=start,
            )
    finally:
        fifo.close()
    pairs = [(event["event"], event.get("host")) for event in events]
    return code, TIMINGS.sub("T", tail.text()), pairs


async def warm_and_cold(playbook_dir: Path, run_dir: Path, executable: str) -> dict[str, Any]:
    """Each of `PLAYBOOKS` warm, then cold; whether each started warm, and the pool's counts."""
    metrics = WorkerMetrics()
    env = ansible_environment(child_environment(os.environ), run_dir / "x.fifo")
    runs: list[dict[str, Any]] = []
    policy = WarmPolicy(size=2, max_forks=100, max_rss_kib=1 << 20, start_timeout=60)
    async with WarmPool(policy, metrics=metrics, late=(FIFO_VARIABLE,)).open() as pool:
        for index, (playbook, inventory) in enumerate(PLAYBOOKS):
            cold_starts = metrics.cold_starts
            start = await pool.starter(Configuration(executable, playbook_dir, env))
            started_warm = metrics.cold_starts == cold_starts
            warm_dir, cold_dir = run_dir / f"warm{index}", run_dir / f"cold{index}"
            warm_dir.mkdir()
            cold_dir.mkdir()
            warm = await run_once(playbook_dir, playbook, inventory, start, warm_dir, executable)
            cold = await run_once(playbook_dir, playbook, inventory, run_process_group, cold_dir, executable)
            runs.append({"playbook": playbook, "started_warm": started_warm, "warm": warm, "cold": cold})
    return {
        "runs": runs,
        "warm_starts": metrics.warm_starts,
        "warm_parents_started": metrics.warm_parents_started,
    }


if __name__ == "__main__":
    tree, runs, ansible_playbook = sys.argv[1:]
    print(json.dumps(trio.run(warm_and_cold, Path(tree), Path(runs), ansible_playbook)))
