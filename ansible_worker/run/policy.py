"""What a job may ask of this worker: playbook or module, inventory, source, credentials, verbosity, extra_vars."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ansible_worker.ops.credentials import VaultCredential
from ansible_worker.protocol.models import TaskRequest
from ansible_worker.run.argv import resolve_inventory, resolve_playbook
from ansible_worker.run.credential_injection import AnyCredential
from ansible_worker.run.errors import JobRefusedError
from ansible_worker.run.sources.job_sources import JobSources
from ansible_worker.run.special_vars import SETTING, refused_names, show_name


@dataclass(frozen=True, slots=True)
class JobPolicy:
    """Limits an operator sets on what a message can make the worker do.

    Patterns are shell-style globs matched against the path relative to the playbook
    directory after symlinks are resolved (`*` also crosses `/`); None allows everything
    inside the directory, which is the default.
    """

    allowed_playbooks: Sequence[str] | None = None
    allowed_inventories: Sequence[str] | None = None
    allow_inline_inventory: bool = True
    max_verbosity: int = 4
    max_extra_vars_bytes: int = 65536
    max_extra_vars_depth: int = 10
    # Top-level extra_vars names let through although Ansible reads them (special_vars.py).
    allowed_special_vars: Collection[str] = ()
    # The modules an ad-hoc command may run (`worker.ad_hoc_modules`); none by default.
    ad_hoc_modules: Collection[str] = ()

    def check_request(self, job: TaskRequest) -> None:
        """Checks that need no file system; `JobRefusedError` says what is not allowed."""
        if job.module is not None and not module_allowed(job.module, self.ad_hoc_modules):
            if not self.ad_hoc_modules:
                raise JobRefusedError("ad-hoc commands are not allowed on this worker (worker.ad_hoc_modules)")
            raise JobRefusedError(f"module {job.module!r} is not allowed on this worker (worker.ad_hoc_modules)")
        _check_special_vars(job.extra_vars, self.allowed_special_vars)
        if job.verbosity > self.max_verbosity:
            raise JobRefusedError(f"verbosity {job.verbosity} is above this worker's limit ({self.max_verbosity})")
        size = len(json.dumps(job.extra_vars))
        if size > self.max_extra_vars_bytes:
            limit = self.max_extra_vars_bytes
            raise JobRefusedError(f"extra_vars are {size} bytes, above this worker's limit ({limit})")
        depth = _depth(job.extra_vars)
        if depth > self.max_extra_vars_depth:
            limit = self.max_extra_vars_depth
            raise JobRefusedError(f"extra_vars nest {depth} levels deep, above this worker's limit ({limit})")
        if "," in job.inventory and not self.allow_inline_inventory:
            raise JobRefusedError("inline inventories (host lists) are not allowed on this worker")

    def check_paths(self, base: Path, playbook: Path | None, inventory: str) -> None:
        """Checks on the resolved playbook (None for an ad-hoc command) and inventory paths."""
        if playbook is not None:
            _allowed(base, playbook, self.allowed_playbooks, "playbook", "worker.allowed_playbooks")
        if "," not in inventory:
            _allowed(base, Path(inventory), self.allowed_inventories, "inventory", "worker.allowed_inventories")


@dataclass(frozen=True)
class Resolved:
    """A request's playbook (None for an ad-hoc command) and inventory as found in the tree it runs from."""

    playbook: Path | None
    inventory: str


class RequestChecks:
    """Every check of a request: before it is queued (`admission_error`), and on the tree it runs from (`check_tree`).

    A request refused before it is queued never becomes a job, so its answer cannot replace
    the status of a job that ran on another worker.
    """

    def __init__(self, policy: JobPolicy, sources: JobSources, *, credentials: Mapping[str, AnyCredential]) -> None:
        self.policy = policy
        self.sources = sources
        self.credentials = credentials

    def admission_error(self, request: TaskRequest) -> str | None:
        """Why `request` cannot run here, judged before it is queued; None if it may.

        The policy and, unless the job pulls first (its files may not exist yet), the
        playbook and inventory paths.
        """
        base = self.sources.playbook_directory
        refusal = self._credential_error(request, base)
        if refusal is not None:
            return refusal
        source_error = self.sources.admission_error(request)
        if source_error is not None:
            return source_error
        try:
            self.policy.check_request(request)
            # A snapshot's or shipped tree's files are known only once it is made.
            if not request.git_pull and self.sources.uses_playbook_directory(request):
                self._resolve(request, base)
        except JobRefusedError as exc:
            return str(exc)
        except OSError as exc:
            return f"cannot read the playbook directory: {exc.strerror or exc}"
        return None

    def check_tree(self, request: TaskRequest, base: Path) -> Resolved:
        """The request's files in the tree `base` it runs from, judged again there with the settings of now.

        Errors: `JobRefusedError` when a path or a credential is not allowed.
        """
        resolved = self._resolve(request, base)
        # Judged again on the tree that runs, and with the settings of now (a job from the journal).
        refusal = self._credential_error(request, base)
        if refusal is not None:
            raise JobRefusedError(refusal)
        return resolved

    def _resolve(self, request: TaskRequest, base: Path) -> Resolved:
        playbook = resolve_playbook(base, request.playbook) if request.playbook is not None else None
        resolved = Resolved(playbook, resolve_inventory(base, request.inventory))
        self.policy.check_paths(base, resolved.playbook, resolved.inventory)
        return resolved

    def _credential_error(self, request: TaskRequest, base: Path) -> str | None:
        """Why the job may not have its credentials, judged on the playbook file under `base`."""
        if not request.credentials:
            return None
        if request.playbook is None:
            return credential_error(request.credentials, None, self.credentials)
        try:
            playbook = resolve_playbook(base, request.playbook).relative_to(base.resolve()).as_posix()
        except (JobRefusedError, OSError, ValueError):
            # Not a file there (yet): only the tree the job runs from can tell, when it runs.
            playbook = request.playbook
        own_tree = request.content is None and request.project is None and request.revision is None
        return credential_error(request.credentials, playbook, self.credentials, own_tree=own_tree)


