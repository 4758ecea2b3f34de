"""Warm starts: jobs forked from a pre-imported Ansible behave exactly as a fresh ansible-playbook does."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.run.command import FIFO_VARIABLE, ansible_environment, child_environment
from ansible_worker.run.warm_pool import open_warm_pool
from tests.conftest import (
    ANSIBLE_PLAYBOOK,
    Broker,
    client_for,
    make_settings,
    open_controller,
    processes_mentioning,
    running_worker,
)
from tests.deployment import Deployment, lane
from tests.ops.test_operations import http_get, metric
from tests.run.test_warm_equivalence import plugin_files
from tests.run.warm_and_cold import PLAYBOOKS, warm_and_cold

WARM_AND_COLD = Path(__file__).with_name("warm_and_cold.py")
TreeFactory = Callable[[dict[str, str]], Path]


@lane
async def test_warm_runs_match_fresh_ansible_playbook(
    tree_factory: TreeFactory, tmp_path: Path, deployment: Deployment
) -> None:
    tree = tree_factory({})
    runs = deployment.give(tmp_path / "pool-runs")
    if deployment.unprivileged:
        # The pool lives in the worker's process: here, one of the worker's user on its Python.
        command = [deployment.executable("python"), str(WARM_AND_COLD), str(tree), str(runs)]
        with trio.fail_after(240):
            result = await deployment.run(
                [*command, deployment.executable("ansible-playbook")], cwd=tmp_path, env=deployment.environment()
            )
        assert result.returncode == 0, result.stderr.decode()[-3000:]
        report = json.loads(result.stdout)
    else:
        report = await warm_and_cold(tree, runs, ANSIBLE_PLAYBOOK)
    for run in report["runs"]:
        playbook, warm, cold = run["playbook"], run["warm"], run["cold"]
        assert run["started_warm"], f"{playbook} should have started warm"
        assert warm[0] == cold[0], playbook
        assert warm[1] == cold[1], playbook
        assert warm[2] == cold[2], playbook
        assert "PLAY RECAP" in warm[1] or warm[0] != 0
    assert report["warm_starts"] == len(PLAYBOOKS)
    assert report["warm_parents_started"] == 1


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
        pool = worker.runner._warm
        assert pool is not None
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
    with caplog.at_level(logging.INFO, logger="ansible_worker.run.warm_pool"):
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
            pool = worker.runner._warm
            assert pool is not None
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
    async with open_warm_pool(
        size=2, max_forks=100, max_rss_kib=1 << 20, start_timeout=30, late=(FIFO_VARIABLE,), metrics=metrics
    ) as pool:
        first = await pool.starter(str(script), cwd=tmp_path, env=env)
        second = await pool.starter(str(script), cwd=tmp_path, env=env)
    assert first is None
    assert second is None
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


@pytest.fixture
def tree_factory(playbook_dir: Path, tmp_path: Path, deployment: Deployment) -> TreeFactory:
    """Builds a playbook tree: the test playbooks and `files` (path -> text), in a directory of its own.

    The tree is the operator's and read-only to the worker, whoever it runs as (`Deployment.seal`).
    """
    count = iter(range(1000))

    def build(files: dict[str, str]) -> Path:
        tree = tmp_path / f"tree-{next(count)}"
        shutil.copytree(playbook_dir, tree)
        for relative, text in files.items():
            path = tree / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return deployment.seal(tree)

    return build


def tree_files(root: Path) -> dict[str, bytes | None]:
    """Every entry under `root` with the content of its files (None for a directory)."""
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes() for path in sorted(root.rglob("*"))
    }


@lane
@pytest.mark.parametrize("writable", [False, True], ids=["read-only", "own-checkout"])
async def test_a_warm_job_writes_nothing_into_its_tree(
    broker: Broker, tree_factory: TreeFactory, group: str, tmp_path: Path, deployment: Deployment, writable: bool
) -> None:
    tree = tree_factory({})
    if writable:
        # A checkout that jobs `git pull` is the worker's own: nothing stops a write but the worker itself.
        deployment.unseal(tree)
        deployment.hand_over(tree)
    home = deployment.give(tmp_path / "home")
    settings = make_settings(broker.port, tree, group, environment={"HOME": str(home)})
    # Under ANSIBLE_HOME (HOME's .ansible), unless the deployment's environment puts it elsewhere (the image's).
    local_tmp = Path(deployment.environment().get("ANSIBLE_LOCAL_TEMP", home / ".ansible" / "tmp"))
    before = tree_files(tree)
    async with open_controller(broker, group) as controller, deployment.running(settings) as worker:
        await controller.submit({"task_id": "tidy", "playbook": "stats.yml", "inventory": "inventory.ini"})
        final = await controller.wait_terminal("tidy")
        assert final["state"] == "success", final["error_message"]
        assert await worker.starts(jobs_done=1) == (1, 0)
        assert tree_files(tree) == before
        # Ansible's local temporary directories are made there, as a cold run makes them, and
        # each is gone with its run: the warm parent keeps none of its own.
        assert tree_files(local_tmp) == {}
    assert tree_files(tree) == before


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


def warm_parents(worker: int) -> list[int]:
    """The warm parents of the worker whose process is `worker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == worker and b"warm_parent.py" in cmdline:
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


@lane
async def test_an_env_credential_never_reaches_a_warm_parent(
    broker: Broker, tree_factory: TreeFactory, group: str, deployment: Deployment
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
    async with open_controller(broker, group) as controller, deployment.running(settings) as worker:
        job = {"playbook": "secret.yml", "inventory": "inventory.ini"}
        await controller.submit({**job, "task_id": "late", "credentials": ["deploy"]})
        late = await controller.wait_terminal("late")
        assert await worker.starts(jobs_done=1) == (1, 0)
        await controller.submit({**job, "task_id": "early", "credentials": ["deploy", "early"]})
        early = await controller.wait_terminal("early")
        assert await worker.starts(jobs_done=2) == (1, 1)
        parents = warm_parents(worker.pid)
        assert parents
        for pid in parents:
            for name, value in secrets.items():
                assert not process_shows(pid, value.encode()), name
                assert not memory_holds(pid, value.encode()), name
        log = list(worker.log)
    assert late["state"] == "success", late["error_message"]
    assert late["output"]["named"] == digests["ANSIBLE_DEPLOY_TOKEN"]
    assert late["output"]["plain"] == digests["DEPLOY_TOKEN"]
    assert early["state"] == "success", early["error_message"]
    assert early["output"]["early"] == digests["ANSIBLE_GALAXY_TOKEN_PATH"]
    assert any("cold start:" in line and "ANSIBLE_GALAXY_TOKEN_PATH" in line for line in log)
    assert not any(value in line for line in log for value in secrets.values())


@lane
async def test_plugins_beside_the_playbook_replace_built_in_ones_when_warm(
    broker: Broker, tree_factory: TreeFactory, group: str, deployment: Deployment
) -> None:
    tree = tree_factory(plugin_files())
    settings = make_settings(broker.port, tree, group)
    async with (
        open_controller(broker, group) as controller,
        deployment.running(settings) as worker,
        client_for(broker, group) as client,
    ):
        await controller.submit({"task_id": "own", "playbook": "plugins.yml", "inventory": "inventory.ini"})
        final = await controller.wait_terminal("own")
        assert await worker.starts(jobs_done=1) == (1, 0)
        record = await client.record("own")
    assert final["state"] == "success", final["error_message"]
    assert final["output"]["action"] == "normal"
    assert record is not None
    assert "the strategy of the tree runs this play" in record["output"]
    assert "the stdout callback of the tree" in record["output"]


@lane
async def test_a_changed_file_of_the_parent_means_a_cold_start_then_a_new_parent(
    broker: Broker, tree_factory: TreeFactory, group: str, tmp_path: Path, deployment: Deployment
) -> None:
    # The operator's, which the worker reads (as an image's site-packages).
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("GREETING = 'first'\n")
    http = {"port": 0, "host": "127.0.0.1"}
    settings = make_settings(broker.port, tree_factory({}), group, environment={"PYTHONPATH": str(site)}, http=http)
    job = {"playbook": "quick.yml", "inventory": "inventory.ini"}
    async with open_controller(broker, group) as controller, deployment.running(settings) as worker:
        await controller.submit({**job, "task_id": "before"})
        assert (await controller.wait_terminal("before"))["state"] == "success"
        # Imported by the parent when it started: what a cold run would import now is another file.
        (site / "sitecustomize.py").write_text("GREETING = 'second, and longer'\n")
        await controller.submit({**job, "task_id": "changed"})
        assert (await controller.wait_terminal("changed"))["state"] == "success"
        await controller.submit({**job, "task_id": "after"})
        assert (await controller.wait_terminal("after"))["state"] == "success"
        assert await worker.starts(jobs_done=3) == (2, 1)
        assert await worker.metric("ansible_worker_warm_parents_started_total") == 2
        log = list(worker.log)
    assert any("cold start:" in line and "sitecustomize.py" in line for line in log)


@lane
@pytest.mark.parametrize(
    ("files", "environment", "reason"),
    [
        # The parent would hold the log file open for every job, as Display opens it at import
        # (in a directory of the worker's: the tree is read-only).
        ({"ansible.cfg": "[defaults]\nlog_path = {logs}/ansible.log\n"}, {}, "left open"),
        # What Python reports on its own start-up a fork cannot report again.
        ({}, {"PYTHONPROFILEIMPORTTIME": "1"}, "report on its own start-up"),
    ],
    ids=["log_path", "import_time"],
)
async def test_what_a_fork_cannot_hand_over_means_cold_starts_with_the_reason(
    broker: Broker,
    tree_factory: TreeFactory,
    group: str,
    tmp_path: Path,
    deployment: Deployment,
    files: dict[str, str],
    environment: dict[str, str],
    reason: str,
) -> None:
    logs = deployment.give(tmp_path / "logs")
    tree = tree_factory({path: text.replace("{logs}", str(logs)) for path, text in files.items()})
    http = {"port": 0, "host": "127.0.0.1"}
    settings = make_settings(broker.port, tree, group, environment=environment, http=http)
    async with open_controller(broker, group) as controller, deployment.running(settings) as worker:
        await controller.submit({"task_id": "refused", "playbook": "quick.yml", "inventory": "inventory.ini"})
        final = await controller.wait_terminal("refused")
        assert await worker.starts(jobs_done=1) == (0, 1)
        assert await worker.metric("ansible_worker_warm_parents_lost_total") == 0
        log = list(worker.log)
    assert final["state"] == "success", final["error_message"]
    assert any("cold start:" in line and reason in line for line in log)
