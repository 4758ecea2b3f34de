"""What a warm job sees: its own ansible.cfg, variables and plugins, a process state of its own, no secret of another.

Each job runs through the worker's JobRunner with sinks of the tests' own (`runs.py`): the
broker plays no part in what a job sees.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.run.runs import open_runs
from tests.run.warm_cases import plugin_files

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


async def test_own_ansible_cfg_is_honoured_and_its_change_takes_effect(playbook_dir: Path) -> None:
    for flavour in ("first", "second"):
        library = playbook_dir / f"library-{flavour}"
        library.mkdir()
        (library / "only_here.py").write_text(MODULE % flavour)
    (playbook_dir / "library.yml").write_text(LIBRARY_PLAYBOOK)
    config = playbook_dir / "ansible.cfg"
    config.write_text("[defaults]\nlibrary = ./library-first\n")
    async with open_runs(playbook_dir) as runs:
        first = await runs.run({"task_id": "lib-1", "playbook": "library.yml", "inventory": "inventory.ini"})
        config.write_text("[defaults]\nlibrary = ./library-second\n")
        second = await runs.run({"task_id": "lib-2", "playbook": "library.yml", "inventory": "inventory.ini"})
        assert runs.metrics.warm_starts == 2
        assert runs.metrics.warm_parents_started == 2
    assert first["state"] == "success", first["error_message"]
    assert first["output"]["flavour"] == "first"
    assert second["state"] == "success", second["error_message"]
    assert second["output"]["flavour"] == "second"


async def test_ansible_variables_of_worker_environment_take_effect(playbook_dir: Path) -> None:
    library = playbook_dir / "elsewhere"
    library.mkdir()
    (library / "only_here.py").write_text(MODULE % "from-env")
    (playbook_dir / "library.yml").write_text(LIBRARY_PLAYBOOK)
    async with open_runs(playbook_dir, environment={"ANSIBLE_LIBRARY": str(library)}) as runs:
        final = await runs.run({"task_id": "env-1", "playbook": "library.yml", "inventory": "inventory.ini"})
        assert runs.metrics.warm_starts == 1
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


async def test_global_state_does_not_leak_between_jobs(playbook_dir: Path) -> None:
    plugins = playbook_dir / "vars_plugins"
    plugins.mkdir()
    (plugins / "leaky.py").write_text(LEAKY_VARS_PLUGIN)
    (playbook_dir / "leak.yml").write_text(LEAK_PLAYBOOK)
    (playbook_dir / "ansible.cfg").write_text(
        "[defaults]\nvars_plugins = ./vars_plugins\nvars_plugins_enabled = host_group_vars,leaky\n"
    )
    async with open_runs(playbook_dir) as runs:
        outputs = []
        for index in range(3):
            final = await runs.run({"task_id": f"leak-{index}", "playbook": "leak.yml", "inventory": "inventory.ini"})
            assert final["state"] == "success", final["error_message"]
            outputs.append(final["output"])
        assert runs.metrics.warm_starts == 3
    # The plugin ran in each job (its change is visible later in the same job), and each
    # job found the module state, the environment and the working directory untouched.
    assert outputs == [{"pristine": True, "leaked": "yes"}] * 3


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


async def test_a_warm_job_writes_nothing_into_its_tree(playbook_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    before = tree_files(playbook_dir)
    async with open_runs(playbook_dir, environment={"HOME": str(home)}) as runs:
        final = await runs.run({"task_id": "tidy", "playbook": "stats.yml", "inventory": "inventory.ini"})
        assert runs.metrics.warm_starts == 1
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
    """The warm parents this process started."""
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
    tree_factory: TreeFactory, caplog: pytest.LogCaptureFixture
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
    digests = {name: hashlib.sha1(value.encode()).hexdigest() for name, value in secrets.items()}  # noqa: S324
    with caplog.at_level(logging.INFO, logger="ansible_worker.run.warm.pool"):
        async with open_runs(tree, credentials=credentials) as runs:
            job = {"playbook": "secret.yml", "inventory": "inventory.ini"}
            late = await runs.run({**job, "task_id": "late", "credentials": ["deploy"]})
            assert (runs.metrics.warm_starts, runs.metrics.cold_starts) == (1, 0)
            early = await runs.run({**job, "task_id": "early", "credentials": ["deploy", "early"]})
            assert (runs.metrics.warm_starts, runs.metrics.cold_starts) == (1, 1)
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


async def test_plugins_beside_the_playbook_replace_built_in_ones_when_warm(tree_factory: TreeFactory) -> None:
    tree = tree_factory(plugin_files())
    async with open_runs(tree) as runs:
        final = await runs.run({"task_id": "own", "playbook": "plugins.yml", "inventory": "inventory.ini"})
        assert runs.metrics.warm_starts == 1
        record = runs.sinks.records.get("own")
    assert final["state"] == "success", final["error_message"]
    assert final["output"]["action"] == "normal"
    assert record is not None
    assert "the strategy of the tree runs this play" in record["output"]
    assert "the stdout callback of the tree" in record["output"]
