"""Measure a chatty job: megabytes of Ansible output through the worker, against ansible-playbook run directly.

Runs standalone (`python benchmarks/bench_output.py [--quick]`): starts its own Mosquitto on a
free loopback port and one `ansible-worker run` process, and runs a playbook whose one task
prints `megabytes` MiB of output (a `-v` run of a verbose command does the same), through
the worker and directly, side by side in one run. The worker keeps only the newest part of
that output; the figure says whether reading it holds Ansible up. Writes bench_output.json.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from lab import GROUP, Figures, Lab, lab_main, timed_job, wait_for_worker

from ansible_worker.controller.client import open_client, target_from_url

# Through the worker, at most this many times as long as directly.
TARGETS = {"ratio_to_direct_max": 1.5}

CHATTY = """\
- name: Print a lot
  hosts: all
  gather_facts: false
  tasks:
    - name: Write {megabytes} MiB to Ansible's own output
      ansible.builtin.command: head -c {bytes} /dev/zero
      register: printed
    - name: Show it
      ansible.builtin.debug:
        msg: "{{{{ printed.stdout | length }}}} bytes"
        verbosity: 0
"""


async def bench(lab: Lab, scale: dict[str, int]) -> dict[str, Any]:
    megabytes = scale["megabytes"]
    playbook = CHATTY.format(megabytes=megabytes, bytes=megabytes * 1024 * 1024)
    (lab.playbooks / "chatty.yml").write_text(playbook)
    job: dict[str, Any] = {"playbook": "chatty.yml", "inventory": "local.ini", "verbosity": 1}
    worker, direct = Figures(), Figures()
    target = target_from_url(f"mqtt://127.0.0.1:{lab.port}", group=GROUP)
    async with open_client(target) as client, lab.worker("w-output"):
        await wait_for_worker(client, "w-output")
        await timed_job(client, job, watch_events=False)  # warm parent
        for _ in range(scale["repeats"]):
            timing, _ = await timed_job(client, job, watch_events=False)
            assert timing.state == "success", timing
            worker.values.append(timing.terminal)
            direct.values.append(await lab.direct("chatty.yml", "local.ini", verbosity=1))
    return {
        "megabytes": megabytes,
        "publish_to_terminal_s": worker.summary(),
        "ansible_playbook_direct_s": direct.summary(),
        "ratio_to_direct": round(worker.median / direct.median, 2),
    }


def main() -> int:
    return lab_main(
        bench,
        name="bench_output",
        description=__doc__,
        quick={"repeats": 3, "megabytes": 16},
        full={"repeats": 7, "megabytes": 32},
        targets=TARGETS,
    )


if __name__ == "__main__":
    raise SystemExit(main())
