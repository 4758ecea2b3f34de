"""When a warm start goes wrong, a job is what a cold start of it would be.

A parent that does not answer, a temporary directory that cannot be made, a job that
crashes, configurations the parent refuses: each test runs jobs through one warm pool and
holds what the user sees to a cold run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.run.process.process_group import run_process_group
from ansible_worker.run.warm import parent as warm_parent
from tests.conftest import ANSIBLE_PLAYBOOK
from tests.run.warm_runs import Runs, base_environment, debug_tree, open_pool, playbook_script


async def test_a_parent_that_does_not_answer_means_a_cold_start_and_a_new_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The bound is what it is for; a shorter one keeps the test short.
    monkeypatch.setattr(warm_parent, "FORK_REPLY_SECONDS", 2.0)
    tree = debug_tree(tmp_path / "tree", "hello")
    runs = Runs(tmp_path, ANSIBLE_PLAYBOOK, tree, base_environment())
    metrics = WorkerMetrics()
    with caplog.at_level(logging.INFO, logger="ansible_worker.run.warm.pool"):
        async with open_pool(metrics) as pool:
            start = await runs.starter(pool)
            assert start is not run_process_group
            (wedged,) = pool._parents.values()
            assert wedged.pid is not None
            os.kill(wedged.pid, signal.SIGSTOP)
            try:
                warm = await runs.run(start)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(wedged.pid, signal.SIGCONT)
            cold = await runs.run()
            after = await runs.run(await runs.starter(pool))
            (replacement,) = pool._parents.values()
    assert cold[0] == 0, cold[1]
    assert warm == cold
    assert after == cold
    assert replacement.pid != wedged.pid
    assert (metrics.warm_starts, metrics.cold_starts) == (1, 1)
    assert any("cold start:" in r.getMessage() and "did not answer" in r.getMessage() for r in caplog.records)


async def test_a_local_temporary_directory_that_cannot_be_made_fails_as_a_cold_start_fails(tmp_path: Path) -> None:
    local = tmp_path / "local-tmp"
    local.mkdir()
    tree = debug_tree(tmp_path / "tree", "hello")
    runs = Runs(tmp_path, ANSIBLE_PLAYBOOK, tree, base_environment(ANSIBLE_LOCAL_TEMP=str(local)))
    metrics = WorkerMetrics()
    async with open_pool(metrics) as pool:
        start = await runs.starter(pool)
        assert start is not run_process_group
        # Replaced by a file after the parent started, as a full disk or a mistake would leave it.
        shutil.rmtree(local)
        local.write_text("not a directory\n")
        warm = await runs.run(start)
        cold = await runs.run()
    assert cold[0] == 5, cold[1]
    assert warm == cold


CRASH_FILTER = """
import os
import signal


def crash(_):
    os.kill(os.getpid(), signal.SIGSEGV)


class FilterModule:
    def filters(self):
        return {"crash": crash}
"""


def core_command(path: Path) -> bytes:
    """The name of the process a core file is of (its NT_PRPSINFO note)."""
    with path.open("rb") as core:
        header = core.read(64)
        assert header[:4] == b"\x7fELF"
        assert header[4] == 2, "a 64-bit core"
        order: Literal["little", "big"] = "little" if header[5] == 1 else "big"
        table, size, count = (
            int.from_bytes(header[32:40], order),
            int.from_bytes(header[54:56], order),
            int.from_bytes(header[56:58], order),
        )
        for index in range(count):
            core.seek(table + index * size)
            entry = core.read(size)
            if int.from_bytes(entry[0:4], order) != 4:  # PT_NOTE
                continue
            core.seek(int.from_bytes(entry[8:16], order))
            notes = core.read(int.from_bytes(entry[32:40], order))
            offset = 0
            while offset + 12 <= len(notes):
                name_size, desc_size, kind = (
                    int.from_bytes(notes[offset + i : offset + i + 4], order) for i in (0, 4, 8)
                )
                desc = offset + 12 + (name_size + 3) // 4 * 4
                if kind == 3:  # NT_PRPSINFO: pr_fname at 40, 16 bytes
                    return notes[desc + 40 : desc + 56].split(b"\0")[0]
                offset = desc + (desc_size + 3) // 4 * 4
    raise AssertionError(f"no process information in {path}")


@pytest.fixture
def core_dumps() -> Iterator[None]:
    """Core files allowed for the processes this test starts, as on a host that keeps them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|") or "/" in pattern or hard == 0:
        pytest.skip(f"core files are not written beside the process here ({pattern!r}, limit {hard})")
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


