"""Warm starts held to cold ones in every deployment: as root, as the image's user, with the image's environment."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.conftest import (
    ANSIBLE_PLAYBOOK,
    Broker,
    client_for,
    make_settings,
    open_controller,
)
from tests.deployment import Deployment, lane
from tests.run.warm_and_cold import PLAYBOOKS, warm_and_cold
from tests.run.warm_cases import plugin_files

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
