"""Warm starts: jobs forked from a pre-imported Ansible behave exactly as a fresh ansible-playbook does."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.run.argv import FIFO_VARIABLE, ansible_environment, child_environment
from ansible_worker.run.events.event_fifo import EventFifo
from ansible_worker.run.process.launch import ExitRecord, Launch, ProcessStarter
from ansible_worker.run.process.output_tail import OutputTail
from ansible_worker.run.process.process_group import run_process_group, run_with_output
from ansible_worker.run.warm.pool import Configuration, WarmPolicy, WarmPool
from tests.conftest import (
    ANSIBLE_PLAYBOOK,
    Broker,
    client_for,
    make_settings,
    open_controller,
    processes_mentioning,
    running_worker,
)
from tests.ops.test_operations import http_get, metric
from tests.run.test_warm_equivalence import plugin_files

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


async def run_once(
    playbook_dir: Path, playbook: str, inventory: str, start: ProcessStarter, run_dir: Path
) -> tuple[int, str, list[tuple[str, str | None]]]:
    """Exit code, stdout without timings, and (event, host) pairs of one run, warm or cold."""
    fifo = EventFifo(run_dir / "events.fifo")
    env = ansible_environment(child_environment(os.environ), fifo.path)
    tail = OutputTail(1 << 20)
    events: list[dict[str, Any]] = []
    # One fork: with more, hosts finish in any order, in a cold run as in a warm one.
    argv = [
        ANSIBLE_PLAYBOOK,
        f"--inventory={playbook_dir / inventory}",
        "--forks=1",
        "--",
        str(playbook_dir / playbook),
    ]
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


async def test_warm_runs_match_fresh_ansible_playbook(playbook_dir: Path, tmp_path: Path) -> None:
    metrics = WorkerMetrics()
    env = ansible_environment(child_environment(os.environ), tmp_path / "x.fifo")
    policy = WarmPolicy(size=2, max_forks=100, max_rss_kib=1 << 20, start_timeout=60)
    async with WarmPool(policy, metrics=metrics, late=(FIFO_VARIABLE,)).open() as pool:
        for index, (playbook, inventory) in enumerate(PLAYBOOKS):
            start = await pool.starter(Configuration(ANSIBLE_PLAYBOOK, playbook_dir, env))
            assert metrics.cold_starts == 0, "the job should have started warm"
            warm_dir, cold_dir = tmp_path / f"warm{index}", tmp_path / f"cold{index}"
            warm_dir.mkdir()
            cold_dir.mkdir()
            warm = await run_once(playbook_dir, playbook, inventory, start, warm_dir)
            cold = await run_once(playbook_dir, playbook, inventory, run_process_group, cold_dir)
            assert warm[0] == cold[0], playbook
            assert warm[1] == cold[1], playbook
            assert warm[2] == cold[2], playbook
            assert "PLAY RECAP" in warm[1] or warm[0] != 0
        assert metrics.warm_starts == len(PLAYBOOKS)
        assert metrics.warm_parents_started == 1


async def test_worker_reports_warm_starts_and_same_statuses(broker: Broker, playbook_dir: Path, group: str) -> None:
    finals: dict[bool, dict[str, Any]] = {}
    for warm in (True, False):
        settings = make_settings(broker.port, playbook_dir, group, warm_start=warm)
        async with open_controller(broker, group) as controller, running_worker(settings) as worker:
            task_id = f"stats-{warm}"
            await controller.submit({"task_id": task_id, "playbook": "stats.yml", "inventory": "inventory.ini"})
            finals[warm] = await controller.wait_terminal(task_id)
            assert worker.metrics.warm_starts == (1 if warm else 0)
            assert worker.metrics.cold_starts == (0 if warm else 1)
            presence = json.loads(worker.presence.message())
            assert presence["warm_starts"] == (1 if warm else 0)
            assert presence["cold_starts"] == (0 if warm else 1)
            assert presence["warm_pool_size"] == (1 if warm else 0)
    keys = ("state", "return_code", "output", "output_per_host", "tasks_total", "tasks_ok", "tasks_changed")
    assert {k: finals[True][k] for k in keys} == {k: finals[False][k] for k in keys}
    assert finals[True]["state"] == "success"


MODULE = """#!/usr/bin/python
import json
import logging
print(json.dumps({"changed": False, "flavour": "%s"}))
"""

LIBRARY_PLAYBOOK = """
- hosts: host1
  gather_facts: false
  tasks:
    - name: Only in the configured library
      only_here: {}
      register: result
    - ansible.builtin.set_stats:
        data:
          flavour: "{{ result.flavour }}"
          from_env: "{{ lookup('env', 'ANSIBLE_WORKER_TEST_ONLY') }}"
          forks: "{{ ansible_forks | default('') }}"
