"""What a job's SSH credential costs, against real sshd hosts on loopback, side by side in one run.

1. A one-task job on one host: with `credentials: [deploy]` (a per-job ssh-agent) against the
   same job whose key is already in the worker's environment (`ANSIBLE_PRIVATE_KEY_FILE`).
2. The event-heavy playbook over SSH (5 hosts x 40 tasks): through the worker with the
   credential, against `ansible-playbook` run directly with the key.

Writes benchmarks/bench_ssh.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from lab import ANSIBLE_PLAYBOOK, GROUP, Lab, heavy_playbook, timed_job, wait_for_worker

from ansible_worker.controller.client import open_client, target_from_url
from testing.sshd import make_key, ssh_hosts


async def bench(lab: Lab, repeats: int) -> dict[str, Any]:
    key = lab.root / "deploy"
    public = make_key(key)
    async with ssh_hosts(lab.root / "hosts", [f"h{index}" for index in range(5)], [public]) as hosts:
        known_hosts = lab.root / "known_hosts"
        known_hosts.write_text("".join(f"{host.known_hosts_line}\n" for host in hosts))
        (lab.playbooks / "one-ssh.ini").write_text(hosts[0].inventory_line() + "\n")
        (lab.playbooks / "five-ssh.ini").write_text("".join(f"{host.inventory_line()}\n" for host in hosts))
        (lab.playbooks / "heavy.yml").write_text(heavy_playbook(40))
        common = {"known_hosts": str(known_hosts), "status_interval": 0.1}
        credential = {"deploy": {"type": "ssh", "private_key_file": str(key)}}
        job = {"playbook": "one.yml", "inventory": "one-ssh.ini"}
        target = target_from_url(f"mqtt://127.0.0.1:{lab.port}", group=GROUP)
        with_credential: list[float] = []
        in_environment: list[float] = []
        async with (
            lab.worker("with-credential", credentials=credential, **common),
            open_client(target) as client,
        ):
            await wait_for_worker(client, "with-credential")
            for _ in range(repeats):
                timing, _ = await timed_job(client, {**job, "credentials": ["deploy"]}, watch_events=False)
                assert timing.state == "success", timing
                with_credential.append(timing.terminal)
            heavy_worker: list[float] = []
            heavy_direct: list[float] = []
            for _ in range(2):
                # Interleaved with direct runs, so that both see the same machine.
                heavy, _ = await timed_job(
                    client,
                    {"playbook": "heavy.yml", "inventory": "five-ssh.ini", "credentials": ["deploy"]},
                    watch_events=False,
                )
                assert heavy.state == "success", heavy
                heavy_worker.append(heavy.terminal)
                heavy_direct.append(await _direct_heavy(lab, key, known_hosts))
        async with (
            lab.worker("key-in-env", environment={"ANSIBLE_PRIVATE_KEY_FILE": str(key)}, **common),
            open_client(target) as client,
        ):
            await wait_for_worker(client, "key-in-env")
            for _ in range(repeats):
                timing, _ = await timed_job(client, job, watch_events=False)
                assert timing.state == "success", timing
                in_environment.append(timing.terminal)
    added = statistics.median(with_credential) - statistics.median(in_environment)
    return {
        "credential_job_s": round(statistics.median(with_credential), 3),
        "key_in_environment_job_s": round(statistics.median(in_environment), 3),
        "credential_adds_ms": round(added * 1000, 1),
        "credential_target_ms": 30,
        "heavy_ssh_worker_s": round(min(heavy_worker), 2),
        "heavy_ssh_direct_s": round(min(heavy_direct), 2),
        "heavy_ssh_ratio": round(min(heavy_worker) / min(heavy_direct), 3),
        "heavy_ssh_target_ratio": 1.10,
        "repeats": repeats,
    }


async def _direct_heavy(lab: Lab, key: Path, known_hosts: Path) -> float:
    """The event-heavy playbook over SSH, run directly with the key; its wall time."""
    ssh_args = f"-C -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile={known_hosts}"
    env = {
        **os.environ,
        "ANSIBLE_PRIVATE_KEY_FILE": str(key),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_SSH_ARGS": f"{ssh_args} -o StrictHostKeyChecking=yes",
    }
    start = time.perf_counter()
    await trio.run_process(
        [ANSIBLE_PLAYBOOK, "-i", "five-ssh.ini", "heavy.yml"],
        cwd=lab.playbooks,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "bench_ssh.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ansible-worker-bench-ssh-") as scratch:
        lab = Lab(Path(scratch))
        lab.broker.start()
        try:
            results = trio.run(bench, lab, args.repeats)
        finally:
            lab.broker.stop()
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    for name, value in results.items():
        print(f"{name:28} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
