"""Measure what host locks cost per job: publish → `running`, with and without ansible-inventory.

Runs standalone (`python benchmarks/bench_locks.py [--quick]`): starts its own Mosquitto on a
free loopback port and one `ansible-worker run` process at a time, and times the same one-task
job under four settings: `worker.host_locks: false` (no lock at all), explicit `locks` (a lock
message and its echo, no ansible-inventory), host locks with the inventory's hosts cached
(each job after the first of an inventory), and host locks whose inventory changes before
every job (ansible-inventory runs each time). Prints the figures and writes bench_locks.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from lab import GROUP, Figures, Lab, run_in_lab, timed_job, wait_for_worker

from ansible_worker.controller.client import open_client, target_from_url

# What the figures should show: the cached case close to no locks, ansible-inventory's cost apart.
TARGETS = {"cached_extra_s_max": 0.25}


async def bench(lab: Lab, scale: dict[str, int]) -> dict[str, Any]:
    one: dict[str, Any] = {"playbook": "one.yml", "inventory": "local.ini"}
    inventory = lab.playbooks / "local.ini"
    original = inventory.read_text()
    figures = {name: Figures() for name in ("off", "explicit", "cached", "resolved")}
    target = target_from_url(f"mqtt://127.0.0.1:{lab.port}", group=GROUP)
    async with open_client(target) as client:
        for name, settings in (("off", {"host_locks": False}), ("on", {})):
            async with lab.worker(f"w-locks-{name}", **settings):
                await wait_for_worker(client, f"w-locks-{name}")
                await timed_job(client, one, watch_events=False)  # warm parent, caches
                for index in range(scale["repeats"]):
                    if name == "off":
                        cases = [("off", one)]
                    else:
                        cases = [("explicit", {**one, "locks": ["localhost"]}), ("cached", one)]
                    for case, job in cases:
                        timing, _ = await timed_job(client, job, watch_events=False)
                        figures[case].values.append(timing.running)
                    if name == "on":
                        # A changed inventory: its hosts are resolved again.
                        inventory.write_text(original + f"# {index}\n")
                        timing, _ = await timed_job(client, one, watch_events=False)
                        figures["resolved"].values.append(timing.running)
                        inventory.write_text(original)
        print("  lock jobs done", file=sys.stderr)
    off = figures["off"].median
    return {
        "publish_to_running_s": {name: figure.summary() for name, figure in figures.items()},
        "extra_s": {name: round(figure.median - off, 3) for name, figure in figures.items() if name != "off"},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, for a quick look")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("bench_locks.json"))
    args = parser.parse_args()
    scale = {"repeats": 5} if args.quick else {"repeats": 15}
    report = run_in_lab(bench, scale, prefix="ansible-worker-bench-locks-", quick=args.quick, targets=TARGETS)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["results"], indent=2))
    print(f"\n{report['duration_s']:.0f}s; written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
