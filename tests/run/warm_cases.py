"""The playbook trees a warm job is held to a cold one on: each `Case` is its files, the job and the worker's settings."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TREE_PLUGIN = """
import importlib.util
import os

import ansible.plugins.{kind} as _package
from ansible.utils.display import Display

# The built-in plugin of the same name, loaded under a name of its own to extend it.
_spec = importlib.util.spec_from_file_location(
    "_builtin_{kind}_{name}", os.path.join(os.path.dirname(_package.__file__), "{name}.py")
)
_builtin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_builtin)
DOCUMENTATION = getattr(_builtin, "DOCUMENTATION", "")


class {cls}(_builtin.{cls}):
{body}
"""

PLUGIN_BODIES = {
    ("action", "normal", "ActionModule"): (
        "    def run(self, tmp=None, task_vars=None):\n"
        "        result = super().run(tmp, task_vars)\n"
        '        result["plugin_of_the_tree"] = "normal"\n'
        "        return result\n"
    ),
    ("strategy", "linear", "StrategyModule"): (
        "    def run(self, iterator, play_context):\n"
        '        Display().display("the strategy of the tree runs this play")\n'
        "        return super().run(iterator, play_context)\n"
    ),
    ("callback", "default", "CallbackModule"): (
        "    def v2_playbook_on_start(self, playbook):\n"
        '        self._display.display("the stdout callback of the tree")\n'
        "        super().v2_playbook_on_start(playbook)\n"
    ),
    ("connection", "local", "Connection"): (
        "    def exec_command(self, cmd, in_data=None, sudoable=True):\n"
        '        os.environ["CONNECTION_OF_THE_TREE"] = "local"\n'
        "        return super().exec_command(cmd, in_data=in_data, sudoable=sudoable)\n"
    ),
}

PLUGINS_PLAYBOOK = """
- name: Plugins next to the playbook
  hosts: host1
  gather_facts: false
  tasks:
    - name: A module without an action plugin of its own
      ansible.builtin.ping:
      register: pinged
    - name: Which plugins ran
      ansible.builtin.set_stats:
        data:
          action: "{{ pinged.plugin_of_the_tree | default('built-in') }}"
"""

COLLECTION_MODULE = """#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={"name": {"type": "str", "default": "world"}})
    module.exit_json(changed=False, greeting="hello " + module.params["name"])


if __name__ == "__main__":
    main()
"""

COLLECTION_FILTER = """
class FilterModule:
    def filters(self):
        return {"shout": lambda text: text.upper() + "!"}
"""

COLLECTION_PLAYBOOK = """
- name: A collection next to the playbook
  hosts: host1
  gather_facts: false
  tasks:
    - name: Its module
      acme.tools.hello:
        name: tree
      register: hello
    - name: Its filter
      ansible.builtin.set_stats:
        data:
          greeting: "{{ hello.greeting | acme.tools.shout }}"
"""

ROLE_PLAYBOOK = """
- name: A role next to the playbook
  hosts: all
  gather_facts: false
  roles:
    - greet
"""

ROLE_TASKS = """
- name: Greet from the role
  ansible.builtin.debug:
    msg: "{{ greeting }} from {{ inventory_hostname }}"
- name: Skipped in the role
  ansible.builtin.debug:
    msg: never
  when: false
- name: Tell
  ansible.builtin.set_stats:
    data:
      greeting: "{{ greeting }}"
"""

SKIPPING_PLAYBOOK = """
- name: Settings from the environment
  hosts: all
  gather_facts: false
  tasks:
    - name: Runs
      ansible.builtin.debug:
        msg: "forks {{ ansible_forks }}"
    - name: Skipped
      ansible.builtin.debug:
        msg: never
      when: false
"""

CREDENTIAL_PLAYBOOK = """
- name: Credentials in the environment
  hosts: host1
  gather_facts: false
  tasks:
    - name: Read them
      ansible.builtin.set_stats:
        data:
          ansible_named: "{{ lookup('env', 'ANSIBLE_TEST_API_TOKEN') | length }}"
          plain: "{{ lookup('env', 'TEST_API_TOKEN') | length }}"
