"""What a message may not make Ansible read: the special extra_vars names it reads or sets itself.

The rules are compared with the installed ansible-core itself (the
variables its plugins read, the variables a real play sees, its own limit splitting), so
that a newer ansible-core that reads a name the worker lets through makes a test fail.
Then real jobs perform each attack and must be refused with nothing run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ansible_worker.protocol.models import TaskRequest
from ansible_worker.run.errors import JobRefusedError
from ansible_worker.run.policy import JobPolicy
from ansible_worker.run.special_vars import (
    SPECIAL_NAMES,
    describe_allowed,
    refused_names,
    special_reason,
)
from tests.conftest import ANSIBLE_PLAYBOOK
from tests.run.runs import open_runs

BASE: dict[str, Any] = {"task_id": "t1", "playbook": "p.yml", "inventory": "one_host.ini"}


def _request(**fields: Any) -> TaskRequest:
    return TaskRequest.model_validate({**BASE, **fields})


def _refusal(extra_vars: dict[str, Any], allowed: frozenset[str] = frozenset()) -> str | None:
    try:
        JobPolicy(allowed_special_vars=allowed).check_request(_request(extra_vars=extra_vars))
    except JobRefusedError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------- the names, against ansible-core


def _ansible_reserved_names() -> frozenset[str]:
    from ansible.vars.reserved import get_reserved_names

    return frozenset(get_reserved_names())


def _plugin_variables() -> dict[str, str]:
    """The `vars:` names of ansible-core's connection, become, shell and lookup plugins and of its config."""
    from ansible import constants as C  # noqa: N812
    from ansible.plugins.loader import become_loader, connection_loader, lookup_loader, shell_loader

    found: dict[str, str] = {}
    for kind, loader in (
        ("connection", connection_loader),
        ("become", become_loader),
        ("shell", shell_loader),
        ("lookup", lookup_loader),
    ):
        plugins = list(loader.all(class_only=True))
        # The loader skips a plugin it cannot import, with only a warning: its variables would
        # silently be missing from what this test compares.
        skipped = set(loader.all(path_only=True)) - {plugin._original_path for plugin in plugins}
        assert not skipped, f"ansible-core could not load these {kind} plugins: {sorted(skipped)}"
        for plugin in plugins:
            for name in C.config.get_plugin_vars(kind, plugin._load_name):
                found.setdefault(name, f"{kind} plugin {plugin._load_name}")
    for setting, definition in C.config.get_configuration_definitions().items():
        for entry in definition.get("vars") or []:
            found.setdefault(entry["name"], f"config {setting}")
    return found


def _variables_ansible_core_reads() -> dict[str, str]:
    """Every variable name that ansible-core's plugins and config read or its constants list as special."""
    from ansible import constants as C  # noqa: N812

    found = _plugin_variables()
    for field, names in C.MAGIC_VARIABLE_MAPPING.items():
        for name in names:
            found.setdefault(name, f"MAGIC_VARIABLE_MAPPING[{field!r}]")
    for name in C.COMMON_CONNECTION_VARS:
        found.setdefault(name, "COMMON_CONNECTION_VARS")
    for name in C.INTERNAL_STATIC_VARS:
        found.setdefault(name, "INTERNAL_STATIC_VARS")
    return found


def test_playbook_keywords_stay_plain_data() -> None:
    """Ansible's reserved names that it reads no setting from (`name`, `port`, `timeout`) run."""
    for name in ("name", "port", "timeout", "hosts", "tags", "when", "serial"):
        assert name in _ansible_reserved_names()
        assert _refusal({name: "x"}) is None, name


def test_every_variable_ansible_core_reads_is_refused() -> None:
    # The evidence for the rules: the plugin and config `vars:` of ansible-core all start with
    # ansible_ (some after underscores) but these; a new one fails here, to be looked at.
    unprefixed = {name for name in _plugin_variables() if not name.lstrip("_").startswith("ansible_")}
    assert unprefixed == {
        "inventory_hostname",
        "delegated_vars['ansible_host']",
        "delegated_vars['ansible_ssh_host']",
        "_z_test_entry",
    }
    found = _variables_ansible_core_reads()
    let_through = {name: where for name, where in found.items() if special_reason(name) is None}
    assert not let_through, f"Ansible reads these, the worker lets them through: {let_through}"


def test_every_variable_a_real_play_sees_is_refused(tmp_path: Path) -> None:
    """What Ansible itself puts in `vars` (in a play, a role and a loop) may not come from a message."""
    role = tmp_path / "roles" / "r" / "tasks"
    role.mkdir(parents=True)
    dump = "{{ vars.keys() | list | to_json }}"
    role.joinpath("main.yml").write_text(
        f"- ansible.builtin.copy:\n    content: '{dump}'\n    dest: '{tmp_path}/role.json'\n  loop: [1]\n"
    )
    (tmp_path / "hosts.ini").write_text(
        'h1 ansible_connection=local ansible_python_interpreter="{{ ansible_playbook_python }}"\n'
    )
    (tmp_path / "play.yml").write_text(
        "- hosts: h1\n"
        "  gather_facts: true\n"
        "  gather_subset: [min]\n"
        "  roles: [r]\n"
        "  tasks:\n"
        "    - ansible.builtin.copy:\n"
        f"        content: '{dump}'\n"
        f"        dest: '{tmp_path}/play.json'\n"
    )
    result = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", "hosts.ini", "play.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "ANSIBLE_NOCOLOR": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    seen = set(json.loads((tmp_path / "play.json").read_text())) | set(json.loads((tmp_path / "role.json").read_text()))
    assert {"hostvars", "groups", "inventory_hostname", "role_path", "ansible_facts", "playbook_dir"} <= seen
    # `item` is the loop's own: Ansible sets it over any extra var of that name while it loops.
    let_through = sorted(name for name in seen - {"item"} if special_reason(name) is None)
    assert not let_through, f"a play sees these from Ansible, a message may set them: {let_through}"


