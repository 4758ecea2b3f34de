"""Turn ansible-playbook- and ansible-style command-line flags into a task request."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

import yaml


class ArgumentError(Exception):
    """A flag's value cannot be used; the message says which and why."""


def parse_extra_vars(values: list[str]) -> dict[str, Any]:
    """Merge `-e` values as ansible-playbook does: `KEY=VALUE ...`, `@FILE`, or a JSON/YAML object.

    Later values win. `KEY=VALUE` values stay strings, as they do in Ansible.
    """
    merged: dict[str, Any] = {}
    for value in values:
        merged.update(_one_extra_vars(value))
    return merged


def parse_answers(values: list[str]) -> tuple[dict[str, Any], set[str]]:
    """A launch's `-e` values, as `parse_extra_vars` reads them, and the names given as `KEY=VALUE` text.

    Text is read by each variable's survey type (`port=8080` is the integer 8080); an answer
    from a file or a JSON object keeps its own type. Later values win.
    """
    merged: dict[str, Any] = {}
    as_text: set[str] = set()
    for value in values:
        one = _one_extra_vars(value)
        text = not value.strip().startswith(("@", "{"))
        merged.update(one)
        as_text = (as_text | set(one)) if text else (as_text - set(one))
    return merged, as_text


def _one_extra_vars(value: str) -> dict[str, Any]:
    text = value.strip()
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            return _mapping(yaml.safe_load(path.read_text(encoding="utf-8")), f"-e {value}")
        except OSError as exc:
            raise ArgumentError(f"-e {value}: cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ArgumentError(f"-e {value}: not YAML or JSON: {exc}") from None
    if text.startswith("{"):
        try:
            return _mapping(json.loads(text), f"-e {value}")
        except json.JSONDecodeError:
            pass
        try:
            return _mapping(yaml.safe_load(text), f"-e {value}")
        except yaml.YAMLError as exc:
            raise ArgumentError(f"-e {value}: not a JSON or YAML object: {exc}") from None
    pairs: dict[str, Any] = {}
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ArgumentError(f"-e {value}: {exc}") from None
    for word in words:
        key, sep, item = word.partition("=")
        if not sep or not key:
            raise ArgumentError(f"-e {value}: expected KEY=VALUE, @FILE or a JSON object, got {word!r}")
        pairs[key] = item
    return pairs


def _mapping(loaded: object, where: str) -> dict[str, Any]:
    if not isinstance(loaded, dict):
        raise ArgumentError(f"{where}: must hold a mapping of variables, not {type(loaded).__name__}")
    return {str(key): item for key, item in loaded.items()}


def split_list(values: list[str] | None) -> list[str]:
    """`-t a,b -t c` gives `["a", "b", "c"]`."""
    return [item.strip() for value in values or [] for item in value.split(",") if item.strip()]


def build_adhoc_job(args: argparse.Namespace) -> dict[str, Any]:
    """The job request of `adhoc`'s flags: `-a` in braces is sent as an object, anything else as Ansible's text.

    Errors: `ArgumentError` for `-a` or `--extra-vars` that cannot be read.
    """
    job = _common(args, {"module": args.module, "hosts": args.hosts, "inventory": args.inventory})
    if args.module_args is not None:
        job["module_args"] = _module_args(args.module_args)
    optional = {"background": args.background, "poll": args.poll}
    job.update({key: value for key, value in optional.items() if value is not None})
    return job


def _module_args(text: str) -> str | dict[str, Any]:
    if not text.lstrip().startswith("{"):
        return text
    try:
        return _mapping(json.loads(text), "-a")
    except json.JSONDecodeError as exc:
        raise ArgumentError(f"-a: starts with '{{' but is not a JSON object: {exc}") from None


def build_job(args: argparse.Namespace) -> dict[str, Any]:
    """The job request of `submit`'s flags; only the flags given appear in it.

    Errors: `ArgumentError` for `--extra-vars` that cannot be read.
    """
    job = _common(args, {"playbook": args.playbook, "inventory": args.inventory})
    optional = {
        "tags": split_list(args.tags) or None,
        "skip_tags": split_list(args.skip_tags) or None,
        "git_pull": args.git_pull or None,
        "project": getattr(args, "project", None),
        "revision": getattr(args, "revision", None),
    }
    job.update({key: value for key, value in optional.items() if value is not None})
    return job


def _common(args: argparse.Namespace, job: dict[str, Any]) -> dict[str, Any]:
    """`job` with the flags that submit and adhoc share, those given only."""
    if args.task_id:
        job["task_id"] = args.task_id
    extra_vars = parse_extra_vars(args.extra_vars or [])
    if extra_vars:
        job["extra_vars"] = extra_vars
    optional = {
        "limit": args.limit,
        "verbosity": args.verbose or None,
        "check_mode": args.check or None,
        "diff_mode": args.diff or None,
        "forks": args.forks,
        "timeout": args.timeout,
        "credentials": args.credentials or None,
    }
    job.update({key: value for key, value in optional.items() if value is not None})
    return job