"""


async def test_own_ansible_cfg_is_honoured_and_its_change_takes_effect(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    for flavour in ("first", "second"):
        library = playbook_dir / f"library-{flavour}"
        library.mkdir()
        (library / "only_here.py").write_text(MODULE % flavour)
    (playbook_dir / "library.yml").write_text(LIBRARY_PLAYBOOK)
    config = playbook_dir / "ansible.cfg"
    config.write_text("[defaults]\nlibrary = ./library-first\n")
    settings = make_settings(broker.port, playbook_dir, group)
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        await controller.submit({"task_id": "lib-1", "playbook": "library.yml", "inventory": "inventory.ini"})
        first = await controller.wait_terminal("lib-1")
        config.write_text("[defaults]\nlibrary = ./library-second\n")
        await controller.submit({"task_id": "lib-2", "playbook": "library.yml", "inventory": "inventory.ini"})
        second = await controller.wait_terminal("lib-2")
        assert worker.metrics.warm_starts == 2
        assert worker.metrics.warm_parents_started == 2
    assert first["state"] == "success", first["error_message"]
    assert first["output"]["flavour"] == "first"
    assert second["state"] == "success", second["error_message"]
    assert second["output"]["flavour"] == "second"


async def test_ansible_variables_of_worker_environment_take_effect(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    library = playbook_dir / "elsewhere"
    library.mkdir()
    (library / "only_here.py").write_text(MODULE % "from-env")
    (playbook_dir / "library.yml").write_text(LIBRARY_PLAYBOOK)
    settings = make_settings(broker.port, playbook_dir, group, environment={"ANSIBLE_LIBRARY": str(library)})
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        await controller.submit({"task_id": "env-1", "playbook": "library.yml", "inventory": "inventory.ini"})
        final = await controller.wait_terminal("env-1")
        assert worker.metrics.warm_starts == 1
    assert final["state"] == "success", final["error_message"]
    assert final["output"]["flavour"] == "from-env"


LEAKY_VARS_PLUGIN = """
import os
from ansible.plugins.vars import BaseVarsPlugin

SEEN = []
PRISTINE = []


class VarsModule(BaseVarsPlugin):
    REQUIRES_ENABLED = True

    def get_vars(self, loader, path, entities, cache=True):
        if not PRISTINE:
            PRISTINE.append(not SEEN and "LEAKED" not in os.environ and os.getcwd() != "/")
        SEEN.append(1)
        os.environ["LEAKED"] = "yes"
        os.chdir("/")
        return {"pristine": PRISTINE[0]}
"""

LEAK_PLAYBOOK = """
- hosts: host1
  gather_facts: false
  tasks:
    - ansible.builtin.set_stats:
        data:
          pristine: "{{ pristine }}"
          leaked: "{{ lookup('env', 'LEAKED') }}"
