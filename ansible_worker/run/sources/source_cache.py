"""The source cache's directory: where it lives, made private, locked to one worker; which mirrors to trust."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from ansible_worker.ops.private_paths import make_private_directory, tamper_risk
from ansible_worker.run.errors import JobRefusedError
from ansible_worker.run.sources.git import ProjectMirror, mirror_path, ssh_command_for
from ansible_worker.run.sources.run_trees import remove_tree

if TYPE_CHECKING:
    # For its type only: the run layer never loads the settings module itself.
    from ansible_worker.ops.config import WorkerSettings

log = logging.getLogger(__name__)


# The key every problem of the cache is reported under, whichever default it came from.
CACHE_KEY = "worker.source_cache"
TEMPORARY_PREFIX = "ansible-worker-sources-"
# Held (flock) by the one worker that uses the cache: trees and mirrors are not shared.
LOCK_NAME = "lock"


class SourceCacheError(JobRefusedError):
    """The source cache cannot be made private to the worker's user; the message names the key."""


def cache_root(settings: WorkerSettings) -> Path | None:
    """Where trees and mirrors are kept: `worker.source_cache`, else `state_dir`/sources.

    None when neither is set: the worker then makes a directory of its own in the temp
    directory (`tempfile.mkdtemp`: a name no one can guess, mode 0700), removed when it stops.
    """
    if settings.source_cache is not None:
        return settings.source_cache
    if settings.state_dir is not None:
        return Path(os.path.abspath(settings.state_dir)) / "sources"
    return None


def lock_cache(root: Path) -> int:
    """Lock the cache in `root` for this process; the descriptor that holds the lock.

    Errors: `SourceCacheError` when another process holds it, naming its process id.
    """
    path = root / LOCK_NAME
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        with suppress(FileNotFoundError):
            info = os.lstat(path)
            if info.st_uid != os.geteuid() or not stat.S_ISREG(info.st_mode):
                # Left by someone else while the cache was open to them: they may hold it still.
                log.warning("replacing %s, which is not a file of the worker's user", path)
                os.unlink(path)
        descriptor = os.open(path, flags, 0o600)
    except OSError as exc:
        raise SourceCacheError(f"{CACHE_KEY}: cannot open {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(descriptor, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(descriptor)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise SourceCacheError(f"{CACHE_KEY}: cannot lock {path}: {exc.strerror or exc}") from None
        raise SourceCacheError(
            f"{CACHE_KEY}: {root} is in use by another worker (process {holder[:20]}): each worker needs a"
            " source cache of its own"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor


def mirror_problem(path: Path, *, single_user: bool) -> str | None:
    """Why the mirror `path` may hold what another user put there (a hook, a config); None when it cannot.

    Every entry must be a directory or a regular file of the worker's user, and, unless
    `single_user`, writable by no one else: then nobody else could have changed it.
    Synchronous: one `lstat` per file of the mirror, once at start.
    """
    uid = os.geteuid()

    def problem(where: str) -> str | None:
        info = os.lstat(where)
        if stat.S_ISLNK(info.st_mode):
            return f"{where} is a symbolic link"
        if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
            return f"{where} is not a directory or a regular file"
        if info.st_uid != uid:
            return f"{where} belongs to another user (uid {info.st_uid})"
        if not single_user and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{where} may be written by others (mode {stat.S_IMODE(info.st_mode):o})"
        return None

    try:
        found = problem(str(path))
        if found is not None or not path.is_dir():
            return found
        for directory, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                found = problem(os.path.join(directory, name))
                if found is not None:
                    return found
    except OSError as exc:
        return f"{exc.filename or path} cannot be examined: {exc.strerror or exc}"
    return None


def cache_problem(settings: WorkerSettings) -> str | None:
    """Why the source cache (or, by default, the place it would be made in) is not safe from other local users.

    One line naming the key, for a configuration error; None when it is safe. Parts of the
    path that do not exist yet are not judged: the worker makes them, mode 0700.

    Synchronous: a few `lstat` calls, made before the worker starts.
    """
    root = cache_root(settings)
    if root is None:
        temp = Path(tempfile.gettempdir())
        risk = tamper_risk(temp, as_parent=True, single_user=settings.single_user)
        where, fix = f"not set, and the temp directory {temp} is no place for it", "set it, or worker.state_dir"
    else:
        risk = tamper_risk(root, single_user=settings.single_user)
        where = str(root) if settings.source_cache is not None else f"{root} (the default, under worker.state_dir)"
        fix = "use a directory that only the worker's user (or root) can change"
    if risk is None:
        return None
    # Whoever may replace a directory on the way may replace a tree named by its digest or commit.
    return f"{CACHE_KEY}: {where}: {risk}: another local user could replace the trees jobs run from; {fix}"


def make_cache_directory(configured: Path | None, *, single_user: bool) -> Path:
    """Make the cache directory with `trees/` and `mirrors/` in it, and check that no other user can change them.

    `configured` (made 0700 where missing), or a new private directory in the temp
    directory when None; the latter is removed again if it cannot be trusted.

    Errors: `SourceCacheError` naming `worker.source_cache`.
    """
    try:
        if configured is None:
            root = Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX))
        else:
            root = configured
            make_private_directory(root)
        for child in ("trees", "mirrors"):
            make_private_directory(root / child)
    except OSError as exc:
        where = configured or Path(tempfile.gettempdir())
        raise SourceCacheError(f"{CACHE_KEY}: cannot make the cache in {where}: {exc.strerror or exc}") from None
    for path in (root, root / "trees", root / "mirrors"):
        risk = tamper_risk(path, single_user=single_user)
        if risk is not None:
            if configured is None:
                remove_tree(root)
            raise SourceCacheError(
                f"{CACHE_KEY}: {root}: {risk}: another local user could replace the trees jobs run from"
            )
    return root


def project_mirrors(settings: WorkerSettings, root: Path) -> dict[str, ProjectMirror]:
    """The mirror of each project in `worker.projects`, kept in the cache `root`, with its git environment."""
    mirrors: dict[str, ProjectMirror] = {}
    for name, project in settings.projects.items():
        extra = {key: value.get_secret_value() for key, value in project.environment.items()}
        if project.key_file is not None:
            extra.setdefault("GIT_SSH_COMMAND", ssh_command_for(project.key_file, project.known_hosts))
        mirrors[name] = ProjectMirror(
            name=name,
            url=project.url,
            branch=project.branch,
            path=mirror_path(root, name),
            update_interval=project.update_interval,
            fetch_timeout=project.fetch_timeout or settings.git_timeout,
            environment=extra,
        )
    return mirrors
