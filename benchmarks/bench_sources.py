"""Measure what each source of playbooks costs a job, side by side with the plain playbook directory.

Starts its own Mosquitto on a free loopback port and a real `ansible-worker run` process,
and in the same run measures: ansible-playbook run directly; a job from the plain playbook
directory; a job at a cached revision of a project; the first job at a new revision of a
repository of many files; a job shipping a tree of some megabytes, and a second job with the
same tree; and the worker's memory while a larger tree is shipped. Prints a table and writes
the figures into bench_sources.json beside this file.
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
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ansible_worker.controller.client import Client, open_client, target_from_url

sys.path.insert(0, str(Path(__file__).parent))
from lab import GROUP, TERMINAL, Lab, rss_kib

from ansible_worker.protocol.models import ShippedContent

ONE_TASK = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: One task
      ansible.builtin.debug:
        msg: hello
"""
INVENTORY = 'localhost ansible_connection=local ansible_python_interpreter="{{ ansible_playbook_python }}"\n'


def git(directory: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=b", "-c", "user.email=b@example.invalid", *args]
    return subprocess.run(command, cwd=directory, capture_output=True, text=True, check=True).stdout.strip()


def write_playbooks(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "one.yml").write_text(ONE_TASK)
    (directory / "local.ini").write_text(INVENTORY)


def repository(directory: Path, files: int) -> Path:
    """A git repository holding the playbooks and `files` small files."""
    write_playbooks(directory)
    filler = directory / "roles" / "filler" / "files"
    filler.mkdir(parents=True)
    for index in range(files):
        (filler / f"f{index:05d}.txt").write_text(f"file {index}\n" * 20)
    git(directory.parent, "init", "--quiet", "-b", "main", str(directory))
    git(directory, "add", ".")
    git(directory, "commit", "--quiet", "-m", "first")
    return directory


def new_commit(directory: Path) -> str:
    (directory / "version.txt").write_text(uuid.uuid4().hex)
    git(directory, "add", "version.txt")
    git(directory, "commit", "--quiet", "-m", "next")
    return git(directory, "rev-parse", "HEAD")


def tree_of(directory: Path, megabytes: int) -> Path:
    """The playbooks plus `megabytes` MB of incompressible data in 1 MB files."""
    write_playbooks(directory)
    data = directory / "files"
    data.mkdir()
    for index in range(megabytes):
        (data / f"blob{index:03d}.bin").write_bytes(os.urandom(1 << 20))
    return directory


@dataclass
class Timing:
    running: float
    first_event: float
    terminal: float


async def timed(client: Client, job: dict[str, Any], *, ship: Path | None = None) -> Timing:
    """One job from before it is shipped (if it is) and published to its running status, first event and end.

    Cancellation: the job is left to the worker; the handle stops following it.
    """
    task_id = f"b-{uuid.uuid4().hex[:10]}"
    handle = await client.follow(task_id, events=True)
    async with handle:
        start = time.perf_counter()
        request = {"task_id": task_id, **job}
        if ship is not None:
            from ansible_worker.controller.shipping import ship as ship_tree

            request["content"] = (await ship_tree(client, ship)).content
        await client.link.publish(client.topics.tasks, json.dumps(request).encode(), qos=2)
        running = first_event = float("nan")
        async for update in handle.updates():
            now = time.perf_counter() - start
            if update.kind == "event" and first_event != first_event:
                first_event = now
            elif update.kind == "status" and update.data["state"] == "running" and running != running:
                running = now
            elif update.kind == "status" and update.data["state"] in TERMINAL:
                if update.data["state"] != "success":
                    raise RuntimeError(f"bench job failed: {update.data.get('error_message')}")
                return Timing(running, first_event, now)
    raise RuntimeError("the job's updates ended early")


def _write(path: Path, data: bytes) -> None:
    # Synchronous: a file of a few megabytes, as the worker writes a part.
    path.write_bytes(data)


class LocalContent:
    """Hands the worker's source code an archive from memory: the stage figures leave the broker out."""

    def __init__(self) -> None:
        self.archives: dict[str, bytes] = {}

    async def fetch(self, content: ShippedContent, into: Path) -> None:
        """Write the archive stored for `content` into `into`.

        Cancellation: a plain checkpoint.
        """
        await trio.lowlevel.checkpoint()
        _write(into, self.archives[content.sha256])


async def stage_figures(root: Path, *, reps: int, small: Path, large: Path, shipped: Path) -> dict[str, Any]:
    """Milliseconds the worker spends making a job's tree ready, per source, measured in this process.

    The end-to-end figures vary by more than these stages on a loaded machine; these say
    what each source itself costs, with the plain directory's lookup as the baseline.

    Cancellation: a git command in flight is ended, a half-built tree removed.
    """
    import hashlib

    from ansible_worker.controller.shipping import pack_tree
    from ansible_worker.ops.config import WorkerSettings
    from ansible_worker.protocol.models import TaskRequest
    from ansible_worker.run.sources.job_sources import JobSources

    settings = WorkerSettings.model_validate(
        {
            "group_name": "stage",
            "playbook_directory": str(root / "playbooks"),
            "state_dir": str(root / "stage-state"),
            "allow_shipped_content": True,
            "projects": {
                "small": {"url": small.as_uri(), "allow_revision": True, "update_interval": 3600},
                "large": {"url": large.as_uri(), "allow_revision": True, "update_interval": 3600},
            },
        }
    )
    content = LocalContent()
    sources = JobSources(settings, environment=dict(os.environ), content=content)

    async def lease(fields: dict[str, Any]) -> float:
        request = TaskRequest.model_validate(
            {"task_id": "t", "playbook": "one.yml", "inventory": "local.ini", **fields}
        )
        start = time.perf_counter()
        async with sources.open_tree(request):
            return time.perf_counter() - start

    plain = [await lease({}) for _ in range(reps)]
    pinned = {"project": "small", "revision": git(small, "rev-parse", "HEAD")}
    await lease(pinned)
    cached = [await lease(pinned) for _ in range(reps)]
    fresh = [await lease({"project": "large", "revision": new_commit(large)}) for _ in range(reps)]
    first, again = [], []
    for _ in range(reps):
        (shipped / "nonce.txt").write_text(uuid.uuid4().hex)
        data, _ = pack_tree(shipped)
        digest = hashlib.sha256(data).hexdigest()
        content.archives[digest] = data
        job = {"content": {"sha256": digest, "size": len(data)}}
        first.append(await lease(job))
        again.append(await lease(job))
    return {
        "stage_plain_ms": median_ms(plain),
        "stage_cached_revision_ms": median_ms(cached),
        "stage_new_revision_ms": median_ms(fresh),
        "stage_ship_unpack_ms": median_ms(first),
        "stage_ship_again_ms": median_ms(again),
    }


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


async def ship_rounds(
    client: Client, job: dict[str, Any], shipped: Path, reps: int
) -> tuple[list[Timing], list[Timing]]:
    """Each round ships a new tree twice: the first time it is sent and unpacked, the second it is cached."""
    first_ship = []
    second_ship = []
    for _ in range(reps):
        # A new tree each time: one changed file gives a new digest.
        (shipped / "nonce.txt").write_text(uuid.uuid4().hex)
        first_ship.append(await timed(client, job, ship=shipped))
        second_ship.append(await timed(client, job, ship=shipped))
    return first_ship, second_ship


async def rss_while_shipping(pid: int, client: Client, job: dict[str, Any], big: Path) -> tuple[int, int]:
    """The worker's resident memory (KiB) before, and at its peak while it runs one job shipping `big`."""
    baseline = rss_kib(pid)
    peak = baseline
    async with trio.open_nursery() as nursery:

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_kib(pid))
                await trio.sleep(0.01)

        nursery.start_soon(sample)
        await timed(client, job, ship=big)
        nursery.cancel_scope.cancel()
    return baseline, peak