"""


async def test_global_state_does_not_leak_between_jobs(broker: Broker, playbook_dir: Path, group: str) -> None:
    plugins = playbook_dir / "vars_plugins"
    plugins.mkdir()
    (plugins / "leaky.py").write_text(LEAKY_VARS_PLUGIN)
    (playbook_dir / "leak.yml").write_text(LEAK_PLAYBOOK)
    (playbook_dir / "ansible.cfg").write_text(
        "[defaults]\nvars_plugins = ./vars_plugins\nvars_plugins_enabled = host_group_vars,leaky\n"
    )
    settings = make_settings(broker.port, playbook_dir, group)
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        outputs = []
        for index in range(3):
            task_id = f"leak-{index}"
            await controller.submit({"task_id": task_id, "playbook": "leak.yml", "inventory": "inventory.ini"})
            final = await controller.wait_terminal(task_id)
            assert final["state"] == "success", final["error_message"]
            outputs.append(final["output"])
        assert worker.metrics.warm_starts == 3
    # The plugin ran in each job (its change is visible later in the same job), and each
    # job found the module state, the environment and the working directory untouched.
    assert outputs == [{"pristine": True, "leaked": "yes"}] * 3


async def test_cancel_ends_a_warm_jobs_whole_process_group(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group, kill_grace=2)
    marker = "7391.5"
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        await controller.submit(
            {
                "task_id": "sleepy",
                "playbook": "sleep.yml",
                "inventory": "inventory.ini",
                "extra_vars": {"seconds": marker},
            }
        )
        with trio.fail_after(60):
            while not processes_mentioning(f"sleep {marker}"):  # noqa: ASYNC110
                await trio.sleep(0.05)
        await controller.link.publish(controller.topics.cancel("sleepy"), b"{}", qos=1)
        final = await controller.wait_terminal("sleepy")
        assert worker.metrics.warm_starts == 1
    assert final["state"] == "cancelled"
    assert processes_mentioning(f"sleep {marker}") == []


async def test_a_warm_parent_that_dies_fails_its_jobs_and_is_replaced(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    settings = make_settings(broker.port, playbook_dir, group)
    marker = "7392.5"
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        await controller.submit(
            {
                "task_id": "orphan",
                "playbook": "sleep.yml",
                "inventory": "inventory.ini",
                "extra_vars": {"seconds": marker},
            }
        )
        with trio.fail_after(60):
            while not processes_mentioning(f"sleep {marker}"):  # noqa: ASYNC110
                await trio.sleep(0.05)
        pool = worker.runner.warm_pool
        (parent,) = pool._parents.values()
        assert parent.pid is not None
        os.kill(parent.pid, signal.SIGKILL)
        final = await controller.wait_terminal("orphan")
        assert processes_mentioning(f"sleep {marker}") == []
        await controller.submit({"task_id": "after", "playbook": "quick.yml", "inventory": "inventory.ini"})
        after = await controller.wait_terminal("after")
        assert worker.metrics.warm_parents_lost == 1
        assert worker.metrics.warm_starts == 2
    assert final["state"] == "failed"
    assert "warm Ansible parent" in final["error_message"]
    assert after["state"] == "success"


async def test_a_wrapper_script_starts_cold_and_says_why(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrapper = tmp_path / "ansible-playbook-wrapper"
    wrapper.write_text(f'#!/bin/sh\nexec {ANSIBLE_PLAYBOOK} "$@"\n')
    wrapper.chmod(0o755)
    settings = make_settings(broker.port, playbook_dir, group, ansible_playbook_path=str(wrapper))
    with caplog.at_level(logging.INFO, logger="ansible_worker.run.warm.pool"):
        async with open_controller(broker, group) as controller, running_worker(settings) as worker:
            await controller.submit({"task_id": "wrapped", "playbook": "stats.yml", "inventory": "inventory.ini"})
            final = await controller.wait_terminal("wrapped")
            assert (worker.metrics.warm_starts, worker.metrics.cold_starts) == (0, 1)
    assert final["state"] == "success"
    assert any(
        "cold start:" in record.getMessage() and "not the standard ansible-playbook script" in record.getMessage()
        for record in caplog.records
    )


async def test_a_warm_job_past_its_timeout_ends_with_its_whole_group(
    broker: Broker, playbook_dir: Path, group: str
) -> None:
    settings = make_settings(broker.port, playbook_dir, group, kill_grace=2)
    marker = "7393.5"
    job = {"task_id": "late", "playbook": "sleep.yml", "inventory": "inventory.ini", "timeout": 3}
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        await controller.submit({**job, "extra_vars": {"seconds": marker}})
        final = await controller.wait_terminal("late")
        assert worker.metrics.warm_starts == 1
    assert final["state"] == "timeout"
    assert processes_mentioning(f"sleep {marker}") == []


async def test_a_parent_is_replaced_after_its_forks(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group, warm_max_forks=1)
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        pids = []
        for index in range(2):
            await controller.submit({"task_id": f"q-{index}", "playbook": "quick.yml", "inventory": "inventory.ini"})
            final = await controller.wait_terminal(f"q-{index}")
            assert final["state"] == "success"
            pool = worker.runner.warm_pool
            pids.append([parent.pid for parent in pool._parents.values()])
        assert worker.metrics.warm_starts == 2
        assert worker.metrics.warm_parents_started == 2
        assert worker.metrics.warm_parents_lost == 0
    # Each job retired the parent it came from; the next one found a new parent.
    assert pids == [[], []]


async def test_a_parent_that_cannot_start_means_cold_starts_with_the_reason(tmp_path: Path) -> None:
    script = tmp_path / "ansible-playbook"
    script.write_text(
        f"#!{tmp_path}/missing/python3\nimport sys\nfrom ansible.cli.playbook import main\n"
        "if __name__ == '__main__':\n    sys.exit(main())\n"
    )
    script.chmod(0o755)
    metrics = WorkerMetrics()
    env = ansible_environment(child_environment(os.environ), tmp_path / "x.fifo")
    policy = WarmPolicy(size=2, max_forks=100, max_rss_kib=1 << 20, start_timeout=30)
    async with WarmPool(policy, metrics=metrics, late=(FIFO_VARIABLE,)).open() as pool:
        first = await pool.starter(Configuration(str(script), tmp_path, env))
        second = await pool.starter(Configuration(str(script), tmp_path, env))
    assert first is run_process_group
    assert second is run_process_group
    assert (metrics.cold_starts, metrics.warm_starts) == (2, 0)
    # One attempt, not one per job.
    assert metrics.warm_parents_started == 1


async def test_metrics_show_warm_starts(broker: Broker, playbook_dir: Path, group: str) -> None:
    settings = make_settings(broker.port, playbook_dir, group, http={"port": 0, "host": "127.0.0.1"})
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        await controller.submit({"task_id": "seen", "playbook": "quick.yml", "inventory": "one_host.ini"})
        assert (await controller.wait_terminal("seen"))["state"] == "success"
        port = worker.http_port
        assert port is not None
        body = (await http_get(port, "/metrics"))[1]
    assert metric(body, "ansible_worker_warm_starts_total") == 1
    assert metric(body, "ansible_worker_cold_starts_total") == 0
    assert metric(body, "ansible_worker_warm_pool_size") == 1
    assert metric(body, "ansible_worker_warm_parents_started_total") == 1
    assert metric(body, "ansible_worker_warm_parents_lost_total") == 0


TreeFactory = Callable[[dict[str, str]], Path]


@pytest.fixture
def tree_factory(playbook_dir: Path, tmp_path: Path) -> TreeFactory:
    """Builds a playbook tree: the test playbooks and `files` (path -> text), in a directory of its own.

    A suite that runs the worker as another user can build it its own way (then owned by
    root and read-only, say).
    """
    count = iter(range(1000))

    def build(files: dict[str, str]) -> Path:
        tree = tmp_path / f"tree-{next(count)}"
        shutil.copytree(playbook_dir, tree)
        for relative, text in files.items():
            path = tree / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return tree

    return build


def tree_files(root: Path) -> dict[str, bytes | None]:
    """Every entry under `root` with the content of its files (None for a directory)."""
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes() for path in sorted(root.rglob("*"))
    }


async def test_a_warm_job_writes_nothing_into_its_tree(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    settings = make_settings(broker.port, playbook_dir, group, environment={"HOME": str(home)})
    before = tree_files(playbook_dir)
    async with open_controller(broker, group) as controller, running_worker(settings) as worker:
        await controller.submit({"task_id": "tidy", "playbook": "stats.yml", "inventory": "inventory.ini"})
        final = await controller.wait_terminal("tidy")
        assert worker.metrics.warm_starts == 1
        assert tree_files(playbook_dir) == before
        # Ansible's local temporary directories are made under ANSIBLE_HOME, as a cold run makes them,
        # and each is gone with its run: the warm parent keeps none of its own.
        assert sorted(path.name for path in (home / ".ansible" / "tmp").iterdir()) == []
    assert final["state"] == "success", final["error_message"]
    assert tree_files(playbook_dir) == before


SECRET_PLAYBOOK = """
- name: Credentials reach the run
  hosts: host1
  gather_facts: false
  tasks:
    - name: Digests of what the run sees
      ansible.builtin.set_stats:
        data:
          named: "{{ lookup('env', 'ANSIBLE_DEPLOY_TOKEN') | hash('sha1') }}"
          plain: "{{ lookup('env', 'DEPLOY_TOKEN') | hash('sha1') }}"
          early: "{{ lookup('env', 'ANSIBLE_GALAXY_TOKEN_PATH') | hash('sha1') }}"