def test_the_lists_are_lower_case_and_the_worker_does_not_import_ansible() -> None:
    assert all(name == name.lower() for name in SPECIAL_NAMES)
    code = (
        "import sys, ansible_worker.worker.service, ansible_worker.run.special_vars\n"
        "print(sorted(m for m in sys.modules if m == 'ansible' or m.startswith('ansible.')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------- extra_vars names, generated

_ident_tail = st.from_regex(r"[A-Za-z0-9_]{0,20}", fullmatch=True)


@st.composite
def _any_case(draw: st.DrawFn, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(ch.swapcase() if flip else ch for ch, flip in zip(word, flips, strict=True))


@st.composite
def _prefixed_names(draw: st.DrawFn) -> str:
    """ansible_<anything>, in any case, after any leading underscores: ansible_ssh_common_args, _Ansible_x, ANSIBLE_."""
    underscores = "_" * draw(st.integers(0, 3))
    stem = draw(
        st.sampled_from(["ssh_common_args", "host", "connection", "python_interpreter", "become_exe", "facts", ""])
        | _ident_tail
    )
    return underscores + draw(_any_case("ansible_")) + stem


_listed_names = st.sampled_from(sorted(SPECIAL_NAMES)).flatmap(_any_case)
_not_identifiers = (
    st.text(min_size=1, max_size=20).filter(lambda name: not (name.isascii() and name.isidentifier()))
    | st.from_regex(r"[0-9][A-Za-z0-9_]{0,10}", fullmatch=True)
    | st.sampled_from(["delegated_vars['ansible_host']", "ansible-host", "a b", "", "{{ x }}", "ans\u0131ble_host"])
)


@settings(max_examples=300, deadline=None)
@given(name=_prefixed_names() | _listed_names | _not_identifiers, value=st.sampled_from(["x", 1, True, None, {"a": 1}]))
@example(name="ansible_ssh_common_args", value="-o ProxyCommand=\"sh -c 'touch /tmp/x'\"")
@example(name="ANSIBLE_PYTHON_INTERPRETER", value="/tmp/x")
@example(name="hostvars", value={})
@example(name="Inventory_Hostname", value="elsewhere")
def test_special_names_are_refused_with_the_name(name: str, value: Any) -> None:
    message = _refusal({"plain": 1, name: value})
    assert message is not None
    assert message.startswith("extra_vars must not set ")
    assert message.endswith("(allow it with worker.allowed_special_vars)")
    shown = name if name.isascii() and name.isidentifier() else repr(name)[:97]
    assert shown in message


@settings(max_examples=200, deadline=None)
@given(name=_prefixed_names() | _listed_names | _not_identifiers)
def test_allowed_special_vars_lets_exactly_that_name_through(name: str) -> None:
    assert _refusal({name: 1}, frozenset({name})) is None
    other = name.swapcase()
    # ('ß'.swapcase() is 'SS', a plain name: only a spelling that is special itself must stay refused.)
    if other != name and special_reason(other) is not None:
        assert _refusal({other: 1}, frozenset({name})) is not None


def _ansible_would_treat_as_special() -> frozenset[str]:
    from ansible import constants as C  # noqa: N812

    names = set(_ansible_reserved_names()) | set(C.INTERNAL_STATIC_VARS) | set(_variables_ansible_core_reads())
    # The facts a real play sets without the prefix (test_every_variable_a_real_play_sees_is_refused).
    names |= {"gather_subset", "module_setup", "environment", "vars", "omit"}
    return frozenset(name.lower() for name in names)


_ANSIBLE_SPECIAL = _ansible_would_treat_as_special()


# Plain names, told apart by ansible-core's lists (not by the worker's own): these must run.
_plain_names = (
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,30}", fullmatch=True)
    | st.sampled_from(
        ["app_version", "seconds", "marker", "greeting", "ansible", "my_ansible_host", "item", "x_ansible_"]
    )
).filter(
    lambda name: (
        not name.lower().lstrip("_").startswith(("ansible_", "discovered_interpreter_"))
        and name.lower() not in _ANSIBLE_SPECIAL
    )
)


@settings(max_examples=300, deadline=None)
@given(names=st.lists(_plain_names, max_size=5, unique=True), nested=_prefixed_names() | _listed_names)
def test_plain_names_and_nested_keys_are_data(names: list[str], nested: str) -> None:
    extra_vars: dict[str, Any] = dict.fromkeys(names, "v")
    # Only top-level names are variables; below them every key is data.
    extra_vars["data"] = {nested: {"ansible_host": "x"}, "list": [{nested: 1}]}
    assert _refusal(extra_vars) is None


def test_several_refused_names_are_all_named() -> None:
    many = {f"ansible_v{index}": index for index in range(8)}
    message = _refusal({"ok": 1, "hostvars": 1, **many})
    assert message == (
        "extra_vars must not set hostvars: Ansible sets it as a magic variable; "
        "also ansible_v0, ansible_v1, ansible_v2, ansible_v3, ansible_v4 and 3 more "
        "(allow them with worker.allowed_special_vars)"
    )
    assert refused_names(["a", "hostvars", "b"]) == [("hostvars", "Ansible sets it as a magic variable")]


def test_validate_line_shows_the_allowlist() -> None:
    assert describe_allowed([]) == (
        "no connection, interpreter, become or magic variables (worker.allowed_special_vars is empty)"
    )
    assert describe_allowed(["ansible_user", "a-b"]) == "may set 'a-b', ansible_user (worker.allowed_special_vars)"


# ---------------------------------------------------------------- attacks in a message


def _script(path: Path, marker: Path, then: str) -> str:
    path.write_text(f"#!/bin/sh\ntouch '{marker}'\n{then}\n")
    path.chmod(0o700)
    return str(path)


async def test_extra_vars_cannot_run_commands_through_connection_variables(playbook_dir: Path, tmp_path: Path) -> None:
    """Interpreter, ProxyCommand, become_exe and a redirected host: each one refused, nothing ran."""
    touched = tmp_path / "touched"
    ran = {name: tmp_path / f"{name}.ran" for name in ("interpreter", "proxy", "become")}
    interpreter = _script(tmp_path / "python", ran["interpreter"], f'exec "{sys.executable}" "$@"')
    become = _script(tmp_path / "sudo", ran["become"], "exit 1")
    attacks: dict[str, tuple[dict[str, Any], str]] = {
        "interpreter": (
            {"ansible_python_interpreter": interpreter},
            "extra_vars must not set ansible_python_interpreter: Ansible reads it as an interpreter variable "
            "(allow it with worker.allowed_special_vars)",
        ),
        "proxy": (
            {
                "ansible_connection": "ssh",
                "ansible_ssh_common_args": f"-o ProxyCommand=\"sh -c 'touch {ran['proxy']}'\"",
            },
            "extra_vars must not set ansible_connection: Ansible reads it as a connection variable "
            "(ansible_* names are Ansible's own); also ansible_ssh_common_args "
            "(allow them with worker.allowed_special_vars)",
        ),
        "become": (
            # Ansible skips become to the user it already is: become someone else.
            {"ansible_become": True, "ansible_become_exe": become, "ansible_become_user": "nobody"},
            "extra_vars must not set ansible_become: Ansible reads it as a become variable; "
            "also ansible_become_exe, ansible_become_user (allow them with worker.allowed_special_vars)",
        ),
        "host": (
            {"Inventory_Hostname": "elsewhere", "ansible_host": "192.0.2.1"},
            "extra_vars must not set Inventory_Hostname: Ansible sets it as a magic variable; also ansible_host "
            "(allow them with worker.allowed_special_vars)",
        ),
    }
    async with open_runs(playbook_dir) as runs:
        finals = {}
        for name, (extra_vars, _) in attacks.items():
            job = {"task_id": f"attack-{name}", "playbook": "touch.yml", "inventory": "one_host.ini"}
            finals[name] = await runs.submit({**job, "extra_vars": {"marker": str(touched), **extra_vars}})
    for name, (_, message) in attacks.items():
        assert (finals[name]["state"], finals[name]["error_message"]) == ("failed", message)
        assert finals[name]["return_code"] is None
        assert finals[name]["tasks_total"] == 0
    assert [path.name for path in ran.values() if path.exists()] == []
    assert not touched.exists()


async def test_an_allowed_special_var_reaches_ansible(playbook_dir: Path, tmp_path: Path) -> None:
    """The operator's allowlist is the only way through, and lets exactly the named variables through."""
    touched, ran = tmp_path / "touched", tmp_path / "interpreter.ran"
    interpreter = _script(tmp_path / "python", ran, f'exec "{sys.executable}" "$@"')
    job = {"playbook": "touch.yml", "inventory": "one_host.ini"}
    async with open_runs(playbook_dir, allowed_special_vars=["ansible_python_interpreter"]) as runs:
        allowed = await runs.submit(
            {
                "task_id": "allowed",
                **job,
                "extra_vars": {"marker": str(touched), "ansible_python_interpreter": interpreter},
            }
        )
        refused = await runs.submit({"task_id": "still-refused", **job, "extra_vars": {"ansible_connection": "ssh"}})
    assert allowed["state"] == "success", allowed["error_message"]
    assert ran.exists()
    assert touched.exists()
    assert refused["state"] == "failed"
    assert refused["error_message"].startswith("extra_vars must not set ansible_connection: ")