def job_figures(
    plain: list[Timing],
    cached: list[Timing],
    fresh: list[Timing],
    first_ship: list[Timing],
    second_ship: list[Timing],
    baseline: int,
    peak: int,
) -> dict[str, Any]:
    """The end-to-end figures: each kind of source against a plain job, and the worker's memory."""
    plain_end = median_ms([t.terminal for t in plain])
    plain_event = median_ms([t.first_event for t in plain])
    return {
        "plain_job_ms": plain_end,
        "plain_first_event_ms": plain_event,
        "cached_revision_ms": median_ms([t.terminal for t in cached]),
        "cached_revision_overhead_ms": round(median_ms([t.terminal for t in cached]) - plain_end, 1),
        "new_revision_ms": median_ms([t.terminal for t in fresh]),
        "new_revision_overhead_ms": round(median_ms([t.terminal for t in fresh]) - plain_end, 1),
        "ship_submit_to_running_ms": median_ms([t.running for t in first_ship]),
        "ship_first_event_overhead_ms": round(median_ms([t.first_event for t in first_ship]) - plain_event, 1),
        "ship_overhead_ms": round(median_ms([t.terminal for t in first_ship]) - plain_end, 1),
        "ship_again_overhead_ms": round(median_ms([t.terminal for t in second_ship]) - plain_end, 1),
        "worker_rss_before_kib": baseline,
        "worker_rss_peak_kib": peak,
        "worker_rss_growth_mb": round((peak - baseline) / 1024, 1),
    }