"""


def warm_parents() -> list[int]:
    """The warm parents of the workers running in this process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == os.getpid() and b"warm_parent.py" in cmdline:
            found.append(int(entry.name))
    return found


def process_shows(pid: int, needle: bytes) -> bool:
    """Whether `needle` is in what /proc shows of process `pid`: its environment and command line."""
    return any(needle in Path(f"/proc/{pid}/{name}").read_bytes() for name in ("environ", "cmdline"))


def memory_holds(pid: int, needle: bytes) -> bool:
    """Whether `needle` is anywhere in the readable memory of process `pid`."""
    with open(f"/proc/{pid}/maps", encoding="ascii") as maps, open(f"/proc/{pid}/mem", "rb", 0) as memory:
        for line in maps:
            span, permissions = line.split()[:2]
            if "r" not in permissions:
                continue
            start, end = (int(address, 16) for address in span.split("-"))
            try:
                memory.seek(start)
                if needle in memory.read(end - start):
                    return True
            except (OSError, ValueError, OverflowError):
                continue
    return False


async def test_an_env_credential_never_reaches_a_warm_parent(
    broker: Broker, tree_factory: TreeFactory, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = {
        "ANSIBLE_DEPLOY_TOKEN": "named-" + os.urandom(12).hex(),
        "DEPLOY_TOKEN": "plain-" + os.urandom(12).hex(),
        "ANSIBLE_GALAXY_TOKEN_PATH": "/run/early-" + os.urandom(12).hex(),
    }
    credentials = {
        # Read only while the playbook runs: the job starts warm, its values go to its own process only.
        "deploy": {
            "type": "env",
            "variables": {name: secrets[name] for name in ("ANSIBLE_DEPLOY_TOKEN", "DEPLOY_TOKEN")},
        },
        # Part of Ansible's configuration, read when it starts: a warm parent would have to hold it.
        "early": {"type": "env", "variables": {"ANSIBLE_GALAXY_TOKEN_PATH": secrets["ANSIBLE_GALAXY_TOKEN_PATH"]}},
    }
    tree = tree_factory({"secret.yml": SECRET_PLAYBOOK})
    settings = make_settings(broker.port, tree, group, credentials=credentials)
    digests = {name: hashlib.sha1(value.encode()).hexdigest() for name, value in secrets.items()}  # noqa: S324
    with caplog.at_level(logging.INFO, logger="ansible_worker.run.warm.pool"):
        async with open_controller(broker, group) as controller, running_worker(settings) as worker:
            job = {"playbook": "secret.yml", "inventory": "inventory.ini"}
            await controller.submit({**job, "task_id": "late", "credentials": ["deploy"]})
            late = await controller.wait_terminal("late")
            assert (worker.metrics.warm_starts, worker.metrics.cold_starts) == (1, 0)
            await controller.submit({**job, "task_id": "early", "credentials": ["deploy", "early"]})
            early = await controller.wait_terminal("early")
            assert (worker.metrics.warm_starts, worker.metrics.cold_starts) == (1, 1)
            parents = warm_parents()
            assert parents
            for pid in parents:
                for name, value in secrets.items():
                    assert not process_shows(pid, value.encode()), name
                    assert not memory_holds(pid, value.encode()), name
    assert late["state"] == "success", late["error_message"]
    assert late["output"]["named"] == digests["ANSIBLE_DEPLOY_TOKEN"]
    assert late["output"]["plain"] == digests["DEPLOY_TOKEN"]
    assert early["state"] == "success", early["error_message"]
    assert early["output"]["early"] == digests["ANSIBLE_GALAXY_TOKEN_PATH"]
    assert any(
        "cold start:" in record.getMessage() and "ANSIBLE_GALAXY_TOKEN_PATH" in record.getMessage()
        for record in caplog.records
    )
    assert not any(value in record.getMessage() for record in caplog.records for value in secrets.values())


async def test_plugins_beside_the_playbook_replace_built_in_ones_when_warm(
    broker: Broker, tree_factory: TreeFactory, group: str
) -> None:
    tree = tree_factory(plugin_files())
    settings = make_settings(broker.port, tree, group)
    async with (
        open_controller(broker, group) as controller,
        running_worker(settings) as worker,
        client_for(broker, group) as client,
    ):
        await controller.submit({"task_id": "own", "playbook": "plugins.yml", "inventory": "inventory.ini"})
        final = await controller.wait_terminal("own")
        assert worker.metrics.warm_starts == 1
        record = await client.record("own")
    assert final["state"] == "success", final["error_message"]
    assert final["output"]["action"] == "normal"
    assert record is not None
    assert "the strategy of the tree runs this play" in record["output"]
    assert "the stdout callback of the tree" in record["output"]


async def test_a_changed_file_of_the_parent_means_a_cold_start_then_a_new_parent(
    broker: Broker, playbook_dir: Path, group: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("GREETING = 'first'\n")
    settings = make_settings(broker.port, playbook_dir, group, environment={"PYTHONPATH": str(site)})
    job = {"playbook": "quick.yml", "inventory": "inventory.ini"}
    with caplog.at_level(logging.INFO, logger="ansible_worker.run.warm.pool"):
        async with open_controller(broker, group) as controller, running_worker(settings) as worker:
            await controller.submit({**job, "task_id": "before"})
            assert (await controller.wait_terminal("before"))["state"] == "success"
            # Imported by the parent when it started: what a cold run would import now is another file.
            (site / "sitecustomize.py").write_text("GREETING = 'second, and longer'\n")
            await controller.submit({**job, "task_id": "changed"})
            assert (await controller.wait_terminal("changed"))["state"] == "success"
            await controller.submit({**job, "task_id": "after"})
            assert (await controller.wait_terminal("after"))["state"] == "success"
            assert (worker.metrics.warm_starts, worker.metrics.cold_starts) == (2, 1)
            assert worker.metrics.warm_parents_started == 2
    assert any(
        "cold start:" in record.getMessage() and "sitecustomize.py" in record.getMessage() for record in caplog.records
    )


@pytest.mark.parametrize(
    ("files", "environment", "reason"),
    [
        # The parent would hold the log file open for every job, as Display opens it at import.
        ({"ansible.cfg": "[defaults]\nlog_path = ./ansible.log\n"}, {}, "left open"),
        # What Python reports on its own start-up a fork cannot report again.
        ({}, {"PYTHONPROFILEIMPORTTIME": "1"}, "report on its own start-up"),
    ],
)
async def test_what_a_fork_cannot_hand_over_means_cold_starts_with_the_reason(
    broker: Broker,
    tree_factory: TreeFactory,
    group: str,
    caplog: pytest.LogCaptureFixture,
    files: dict[str, str],
    environment: dict[str, str],
    reason: str,
) -> None:
    settings = make_settings(broker.port, tree_factory(files), group, environment=environment)
    with caplog.at_level(logging.INFO, logger="ansible_worker.run.warm.pool"):
        async with open_controller(broker, group) as controller, running_worker(settings) as worker:
            await controller.submit({"task_id": "refused", "playbook": "quick.yml", "inventory": "inventory.ini"})
            final = await controller.wait_terminal("refused")
            assert (worker.metrics.warm_starts, worker.metrics.cold_starts) == (0, 1)
            assert worker.metrics.warm_parents_lost == 0
    assert final["state"] == "success", final["error_message"]
    assert any("cold start:" in record.getMessage() and reason in record.getMessage() for record in caplog.records)
