"""Which `extra_vars` names a message may not set: the ones Ansible itself reads or sets.

`extra_vars` outrank every other variable. `!unsafe` keeps their values from being
templated, but a message that sets `ansible_ssh_common_args` (a `ProxyCommand`),
`ansible_python_interpreter`, `ansible_become_exe` or `ansible_connection` still runs a
command on the worker or sends the run somewhere the inventory does not say. So a top-level
name is refused when

1. it is not an ASCII identifier (`[A-Za-z_][A-Za-z0-9_]*`). Ansible's own rule for variable
   names (`ansible.utils.vars.validate_variable_name`), which it does not apply to extra vars;
   and its ssh plugin reads the literal names `delegated_vars['ansible_host']` and
   `delegated_vars['ansible_ssh_host']` as the host to connect to;
2. it starts with `ansible_`, after any leading underscores, in any case. Every connection,
   become, shell and interpreter variable of ansible-core has that prefix (`vars:` in the
   plugins' DOCUMENTATION, `MAGIC_VARIABLE_MAPPING` in `ansible/constants.py`,
   `ansible_*_interpreter`), as do most magic variables (`ansible_facts`, `ansible_play_hosts`,
   …) and the private config variables (`_ansible_ansiballz_debugpy_config`, …);
3. it is, in any case, one of the names below: the magic variables without the prefix, the
   facts that Ansible sets as variables without it, and the plugin and config variables
   without it. Ansible's other reserved names (playbook keywords such as `name`, `port` or
   `timeout`) stay allowed: Ansible only warns about them and reads no setting from them,
   and jobs commonly pass them as data;
4. it starts with `discovered_interpreter_`, in any case: the interpreter that Ansible found
   on a host, a fact that Ansible lets no module set (`clean_facts` in ansible/vars/clean.py).

Ansible's names are case sensitive; matching without case refuses a little more than needed
and nothing less. Only top-level names count: nested keys are data. An operator lets a name
through, exactly as written, with `worker.allowed_special_vars`.

The lists are copied here because the worker never imports Ansible (it costs a third of a
second); tests/test_job_inputs.py compares them with the installed ansible-core and fails
when a newer one adds a name.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

SETTING = "worker.allowed_special_vars"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Magic variables without the `ansible_` prefix: `INTERNAL_STATIC_VARS` in
# ansible/constants.py, `_get_magic_variables` and `get_vars` in ansible/vars/manager.py
# (`environment`, `vars`), `Host.get_magic_vars` in ansible/inventory/host.py, and the
# documented special variables (docs: reference_appendices/special_variables).
MAGIC_NAMES = frozenset(
    {
        "environment",
        "group_names",
        "groups",
        "hostvars",
        "inventory_dir",
        "inventory_file",
        "inventory_hostname",
        "inventory_hostname_short",
        "omit",
        "play_hosts",
        "playbook_dir",
        "role_name",
        "role_names",
        "role_path",
        "role_uuid",
        "vars",
    }
)

# Facts that Ansible sets as variables without the prefix (every other fact becomes
# `ansible_<name>`): `module_setup` and `gather_subset` from the setup module
# (ansible/module_utils/facts/ansible_collector.py). `get_reserved_names` leaves
# `gather_subset` out of the reserved names for that reason.
FACT_NAMES = frozenset({"gather_subset", "module_setup"})

# Variables that plugins or the config read, without the `ansible_` prefix: `vars:` entries of
# the plugins' DOCUMENTATION (`inventory_hostname` is the `host` option of the ssh, paramiko,
# winrm and psrp connections; `delegated_vars[...]` in ssh.py is a literal name, refused as a
# non-identifier, and `delegated_vars` is here in case a later version resolves it) and of
# ansible/config/base.yml (`_Z_TEST_ENTRY`).
PLUGIN_NAMES = frozenset({"delegated_vars", "inventory_hostname", "_z_test_entry"})

# Magic variables with the prefix, for a precise message only (the prefix alone refuses them):
# the ones in `INTERNAL_STATIC_VARS`, facts, and the documented loop, role and failure variables.
ANSIBLE_MAGIC_NAMES = frozenset(
    {
        "ansible_async_path",
        "ansible_check_mode",
        "ansible_collection_name",
        "ansible_config_file",
        "ansible_delegated_vars",
        "ansible_dependent_role_names",
        "ansible_diff_mode",
        "ansible_facts",
        "ansible_failed_result",
        "ansible_failed_task",
        "ansible_forks",
        "ansible_index_var",
        "ansible_inventory_sources",
        "ansible_limit",
        "ansible_local",
        "ansible_loop",
        "ansible_loop_var",
        "ansible_parent_role_names",
        "ansible_parent_role_paths",
        "ansible_play_batch",
        "ansible_play_hosts",
        "ansible_play_hosts_all",
        "ansible_play_name",
        "ansible_play_role_names",
        "ansible_playbook_python",
        "ansible_role_name",
        "ansible_role_names",
        "ansible_run_tags",
        "ansible_search_path",
        "ansible_skip_tags",
        "ansible_verbosity",
        "ansible_version",
    }
)

SPECIAL_NAMES = MAGIC_NAMES | FACT_NAMES | PLUGIN_NAMES


def special_reason(name: str) -> str | None:
    """Why Ansible would read or set `name` itself, or None for a name that is plain data."""
    if _IDENTIFIER.fullmatch(name) is None:
        return "it is not a valid variable name, and Ansible reads some such names as connection settings"
    lowered = name.lower()
    if lowered.lstrip("_").startswith("ansible_"):
        bare = lowered.lstrip("_")
        if bare.endswith("_interpreter"):
            return "Ansible reads it as an interpreter variable"
        if bare.startswith("ansible_become"):
            return "Ansible reads it as a become variable"
        if bare in ANSIBLE_MAGIC_NAMES:
            return "Ansible sets it as a magic variable"
        return "Ansible reads it as a connection variable (ansible_* names are Ansible's own)"
    if lowered in MAGIC_NAMES:
        return "Ansible sets it as a magic variable"
    if lowered in FACT_NAMES or lowered.startswith("discovered_interpreter_"):
        return "Ansible sets it as a fact"
    if lowered in PLUGIN_NAMES:
        return "Ansible reads it as a connection variable"
    return None


def refused_names(names: Iterable[str], allowed: Collection[str] = ()) -> list[tuple[str, str]]:
    """The names, in order, that a job may not set, each with its reason; `allowed` lets names through as written."""
    found = []
    for name in names:
        if name in allowed:
            continue
        reason = special_reason(name)
        if reason is not None:
            found.append((name, reason))
    return found


def show_name(name: str) -> str:
    """A name as an error message shows it: plain when it is an identifier, quoted and cut otherwise."""
    if _IDENTIFIER.fullmatch(name) is not None and len(name) <= 100:
        return name
    text = repr(name)
    return text if len(text) <= 100 else text[:97] + "..."


def describe_allowed(allowed: Collection[str]) -> str:
    """The `validate` line for `worker.allowed_special_vars`."""
    if not allowed:
        return f"no connection, interpreter, become or magic variables ({SETTING} is empty)"
    return f"may set {', '.join(show_name(name) for name in sorted(allowed))} ({SETTING})"
