"""Decide where a job's playbooks come from and lease it an immutable tree: a commit snapshot or shipped content."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import trio

from ansible_worker.protocol.models import ShippedContent, TaskRequest
from ansible_worker.run.errors import JobRefusedError
from ansible_worker.run.sources.git import (
    Git,
    GitFailed,
    ProjectMirror,
    environment_without,
    git_directory_of,
)
from ansible_worker.run.sources.run_trees import TreeCache, remove_tree
from ansible_worker.run.sources.shipped_content import ContentLimits, check_digest, unpack
from ansible_worker.run.sources.source_cache import (
    CACHE_KEY,
    lock_cache,
    make_cache_directory,
    mirror_problem,
    project_mirrors,
)

# Re-exported: the worker's start and its summary reach the cache through this module.
from ansible_worker.run.sources.source_cache import SourceCacheError as SourceCacheError
from ansible_worker.run.sources.source_cache import cache_problem as cache_problem
from ansible_worker.run.sources.source_cache import cache_root as cache_root

if TYPE_CHECKING:
    # For its type only: the run layer never loads the settings module itself.
    from ansible_worker.ops.config import WorkerSettings

log = logging.getLogger(__name__)

# Git reads these before its own options: from the worker's environment they would point
# every command at another repository or index.
_GIT_LOCATION_VARIABLES = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_NAMESPACE")


class ContentSource(Protocol):
    """Where shipped content is fetched from (the broker, through the worker's session)."""

    async def fetch(self, content: ShippedContent, into: Path) -> None:
        """Write the archive `content` names into the new file `into`; `JobRefusedError` when it cannot.

        The caller checks the digest and removes the file.

        Cancellation: the wait ends; nothing is left subscribed.
        """
        ...


@dataclass(frozen=True)
class RunTree:
    """The directory a job runs from, and what the status says about it."""

    path: Path
    project: str | None = None
    revision: str | None = None
    content_sha256: str | None = None


class JobSources:
    """The sources a worker offers: its playbook directory, its projects, and shipped content."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        environment: Mapping[str, str],
        content: ContentSource | None = None,
    ) -> None:
        self.settings = settings
        self.content = content
        self._configured_root = cache_root(settings)
        self._root: Path | None = None
        self._trees: TreeCache | None = None
        self._lock: int | None = None
        self.git = Git(
            program=settings.git_path,
            environment=environment_without(environment, *_GIT_LOCATION_VARIABLES),
            timeout=settings.git_timeout,
            kill_grace=settings.kill_grace,
        )
        self.limits = ContentLimits(max_bytes=settings.max_content_bytes, max_entries=settings.max_content_entries)
        self.mirrors: dict[str, ProjectMirror] = {}
        # One `git pull` in the playbook directory at a time.
        self._pull_lock = trio.Lock()

    @property
    def playbook_directory(self) -> Path:
        """The worker's own playbook directory (`worker.playbook_directory`, resolved)."""
        return self.settings.playbook_directory

    @property
    def root(self) -> Path | None:
        """The cache directory once `prepare` has made it."""
        return self._root

    @property
    def trees(self) -> TreeCache:
        """The cache of run trees; `prepare` first."""
        assert self._trees is not None, "JobSources.prepare was not called"
        return self._trees

    def prepare(self) -> Path:
        """Make the cache directory (and `trees/`, `mirrors/` in it), check its whole path; the directory.

        A configured one (or `state_dir`/sources) is made 0700 where missing. Without
        either, a new private directory is made in the temp directory, removed by
        `discard_temporary`. Every directory from `/` down to `trees/` and `mirrors/` must
        be owned by the worker's user or root and writable by no one else (a sticky one
        above the cache excepted; with `worker.single_user`, anyone), and none may be a
        symbolic link. Done once; later calls return the same directory.

        The cache is then locked (`flock` on its `lock` file) for as long as the worker
        runs: a second worker on the same cache is refused. What an earlier run left is
        judged as untrusted: its trees are removed (built again when used), and a project
        mirror is kept only if it and everything in it is the worker's user's, no link
        or special file, and (unless `single_user`) writable by no one else; any other
        entry of `mirrors/` is removed, with a warning that says why.

        Errors: `SourceCacheError` (a `JobRefusedError`) naming `worker.source_cache`.

        Synchronous: a few directories made and examined, at start or before the first tree.
        """
        if self._root is not None:
            return self._root
        root = make_cache_directory(self._configured_root, single_user=self.settings.single_user)
        self._lock = lock_cache(root)
        trees = TreeCache(
            root / "trees",
            max_bytes=self.settings.source_cache_bytes,
            max_age=self.settings.source_cache_age,
            single_user=self.settings.single_user,
        )
        try:
            trees.prepare()
            self._check_mirrors(root / "mirrors")
        except JobRefusedError as exc:
            self._release()
            raise SourceCacheError(f"{CACHE_KEY}: {exc}") from None
        self._root = root
        self._trees = trees
        self.mirrors.update(project_mirrors(self.settings, root))
        log.info("source cache in %s%s", root, " (removed at exit)" if self._configured_root is None else "")
        return root

    def discard_temporary(self) -> None:
        """Let the cache go: unlock it, and remove it when the worker made it in the temp directory.

        Synchronous: called once, when the worker has stopped and no job holds a tree.
        """
        if self._configured_root is None and self._root is not None:
            remove_tree(self._root)
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _check_mirrors(self, mirrors: Path) -> None:
        """Remove every entry of `mirrors` that this worker cannot trust as a mirror it made.

        Errors: `JobRefusedError` naming an entry that cannot be removed.
        """
        for entry in sorted(mirrors.iterdir()):
            problem = mirror_problem(entry, single_user=self.settings.single_user)
            if problem is None:
                continue
            log.warning("removing %s from the source cache: %s; a mirror is fetched afresh when used", entry, problem)
            remove_tree(entry)
            if os.path.lexists(entry):
                raise JobRefusedError(f"{entry} cannot be removed ({problem}): remove it")

    async def pull(self, task_id: str) -> None:
        """`git pull --ff-only` in the playbook directory for the job `task_id`, one job at a time, bounded.

        Errors: `GitFailed` (a `JobRefusedError`) when git cannot start, fails or runs past `worker.git_timeout`.

        Cancellation: git's process group is ended before it passes.
        """
        async with self._pull_lock:
            log.info("task %s: git pull in %s", task_id, self.playbook_directory)
            await self.git.run("pull", "--ff-only", cwd=self.playbook_directory, what="git pull")

    def uses_playbook_directory(self, request: TaskRequest) -> bool:
        """Whether the job runs from the live playbook directory, whose paths can be checked now."""
        return (
            request.content is None
            and request.project is None
            and request.revision is None
            and git_directory_of(self.settings.playbook_directory) is None
        )

    def admission_error(self, request: TaskRequest) -> str | None:
        """Why the job's source cannot be used here, judged from the settings alone; None if it can."""
        if request.content is not None:
            if request.project is not None or request.revision is not None or request.git_pull:
                return "content cannot be combined with project, revision or git_pull"
            if not self.settings.allow_shipped_content:
                return "shipped content is not allowed on this worker (worker.allow_shipped_content is false)"
            if request.content.size > self.settings.max_content_bytes:
                return (
                    f"shipped content too large ({request.content.size} bytes,"
                    f" max {self.settings.max_content_bytes}: worker.max_content_bytes)"
                )
            if self.content is None:
                return "shipped content cannot be fetched by this worker"
            return None
        if request.project is not None:
            project = self.settings.projects.get(request.project)
            if project is None:
                return f"unknown project {request.project!r}"
            if request.revision is not None and not project.allow_revision:
                return f"revision pinning is not allowed for project {request.project!r}"
            return None
        if request.revision is not None and not self.settings.allow_revision:
            return "revision pinning is not allowed for the playbook directory (worker.allow_revision is false)"
        return None

    @asynccontextmanager
    async def open_tree(self, request: TaskRequest) -> AsyncIterator[RunTree]:
        """Lease the tree `request` runs from, for the length of the block.

        The playbook directory itself when it is not a git checkout; otherwise a snapshot
        of the commit asked for (the checkout's HEAD by default), of a project's commit, or
        the shipped content: each cached, read-only, and kept while any job holds it.

        Errors: `JobRefusedError` (its message names the problem) for every source error.

        Cancellation: git and the content fetch are ended; a half-built tree is removed.
        """
        error = self.admission_error(request)
        if error is not None:
            raise JobRefusedError(error)
        if request.content is not None:
            async with self._shipped(request.content) as tree:
                yield tree
            return
        if request.project is not None:
            self.prepare()
            mirror = self.mirrors[request.project]
            commit = await mirror.commit_for(self.git, request.revision, force=request.git_pull)
            async with self._snapshot(mirror.path, commit, f"project-{request.project}") as path:
                yield RunTree(path, project=request.project, revision=commit)
            return
        base = self.settings.playbook_directory
        git_dir = git_directory_of(base)
        if git_dir is None:
            if request.revision is not None:
                raise JobRefusedError("revision pinning needs the playbook directory to be a git checkout")
            yield RunTree(base)
            return
        wanted = request.revision or "HEAD"
        found = await self.git.resolve(git_dir, wanted)
        if found is None:
            raise GitFailed(f"revision not found in the playbook directory: {wanted!r}")
        async with self._snapshot(git_dir, found, "git") as path:
            yield RunTree(path, revision=found)

    @asynccontextmanager
    async def _snapshot(self, git_dir: Path, commit: str, source: str) -> AsyncIterator[Path]:
        self.prepare()

        async def build(directory: Path) -> None:
            log.info("making a run tree of commit %s", commit)
            await self.git.snapshot(git_dir, commit, directory)

        # Keyed by source as well as commit: a repository's own settings (its attributes and
        # filters) shape the files of a checkout, so one source's tree is never another's.
        async with self.trees.lease(f"{source}-{commit}", build) as path:
            yield path

    @asynccontextmanager
    async def _shipped(self, content: ShippedContent) -> AsyncIterator[RunTree]:
        source = self.content
        assert source is not None
        self.prepare()

        async def build(directory: Path) -> None:
            # Beside the tree being built, never inside it, and removed whatever happens.
            archive = directory.with_name(directory.name + ".tar")
            try:
                await source.fetch(content, archive)
                await check_digest(archive, sha256=content.sha256, size=content.size)
                await unpack(archive, directory, self.limits)
            finally:
                archive.unlink(missing_ok=True)
            log.info("unpacked shipped content %s (%d bytes)", content.sha256, content.size)

        async with self.trees.lease(f"sha256-{content.sha256}", build) as path:
            yield RunTree(path, content_sha256=content.sha256)
