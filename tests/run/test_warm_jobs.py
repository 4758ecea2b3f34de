"""What a warm job sees: its own ansible.cfg, variables and plugins, a process state of its own, no secret of another.

Each job runs through the worker's JobRunner with sinks of the tests' own (`runs.py`): the
broker plays no part in what a job sees.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.run.runs import open_runs

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