@pytest.mark.usefixtures("core_dumps")
async def test_a_crashing_job_leaves_the_core_file_a_cold_one_leaves(tmp_path: Path) -> None:
    metrics = WorkerMetrics()
    cores = {}
    async with open_pool(metrics) as pool:
        for how in ("warm", "cold"):
            tree = debug_tree(tmp_path / how, "hello", {"filter_plugins/crash.py": CRASH_FILTER})
            # Templated by Ansible's own process (a task's arguments would be by one of its workers).
            (tree / "pb.yml").write_text(
                (tree / "pb.yml").read_text().replace("hosts: all", "hosts: \"{{ 'all' | crash }}\"")
            )
            runs = Runs(tmp_path / f"{how}-runs", ANSIBLE_PLAYBOOK, tree, base_environment())
            runs.base.mkdir()
            start = await runs.starter(pool) if how == "warm" else run_process_group
            code, output = await runs.run(start)
            assert code == -signal.SIGSEGV, (how, output)
            cores[how] = sorted(core_command(path) for path in tree.iterdir() if path.name.startswith("core"))
    assert metrics.warm_starts == 1
    assert cores["cold"] == [b"ansible-playboo"]
    assert cores["warm"] == cores["cold"]


async def test_configurations_a_parent_refused_are_remembered_beyond_the_pool_size(tmp_path: Path) -> None:
    trees = [
        debug_tree(tmp_path / f"tree-{index}", "hello", {"ansible.cfg": "[defaults]\nlog_path = ./ansible.log\n"})
        for index in range(3)
    ]
    metrics = WorkerMetrics()
    async with open_pool(metrics, size=2) as pool:
        for index in (0, 1, 2, 0, 1, 2):
            runs = Runs(tmp_path, ANSIBLE_PLAYBOOK, trees[index], base_environment())
            assert await runs.starter(pool) is run_process_group
    # Each refused once: the later jobs start cold without another parent.
    assert metrics.warm_parents_started == 3
    assert metrics.cold_starts == 6


UUID_MODULE = """
import uuid

# What `uuid.getnode()` gives on a host with no network interface: a random node, kept.
uuid._node = uuid._random_getnode()
"""


async def test_a_random_node_of_uuid_is_drawn_again_for_each_job(tmp_path: Path) -> None:
    library = tmp_path / "library"
    library.mkdir()
    (library / "no_interface.py").write_text(UUID_MODULE)
    script = playbook_script(tmp_path, imports=("no_interface",))
    filters = "import uuid\n\n\nclass FilterModule:\n    def filters(self):\n        return {'node': lambda _: uuid.getnode()}\n"
    tree = debug_tree(tmp_path / "tree", "{{ 'x' | node }}", {"filter_plugins/node.py": filters})
    runs = Runs(tmp_path, script, tree, base_environment(PYTHONPATH=str(library), PYTHONDONTWRITEBYTECODE="1"))
    metrics = WorkerMetrics()
    async with open_pool(metrics) as pool:
        first = await runs.run(await runs.starter(pool))
        second = await runs.run(await runs.starter(pool))
    assert metrics.warm_starts == 2
    assert first[0] == second[0] == 0
    # Each cold start draws its own.
    assert first[1] != second[1]
