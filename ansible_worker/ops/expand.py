"""Expand `${VAR}` and `${VAR:-default}` references in the strings of a loaded config tree."""

from __future__ import annotations

import re
from collections.abc import Mapping

_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


class UnsetVariableError(Exception):
    """A `${VAR}` reference names a variable that is not set and has no default."""

    def __init__(self, path: str, name: str) -> None:
        super().__init__(f"{path}: environment variable {name} is not set (use ${{{name}:-default}} for a default)")
        self.path = path
        self.name = name


def expand_tree(node: object, environ: Mapping[str, str], path: str = "") -> object:
    """Return a copy of `node` with every reference in every string replaced.

    `path` is the dotted key path of `node`, used to say where an unset variable was met.
    Keys are left alone: only values carry references. `$${` is not special; a literal
    `${` is written by choosing a default, which keeps the syntax to the shell's subset.
    """
    if isinstance(node, str):
        return _expand_string(node, environ, path)
    if isinstance(node, dict):
        return {key: expand_tree(value, environ, _join(path, str(key))) for key, value in node.items()}
    if isinstance(node, list):
        return [expand_tree(value, environ, _join(path, str(index))) for index, value in enumerate(node)]
    return node


def _expand_string(text: str, environ: Mapping[str, str], path: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        value = environ.get(name)
        if value is not None and (value or match.group("default") is None):
            return value
        default = match.group("default")
        if default is None:
            raise UnsetVariableError(path or "<root>", name)
        return default

    return _REFERENCE.sub(replace, text)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