def credential_error(
    names: Sequence[str],
    playbook: str | None,
    credentials: Mapping[str, AnyCredential],
    *,
    own_tree: bool = True,
) -> str | None:
    """Why a job may not have the credentials it names, or None: unknown, or not for this playbook.

    `playbook` is the path the worker resolved, relative to the tree the job runs from (no
    `..`, links followed), so that the patterns match the file that will run. A credential
    limited by `allowed_playbooks` is only for the playbook directory's own files
    (`own_tree`): shipped content and another project or revision could put any file at an
    allowed name. An ad-hoc command (`playbook` None) runs no playbook: such a credential is
    not for it.
    """
    for name in names:
        credential = credentials.get(name)
        if credential is None:
            return f"credential {name!r} is not defined on this worker"
        allowed = credential.allowed_playbooks
        if allowed is None:
            continue
        if playbook is None:
            return f"credential {name!r} is limited to playbooks (allowed_playbooks): not for ad-hoc commands"
        if not own_tree:
            return (
                f"credential {name!r} is limited to playbooks of the playbook directory"
                " (allowed_playbooks): not for shipped content, a project or a revision"
            )
        if not any(fnmatchcase(playbook, pattern) for pattern in allowed):
            return f"credential {name!r} may not be used by playbook {playbook!r}"
    vaults = [credential for name in names if isinstance(credential := credentials[name], VaultCredential)]
    vault_ids = [vault.vault_id for vault in vaults]
    if len(vault_ids) != len(set(vault_ids)):
        return "two vault credentials of the job have the same vault_id"
    return None


def module_allowed(module: str, allowed: Collection[str]) -> bool:
    """Whether `module` is in `allowed`, a short name and its `ansible.builtin.`/`ansible.legacy.` forms alike.

    A short name resolves as `ansible.legacy.NAME` (the library path, then the builtin), so
    the three spellings of a builtin run the same module as far as an operator can tell.
    """
    names = {module}
    for prefix in _BUILTIN_PREFIXES:
        if module.startswith(prefix):
            names.add(module.removeprefix(prefix))
    if "." not in module:
        names.update(prefix + module for prefix in _BUILTIN_PREFIXES)
    return not names.isdisjoint(allowed)


_BUILTIN_PREFIXES = ("ansible.builtin.", "ansible.legacy.")


def _check_special_vars(extra_vars: dict[str, Any], allowed: Collection[str]) -> None:
    refused = refused_names(extra_vars, allowed)
    if not refused:
        return
    (name, reason), rest = refused[0], refused[1:]
    also = ""
    if rest:
        shown = ", ".join(show_name(other) for other, _ in rest[:5])
        also = f"; also {shown}" + (f" and {len(rest) - 5} more" if len(rest) > 5 else "")
    them = "them" if rest else "it"
    raise JobRefusedError(f"extra_vars must not set {show_name(name)}: {reason}{also} (allow {them} with {SETTING})")


def _allowed(base: Path, path: Path, patterns: Sequence[str] | None, what: str, setting: str) -> None:
    if patterns is None:
        return
    relative = path.relative_to(base).as_posix()
    if not any(fnmatchcase(relative, pattern) for pattern in patterns):
        raise JobRefusedError(f"{what} {relative!r} is not allowed on this worker ({setting})")


def _depth(value: Any, level: int = 0) -> int:
    if isinstance(value, dict):
        return max((_depth(item, level + 1) for item in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(item, level + 1) for item in value), default=level + 1)
    return level
