"""Jobs run through one warm pool and as fresh `ansible-playbook` processes, for tests that change what a job reads.

`Runs` runs the jobs of one test (one tree, one script, one environment) and returns what a
user sees of each: its exit code and its output, with what differs between any two runs
made general. The helpers build scripts and trees of the standard shape.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio

from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.run.argv import FIFO_VARIABLE, ansible_environment, child_environment
from ansible_worker.run.events.event_fifo import EventFifo
from ansible_worker.run.process.launch import ExitRecord, Launch, ProcessStarter
from ansible_worker.run.process.output_tail import OutputTail
from ansible_worker.run.process.process_group import run_process_group, run_with_output
from ansible_worker.run.warm.pool import Configuration, WarmPolicy, WarmPool
from tests.deployment import SYSTEM_PYTHON

# Durations and dates that differ between any two runs.
TIMINGS = re.compile(r"\d+\.\d+s|\d{4}-\d\d-\d\d[ T][\d:.]+|\(\d+:\d\d:\d\d\.\d+\)")
# The name of Ansible's local temporary directory: a process id and a random part.
LOCAL_TMP = re.compile(r"ansible-local-\d+[a-z0-9_]+")
INVENTORY = "localhost ansible_connection=local ansible_python_interpreter={python}\n"
SCRIPT = """#!{python}
import sys
{imports}from ansible.cli.playbook import main
if __name__ == "__main__":
    sys.exit(main())
"""
DEBUG_PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.debug:
        msg: "{expression}"
"""
PROBE = "{{ 'x' | probe }}"
PROBE_FILTER = """
def probe(_):
    try:
        import {module}
    except ImportError:
        return "{module} missing"
    return "{module} from " + {module}.WHERE


class FilterModule:
    def filters(self):
        return {{"probe": probe}}
"""


def playbook_script(directory: Path, *, python: str = sys.executable, imports: Sequence[str] = ()) -> str:
    """An `ansible-playbook` script of the standard shape, run by `python`, importing `imports` first.

    It gets a folder of its own (`bin`), which heads the path of the processes that run it.
    """
    (directory / "bin").mkdir()
    script = directory / "bin" / "ansible-playbook"
    lines = "".join(f"import {name}\n" for name in imports)
    script.write_text(SCRIPT.format(python=python, imports=lines))
    script.chmod(0o755)
    return str(script)


def debug_tree(root: Path, expression: str, files: Mapping[str, str] | None = None) -> Path:
    """A tree whose playbook `pb.yml` prints `expression` on localhost."""
    root.mkdir(parents=True)
    (root / "inv.ini").write_text(INVENTORY.format(python=sys.executable))
    (root / "pb.yml").write_text(DEBUG_PLAYBOOK.format(expression=expression))
    for relative, text in (files or {}).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def open_pool(metrics: WorkerMetrics, size: int = 2) -> AbstractAsyncContextManager[WarmPool]:
    policy = WarmPolicy(size=size, max_forks=100, max_rss_kib=1 << 20, start_timeout=60)
    return WarmPool(policy, metrics=metrics, late=(FIFO_VARIABLE,)).open()


class Runs:
    """Jobs of one test, each in a run directory of its own, with the environment it is given."""

    def __init__(self, base: Path, script: str, tree: Path, env: Mapping[str, str]) -> None:
        self.base = base
        self.script = script
        self.tree = tree
        self.env = dict(env)
        self.count = 0

    def _run_dir(self) -> Path:
        self.count += 1
        path = self.base / f"run-{self.count}"
        path.mkdir()
        return path

    async def starter(self, pool: WarmPool) -> ProcessStarter:
        """How the pool would start a job of this test now (`run_process_group`: cold)."""
        env = ansible_environment(self.env, self.base / "starter.fifo")
        return await pool.starter(Configuration(self.script, self.tree, env))

    async def run(
        self, start: ProcessStarter = run_process_group, args: Sequence[str] = ("-i", "inv.ini", "pb.yml")
    ) -> tuple[int, str]:
        """Exit code and output (timings and per-process names made general) of one job, started by `start`."""
        fifo = EventFifo(self._run_dir() / "events.fifo")
        tail = OutputTail(1 << 20)
        launch = Launch((self.script, *args), self.tree, ansible_environment(self.env, fifo.path), kill_grace=3)
        try:
            with trio.fail_after(120):
                code = await run_with_output(
                    launch,
                    tail=tail,
                    record=ExitRecord(),
                    side_reader=lambda exited: fifo.read_events(lambda event: None, exited=exited),
                    start=start,
                )
        finally:
            fifo.close()
        return code, LOCAL_TMP.sub("ansible-local-*", TIMINGS.sub("T", tail.text()))

    async def warm_and_cold(self, pool: WarmPool) -> tuple[tuple[int, str], tuple[int, str]]:
        """The next job started as the pool starts it, then the same job started cold."""
        warm = await self.run(await self.starter(pool))
        cold = await self.run()
        return warm, cold


async def wait_for_path(path: Path) -> None:
    with trio.fail_after(60):
        while not await trio.Path(path).exists():  # noqa: ASYNC110 - a file another process makes
            await trio.sleep(0.01)


def system_python() -> str:
    """The system Python, when it is the suite's version (it then runs the suite's packages)."""
    try:
        version = subprocess.run(
            [SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, check=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"no {SYSTEM_PYTHON}")
    if version != str(sys.version_info[:2]):
        pytest.skip(f"{SYSTEM_PYTHON} is Python {version}, the suite's is {sys.version_info[:2]}")
    return SYSTEM_PYTHON


def suite_packages(folder: Path) -> Path:
    """A folder with the suite's packages (links to them) for another interpreter's PYTHONPATH.

    Without certifi: a system Python's own .pth files may import it at start-up, and the
    suite's version registers an exit handler when asked where its bundle is (which a warm
    parent refuses). The system's own certifi serves them.
    """
    folder.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith("certifi") and not entry.name.endswith(".pth"):
            (folder / entry.name).symlink_to(entry)
    return folder


def base_environment(**extra: str) -> dict[str, str]:
    return {**child_environment(os.environ), **extra}