"""


@dataclass
class Case:
    """A tree (files beside the copied test playbooks), the job to run in it, and worker settings."""

    files: dict[str, str] = field(default_factory=dict)
    job: dict[str, Any] = field(default_factory=dict)
    worker: dict[str, Any] = field(default_factory=dict)
    # A check of what the warm run reported, beyond its being equal to the cold one.
    expect: Callable[[dict[str, Any], str], None] | None = None


def _expect_tree_plugins(status: dict[str, Any], output: str) -> None:
    assert status["output"]["action"] == "normal"
    assert "the strategy of the tree runs this play" in output
    assert "the stdout callback of the tree" in output


def _expect_collection(status: dict[str, Any], output: str) -> None:
    assert status["output"]["greeting"] == "HELLO TREE!"


def _expect_credentials(status: dict[str, Any], output: str) -> None:
    assert status["output"] == {"ansible_named": 24, "plain": 24}


def plugin_files() -> dict[str, str]:
    files = {"plugins.yml": PLUGINS_PLAYBOOK}
    for (kind, name, cls), body in PLUGIN_BODIES.items():
        files[f"{kind}_plugins/{name}.py"] = TREE_PLUGIN.format(kind=kind, name=name, cls=cls, body=body)
    return files


CASES: dict[str, Case] = {
    "plain": Case(job={"playbook": "stats.yml", "inventory": "inventory.ini"}),
    "own_ansible_cfg": Case(
        files={
            "ansible.cfg": (
                "[defaults]\nretry_files_enabled = True\ndisplay_skipped_hosts = False\n"
                # In HOME: a deployed tree is read-only, a relative one could not be made there.
                "local_tmp = ~/local-tmp\nforks = 3\nnocows = True\n"
            )
        },
        job={"playbook": "fail.yml", "inventory": "inventory.ini"},
    ),
    "plugins_beside_the_playbook": Case(
        files=plugin_files(),
        job={"playbook": "plugins.yml", "inventory": "inventory.ini"},
        expect=_expect_tree_plugins,
    ),
    "collection_beside_the_playbook": Case(
        files={
            "collection.yml": COLLECTION_PLAYBOOK,
            "collections/ansible_collections/acme/tools/plugins/modules/hello.py": COLLECTION_MODULE,
            "collections/ansible_collections/acme/tools/plugins/filter/shout.py": COLLECTION_FILTER,
        },
        job={"playbook": "collection.yml", "inventory": "inventory.ini"},
        expect=_expect_collection,
    ),
    "roles": Case(
        files={
            "role.yml": ROLE_PLAYBOOK,
            "roles/greet/tasks/main.yml": ROLE_TASKS,
            "roles/greet/defaults/main.yml": "greeting: hi\n",
        },
        job={"playbook": "role.yml", "inventory": "inventory.ini"},
    ),
    "ansible_variables_of_the_worker": Case(
        files={"skipping.yml": SKIPPING_PLAYBOOK},
        job={"playbook": "skipping.yml", "inventory": "inventory.ini"},
        worker={"environment": {"ANSIBLE_DISPLAY_SKIPPED_HOSTS": "false", "ANSIBLE_DISPLAY_ARGS_TO_STDOUT": "true"}},
    ),
    # The parent imports with the job's PYTHONWARNINGS: what a cold import would print (or not) is printed.
    "python_warnings_of_the_worker": Case(
        job={"playbook": "stats.yml", "inventory": "inventory.ini"},
        worker={"environment": {"PYTHONWARNINGS": "ignore"}},
    ),
    "ansible_variable_of_a_credential": Case(
        files={"credential.yml": CREDENTIAL_PLAYBOOK},
        job={"playbook": "credential.yml", "inventory": "inventory.ini", "credentials": ["api"]},
        worker={
            "credentials": {
                "api": {
                    "type": "env",
                    "variables": {
                        "ANSIBLE_TEST_API_TOKEN": "tok-ansible-5f1c2e9a7b3d",
                        "TEST_API_TOKEN": "tok-plain-8e4b6a2c9d1f03",
                    },
                }
            }
        },
        expect=_expect_credentials,
    ),
}


def build_tree(target: Path, source: Path, case: Case) -> None:
    """The test playbooks and the case's own files at `target` (replaced if it exists)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    for relative, text in case.files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
