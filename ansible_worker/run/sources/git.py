"""Git for run trees: resolve a revision to a commit, snapshot a commit, and keep a project's bare mirror."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ansible_worker.run.errors import JobRefusedError
from ansible_worker.run.process.launch import ExitRecord, Launch
from ansible_worker.run.process.output_tail import OutputTail
from ansible_worker.run.process.process_group import run_with_output

log = logging.getLogger(__name__)

FULL_COMMIT = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")
# A mirror's hooks never run: git looks for them in a directory that cannot exist.
NO_HOOKS = ("-c", "core.hooksPath=/dev/null")


class GitFailed(JobRefusedError):
    """A git command failed or took too long; the message says which and why."""


@dataclass(frozen=True)
class Git:
    """How to run git for the worker: the program, its environment, and its bounds."""

    program: str
    environment: Mapping[str, str]
    timeout: float
    kill_grace: float

    async def run(
        self, *args: str, cwd: Path, what: str, limit: float | None = None, env: Mapping[str, str] | None = None
    ) -> str:
        """Run `git ARGS` in `cwd` and return its output; `what` names the step in errors.

        Errors: `GitFailed` when git cannot start, exits non-zero, or runs past `timeout`
        (`limit`, default: the worker's `git_timeout`), with git's last lines.

        Cancellation: git's process group is ended (SIGTERM, grace, SIGKILL) before it passes.
        """
        limit = self.timeout if limit is None else limit
        environment = {**self.environment, **(env or {}), "GIT_TERMINAL_PROMPT": "0"}
        tail = OutputTail(65536)
        with trio.move_on_after(limit) as bound:
            try:
                launch = Launch((self.program, *args), cwd, environment, kill_grace=self.kill_grace)
                returncode = await run_with_output(launch, tail=tail, record=ExitRecord())
            except OSError as exc:
                raise GitFailed(f"{what} failed: cannot start {self.program!r}: {exc.strerror}") from exc
        if bound.cancelled_caught:
            raise GitFailed(f"{what} timed out after {limit:g}s")
        if returncode != 0:
            message = " | ".join(tail.last_lines(4)) or "no output"
            raise GitFailed(f"{what} failed (exit {returncode}): {message[-1000:]}")
        return tail.text()

    async def resolve(self, git_dir: Path, revision: str) -> str | None:
        """The full commit id that `revision` names in `git_dir`, or None if it names none.

        Cancellation: as `run`.
        """
        try:
            output = await self.run(
                f"--git-dir={git_dir}",
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                f"{revision}^{{commit}}",
                cwd=git_dir,
                what="git rev-parse",
            )
        except GitFailed as exc:
            if "(exit 1)" in str(exc):
                return None
            raise
        commit = output.strip()
        return commit if FULL_COMMIT.fullmatch(commit) else None

    async def snapshot(self, git_dir: Path, commit: str, target: Path) -> None:
        """Write the files of `commit` into the empty directory `target`, without `.git`.

        A private index beside `target` is used, so the repository's own index and work
        tree are never touched, and nothing is registered in the repository.

        Cancellation: as `run`; the caller removes a half-written `target`.
        """
        index = target.with_name(target.name + ".index")
        env = {"GIT_INDEX_FILE": str(index)}
        where = [f"--git-dir={git_dir}", f"--work-tree={target}"]
        try:
            await self.run(*where, "read-tree", commit, cwd=target, what="git read-tree", env=env)
            await self.run(*where, "checkout-index", "--all", "--force", cwd=target, what="git checkout-index", env=env)
        finally:
            index.unlink(missing_ok=True)


def git_directory_of(directory: Path) -> Path | None:
    """The repository of a checkout whose top is `directory`, or None when it is not one.

    Only a `.git` directly in `directory` counts (a directory or a worktree's `.git` file):
    a subdirectory of a checkout runs as a plain directory.
    """
    dot_git = directory / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():
        text = dot_git.read_text(encoding="utf-8", errors="replace").strip()
        if text.startswith("gitdir:"):
            path = Path(text.removeprefix("gitdir:").strip())
            return path if path.is_absolute() else (directory / path).resolve()
    return None


@dataclass
class ProjectMirror:
    """One project's bare mirror: fetched on demand, one fetch at a time, reused for `update_interval`."""

    name: str
    url: str
    branch: str
    path: Path
    update_interval: float
    fetch_timeout: float
    environment: dict[str, str] = field(default_factory=dict)
    _lock: trio.Lock = field(default_factory=trio.Lock)
    _fetched_at: float | None = None
    # What each revision named at the last fetch, so that a job at a cached revision runs no
    # git at all; emptied by every fetch (a full commit id always names the same commit).
    _resolved: dict[str, str] = field(default_factory=dict)

    async def commit_for(self, git: Git, revision: str | None, *, force: bool = False) -> str:
        """The full commit id of `revision` (default: the project's branch), fetching as needed.

        A full commit id already in the mirror needs no fetch. A branch or tag is fetched
        again once `update_interval` has passed since the last fetch (at once with
        `force`); a revision not found is fetched once more before it is refused.

        Errors: `GitFailed` naming the project when the fetch fails or times out, or the
        revision is not found.

        Cancellation: a fetch cut short is ended like any git command; the lock is released.
        """
        wanted = revision or self.branch
        async with self._lock:
            known = self._resolved.get(wanted)
            fresh = self._fetched_at is not None and trio.current_time() - self._fetched_at < self.update_interval
            if known is not None and not force and (fresh or FULL_COMMIT.fullmatch(wanted)):
                return known
            fetched_now = False
            if not (self.path / "HEAD").is_file():
                await self._init(git)
            stale = self._fetched_at is None or trio.current_time() - self._fetched_at >= self.update_interval
            wants_fetch = force or self._fetched_at is None or (stale and not FULL_COMMIT.fullmatch(wanted))
            if wants_fetch and not (FULL_COMMIT.fullmatch(wanted) and await git.resolve(self.path, wanted)):
                await self._fetch(git)
                fetched_now = True
            commit = await self._resolve(git, wanted)
            if commit is None and not fetched_now:
                await self._fetch(git)
                commit = await self._resolve(git, wanted)
            if commit is None:
                raise GitFailed(f"revision not found in project {self.name!r}: {wanted!r}")
            self._resolved[wanted] = commit
        return commit

    async def _resolve(self, git: Git, wanted: str) -> str | None:
        # A branch first, so that a branch and a tag of one name mean the branch, as `branch` does.
        candidates = (
            [wanted] if FULL_COMMIT.fullmatch(wanted) else [f"refs/heads/{wanted}", f"refs/tags/{wanted}", wanted]
        )
        for candidate in candidates:
            commit = await git.resolve(self.path, candidate)
            if commit is not None:
                return commit
        return None

    async def _init(self, git: Git) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Modes of the worker's user alone, whatever the umask: the check at start keeps only
        # mirrors no one else could have written to.
        init = ("init", "--quiet", "--bare", "--shared=0600", str(self.path))
        await git.run(*NO_HOOKS, *init, cwd=self.path.parent, what="git init")

    async def _fetch(self, git: Git) -> None:
        log.info("project %s: fetching %s", self.name, redacted(self.url))
        try:
            await git.run(
                *NO_HOOKS,
                f"--git-dir={self.path}",
                "fetch",
                "--quiet",
                "--prune",
                "--force",
                "--no-write-fetch-head",
                "--end-of-options",
                self.url,
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
                cwd=self.path,
                what=f"fetch of project {self.name!r}",
                limit=self.fetch_timeout,
                env=self.environment,
            )
        except GitFailed as exc:
            # The next job tries again rather than trusting an old fetch.
            self._fetched_at = None
            message = str(exc)
            if redacted(self.url) != self.url:
                # A password in the URL must not reach a status through git's message.
                message = message.replace(self.url, redacted(self.url))
                message = message.replace(self.url.partition("://")[2].split("@", 1)[0].partition(":")[2], "***")
            raise GitFailed(message) from None
        self._fetched_at = trio.current_time()
        self._resolved.clear()


def redacted(url: str) -> str:
    """`url` with any password in it replaced by `***`, for logs and `validate`."""
    scheme, separator, rest = url.partition("://")
    if not separator or "@" not in rest.split("/", 1)[0]:
        return url
    userinfo, _, host = rest.partition("@")
    user = userinfo.split(":", 1)[0]
    hidden = f"{user}:***" if ":" in userinfo else user
    return f"{scheme}://{hidden}@{host}"


def ssh_command_for(key_file: Path, known_hosts: Path | None = None) -> str:
    """`GIT_SSH_COMMAND` that uses only `key_file` and never asks; with `known_hosts`, only those host keys."""
    command = f"ssh -i {_quote(str(key_file))} -o IdentitiesOnly=yes -o BatchMode=yes"
    if known_hosts is not None:
        command += f" -o UserKnownHostsFile={_quote(str(known_hosts))} -o StrictHostKeyChecking=yes"
    return command


def _quote(text: str) -> str:
    # Git runs GIT_SSH_COMMAND through a shell: quote the path as one word.
    return "'" + text.replace("'", "'\\''") + "'"


def mirror_path(root: Path, name: str) -> Path:
    """Where the mirror of project `name` lives under the cache root."""
    return root / "mirrors" / f"{name}.git"


def environment_without(environment: Mapping[str, str], *names: str) -> dict[str, str]:
    """`environment` minus `names` (git's own variables that must not leak into a mirror's commands)."""
    return {key: value for key, value in environment.items() if key not in names}
