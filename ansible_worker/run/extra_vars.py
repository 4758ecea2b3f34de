"""Write a job's extra_vars as a YAML file in which every string is `!unsafe`, so Ansible never templates them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

_STR = "tag:yaml.org,2002:str"
# YAML 1.1's implicit types, as Ansible's loader resolves a bare scalar.
_RESOLVER = yaml.resolver.Resolver()


class _UnsafeDumper(yaml.SafeDumper):
    """A dumper that tags every string, keys included, with Ansible's `!unsafe`, unless it reads as another type."""


def _represent_unsafe(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Ansible (2.19 on) resolves the value of an `!unsafe` scalar as if it were bare, quotes
    # or not: "1.10" would load as the float 1.1, "007" as 7, "<<" would fail the run. Such
    # a string is written as a plain quoted string. None of YAML's implicit types contains a
    # `{`, so no such string can hold a Jinja delimiter: there is nothing to template.
    if _RESOLVER.resolve(yaml.ScalarNode, value, (True, False)) != _STR:  # type: ignore[no-untyped-call]
        return dumper.represent_scalar(_STR, value, style='"')
    return dumper.represent_scalar("!unsafe", value, style='"')


_UnsafeDumper.add_representer(str, _represent_unsafe)


def dump_unsafe_yaml(extra_vars: Mapping[str, Any]) -> str:
    """Return YAML that Ansible loads back as the same data with no string templated.

    Ansible templates values passed with `-e '<json>'`: `{{ lookup('pipe', 'id') }}` in a
    message would run `id` on the worker. Strings loaded with `!unsafe` stay plain data.
    """
    return yaml.dump(dict(extra_vars), Dumper=_UnsafeDumper, allow_unicode=True, sort_keys=False)


def write_extra_vars(directory: Path, extra_vars: Mapping[str, Any]) -> Path:
    """Write the file (mode 0600) and return its path, for `-e @path`."""
    path = directory / "extra_vars.yml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(dump_unsafe_yaml(extra_vars))
    return path
