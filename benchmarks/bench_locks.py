"""Measure what host locks cost per job: publish → `running`, with and without ansible-inventory.

Runs standalone (`python benchmarks/bench_locks.py [--quick]`): starts its own Mosquitto on a
free loopback port and one `ansible-worker run` process at a time, and times the same one-task
job under four settings: `worker.host_locks: false` (no lock at all), explicit `locks` (a lock
message and its echo, no ansible-inventory), host locks with the inventory's hosts cached
(each job after the first of an inventory), and host locks whose inventory changes before
every job (ansible-inventory runs each time). Prints the figures and writes bench_locks.json.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from lab import GROUP, Figures, Lab, lab_main, timed_job, wait_for_worker

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
    return lab_main(
        bench, name="bench_locks", description=__doc__, quick={"repeats": 5}, full={"repeats": 15}, targets=TARGETS
    )


if __name__ == "__main__":
    raise SystemExit(main())
