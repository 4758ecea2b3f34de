"""A cache of immutable run trees (commit snapshots, unpacked content), leased by jobs, evicted by size and age."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import trio

from ansible_worker.ops.private_paths import make_private_directory, tamper_risk
from ansible_worker.run.errors import JobRefusedError

log = logging.getLogger(__name__)

# A tree being built has this prefix until it is complete and renamed to its key.
BUILDING_PREFIX = ".building-"
# Entries looked at between checkpoints, so that a large tree does not stall the event loop.
_CHECKPOINT_EVERY = 256


@dataclass
class _Entry:
    size: int
    last_used: float
    leases: int = 0


class TreeCache:
    """Directories named by a key that never changes meaning (a commit id, a content digest).

    A tree is built once, into a private temporary directory that is renamed into place
    only when complete, then made read-only and shared by every job that leases it. A
    tree no job holds is removed once it is older than `max_age` seconds since its last
    use, or, oldest first, while the cache holds more than `max_bytes`. Trees that a job
    holds are never removed: a running job keeps the files it started with. Only trees
    this process built are used: `prepare` removes what an earlier run left.
    """

    def __init__(self, root: Path, *, max_bytes: int, max_age: float, single_user: bool = False) -> None:
        self.root = root
        # `tamper_risk`'s: every process that reaches the cache runs as the worker's user.
        self.single_user = single_user
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._prepared = False

    def prepare(self) -> None:
        """Check the whole path of the cache directory, and remove every tree an earlier run left.

        A tree found on disk cannot show that this worker made it as it is now: another user
        may have put it there, or kept a way to change it, while the cache was open to them
        (a directory they own, a file they held open before the modes were fixed), and its
        content could only be proved by building it again. So trees are never trusted
        across restarts: each is built again on first use, in a private directory.

        Errors: `JobRefusedError` when the cache is not private to the worker's user, or an
        entry left in it cannot be removed (one another user owns).

        Synchronous: at start, before any job runs. Done once.
        """
        if self._prepared:
            return
        make_private_directory(self.root)
        # Checked once: when no one else may change a directory on the way, no one else
        # can swap a tree for one of their own later either.
        risk = tamper_risk(self.root, single_user=self.single_user)
        if risk is not None:
            raise JobRefusedError(
                f"the source cache {self.root} is not private to the worker's user: {risk}: fix or remove it"
            )
        left = sorted(self.root.iterdir())
        if left:
            log.info("removing %d run trees left by an earlier run: trees are built again, never trusted", len(left))
        for child in left:
            if not _built_here(child):
                log.warning("removing %s from the source cache: %s, not a tree of this worker", child, _describe(child))
            remove_tree(child)
            if os.path.lexists(child):
                raise JobRefusedError(
                    f"the source cache {self.root} holds {child.name}, which the worker cannot remove"
                    f" ({_describe(child)}): remove it"
                )
        self._prepared = True

    @property
    def total_bytes(self) -> int:
        """The size of the trees known to this cache."""
        return sum(entry.size for entry in self._entries.values())

    def holds(self, key: str) -> bool:
        """Whether the tree of `key` is complete on disk, as this worker built it."""
        return _built_here(self.root / key)

    @asynccontextmanager
    async def lease(self, key: str, build: Callable[[Path], Awaitable[None]]) -> AsyncIterator[Path]:
        """The tree of `key`, built by `build(directory)` unless it is there already.

        `build` fills an empty private directory; if it raises, the directory is removed
        and the error passes on, so a failed build leaves nothing behind. Only one build
        per key runs at a time; a second job waits for the first and then shares its tree.

        Cancellation: a build cancelled halfway is removed; a lease ends with its block.
        """
        self.prepare()
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            path = self.root / key
            entry = self._entries.get(key)
            if entry is None or not _built_here(path):
                _clear(path)
                self._entries.pop(key, None)
                await self._build(path, build)
                size = await tree_size(path)
                entry = self._entries[key] = _Entry(size=size, last_used=trio.current_time())
            entry.leases += 1
        if not lock.locked() and not lock.statistics().tasks_waiting:
            self._locks.pop(key, None)
        try:
            yield path
        finally:
            entry.leases -= 1
            entry.last_used = trio.current_time()
            self.evict()

    async def _build(self, path: Path, build: Callable[[Path], Awaitable[None]]) -> None:
        scratch = self.root / f"{BUILDING_PREFIX}{path.name}-{secrets.token_hex(4)}"
        scratch.mkdir(mode=0o700)
        try:
            await build(scratch)
            await make_read_only(scratch)
            scratch.rename(path)
        except BaseException:
            remove_tree(scratch)
            raise

    def evict(self) -> None:
        """Remove the trees no job holds that are too old, then the oldest while over the size bound."""
        now = trio.current_time()
        idle = sorted(
            ((entry.last_used, key) for key, entry in self._entries.items() if entry.leases == 0),
        )
        total = self.total_bytes
        for last_used, key in idle:
            if now - last_used <= self.max_age and total <= self.max_bytes:
                continue
            total -= self._entries.pop(key).size
            log.info("removing run tree %s from the cache", key)
            remove_tree(self.root / key)


async def tree_size(path: Path) -> int:
    """Bytes of the regular files under `path` (links not followed).

    Cancellation: a plain checkpoint every few hundred entries.
    """
    total = 0
    seen = 0
    for directory, _dirs, files in os.walk(path):
        for name in files:
            with suppress(FileNotFoundError):
                total += os.lstat(os.path.join(directory, name)).st_size
            seen += 1
            if seen % _CHECKPOINT_EVERY == 0:
                await trio.lowlevel.checkpoint()
    return total


async def make_read_only(path: Path) -> None:
    """Take the write bits off every file and directory under `path`, and `path` itself.

    Cancellation: a plain checkpoint every few hundred entries.
    """
    seen = 0
    for directory, dirs, files in os.walk(path, topdown=False):
        for name in (*files, *dirs):
            full = os.path.join(directory, name)
            mode = os.lstat(full).st_mode
            if not stat.S_ISLNK(mode):
                os.chmod(full, stat.S_IMODE(mode) & ~0o222)
            seen += 1
            if seen % _CHECKPOINT_EVERY == 0:
                await trio.lowlevel.checkpoint()
    os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) & ~0o222)


def remove_tree(path: Path) -> None:
    """Remove a tree (or a file, or a link), read-only directories included, never following a link.

    Directories are opened one by one without following links (`os.fwalk`) and made
    writable through their own descriptors, so that a link put in the tree's place, or in
    it, changes the mode of nothing outside it. What cannot be removed is left (the
    caller looks).

    Synchronous: called when a tree is let go, or at start.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        with suppress(FileNotFoundError):
            path.unlink()
        return
    with suppress(OSError):
        for _directory, _dirs, _files, descriptor in os.fwalk(path):
            with suppress(OSError):
                os.fchmod(descriptor, 0o700)
    # Removes through descriptors too, never through a link.
    shutil.rmtree(path, ignore_errors=True)


def _clear(path: Path) -> None:
    """Remove whatever is at `path`, saying so: only this worker writes in the cache once prepared."""
    if os.path.lexists(path):
        log.warning("run tree %s is not one this worker built (%s): removing it", path.name, _describe(path))
        remove_tree(path)


def _built_here(path: Path) -> bool:
    """Whether `path` is a directory of the worker's own user, not a link: what a build of this worker leaves."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()


def _describe(path: Path) -> str:
    """What `path` is, and whose, for a log line or an error."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a file"
    if stat.S_ISLNK(info.st_mode):
        kind = "a symbolic link"
    owner = "the worker's user" if info.st_uid == os.geteuid() else f"uid {info.st_uid}"
    return f"{kind} of {owner}"
