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