async def bench(root: Path, *, reps: int, files: int, ship_mb: int, memory_mb: int) -> dict[str, Any]:
    """Every figure of this benchmark, by name.

    Cancellation: the worker process and the broker are stopped on the way out.
    """
    lab = Lab(root)
    write_playbooks(lab.playbooks)
    lab.broker.start()
    results: dict[str, Any] = {"reps": reps, "files": files, "ship_mb": ship_mb, "memory_mb": memory_mb}
    try:
        small = repository(root / "small-repo", 0)
        large = repository(root / "large-repo", files)
        small_commit = git(small, "rev-parse", "HEAD")
        projects = {
            "small": {"url": small.as_uri(), "allow_revision": True, "update_interval": 3600},
            "large": {"url": large.as_uri(), "allow_revision": True, "update_interval": 3600},
        }
        shipped = tree_of(root / "ship", ship_mb)
        big = tree_of(root / "ship-big", memory_mb)
        results.update(await stage_figures(root, reps=reps, small=small, large=large, shipped=shipped))
        direct = [await lab.direct("one.yml", "local.ini") for _ in range(reps)]
        results["direct_ms"] = median_ms(direct)
        settings = {
            "projects": projects,
            "allow_shipped_content": True,
            "max_content_bytes": (memory_mb + 16) << 20,
        }
        target = target_from_url(f"mqtt://127.0.0.1:{lab.port}", group=GROUP)
        async with (
            lab.worker("bench-worker", state_dir=str(root / "state"), **settings) as process,
            open_client(target) as client,
        ):
            with trio.fail_after(30):
                await client.wait_for_worker("bench-worker")
            job = {"playbook": "one.yml", "inventory": "local.ini"}
            await timed(client, job)  # warm-up
            plain = [await timed(client, job) for _ in range(reps)]
            cached_job = {**job, "project": "small", "revision": small_commit}
            await timed(client, cached_job)  # fetches and makes the tree once
            cached = [await timed(client, cached_job) for _ in range(reps)]
            fresh = []
            for _ in range(reps):
                commit = new_commit(large)
                fresh.append(await timed(client, {**job, "project": "large", "revision": commit}))
            first_ship, second_ship = await ship_rounds(client, job, shipped, reps)
            baseline, peak = await rss_while_shipping(process.pid, client, job, big)
        results.update(job_figures(plain, cached, fresh, first_ship, second_ship, baseline, peak))
    finally:
        lab.broker.stop()
    return results


TABLE = [
    ("stage_plain_ms", "stage: the plain playbook directory (baseline)"),
    ("stage_cached_revision_ms", "stage: tree of a cached revision"),
    ("stage_new_revision_ms", "stage: fetch and snapshot a new revision of the many-file repository"),
    ("stage_ship_unpack_ms", "stage: check the digest and unpack the shipped tree"),
    ("stage_ship_again_ms", "stage: the same shipped tree again"),
    ("direct_ms", "ansible-playbook run directly"),
    ("plain_job_ms", "job from the plain playbook directory, publish to end"),
    ("cached_revision_overhead_ms", "a job at a cached revision: added"),
    ("new_revision_overhead_ms", "first job at a new revision of the many-file repository: added"),
    ("ship_submit_to_running_ms", "shipping the tree: submit (pack + send) to running"),
    ("ship_first_event_overhead_ms", "shipping the tree: submit to first event, added"),
    ("ship_overhead_ms", "shipping the tree: submit to end, added"),
    ("ship_again_overhead_ms", "a second job with the same tree: added"),
    ("worker_rss_growth_mb", "worker memory growth while the large tree is shipped (MB)"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="jobs per figure (median)")
    parser.add_argument("--files", type=int, default=1000, help="files in the repository for a new revision")
    parser.add_argument("--ship-mb", type=int, default=10, help="size of the shipped tree")
    parser.add_argument("--memory-mb", type=int, default=50, help="size of the tree shipped while memory is sampled")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sources-") as scratch:
        results = trio.run(
            lambda: bench(
                Path(scratch), reps=args.reps, files=args.files, ship_mb=args.ship_mb, memory_mb=args.memory_mb
            )
        )
    for key, label in TABLE:
        print(f"{label:<75} {results[key]:>9}")
    out = Path(__file__).with_name("bench_sources.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
