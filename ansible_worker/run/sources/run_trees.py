"""A cache of immutable run trees (commit snapshots, unpacked content), leased by jobs, evicted by size and age."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat
import time
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
    holds are never removed: a running job keeps the files it started with.
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
        self._preparing = trio.Lock()

    async def _prepare(self) -> None:
        """Check the whole path of the cache directory and learn the trees an earlier run of the worker left.

        Cancellation: a plain checkpoint while the sizes of earlier trees are added up.
        """
        async with self._preparing:
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
            for child in sorted(self.root.iterdir()):
                if child.name.startswith(BUILDING_PREFIX):
                    # Left by a worker that stopped while building: never complete, never used.
                    remove_tree(child)
                elif child.is_dir() and not child.is_symlink() and child.name not in self._entries:
                    # Known from now on, so that the size and age bounds cover it too; its age
                    # counts from when it was made.
                    age = max(0.0, time.time() - child.stat().st_mtime)
                    size = await tree_size(child)
                    self._entries[child.name] = _Entry(size=size, last_used=trio.current_time() - age)
            self._prepared = True
        self.evict()

    @property
    def total_bytes(self) -> int:
        """The size of the trees known to this cache."""
        return sum(entry.size for entry in self._entries.values())

    def holds(self, key: str) -> bool:
        """Whether the tree of `key` is complete on disk."""
        return (self.root / key).is_dir()

    @asynccontextmanager
    async def lease(self, key: str, build: Callable[[Path], Awaitable[None]]) -> AsyncIterator[Path]:
        """The tree of `key`, built by `build(directory)` unless it is there already.

        `build` fills an empty private directory; if it raises, the directory is removed
        and the error passes on, so a failed build leaves nothing behind. Only one build
        per key runs at a time; a second job waits for the first and then shares its tree.

        Cancellation: a build cancelled halfway is removed; a lease ends with its block.
        """
        if not self._prepared:
            await self._prepare()
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            path = self.root / key
            entry = self._entries.get(key)
            if not path.is_dir():
                entry = None
                await self._build(path, build)
                size = await tree_size(path)
                entry = self._entries[key] = _Entry(size=size, last_used=trio.current_time())
            elif entry is None:
                # Built by an earlier run of the worker.
                entry = self._entries[key] = _Entry(size=await tree_size(path), last_used=trio.current_time())
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
    """Remove a tree (or a file), read-only directories included; synchronous (called when a tree is let go)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return
    if not path.exists():
        return
    for directory, _dirs, _files in os.walk(path):
        with suppress(FileNotFoundError):
            os.chmod(directory, 0o700)
    shutil.rmtree(path, ignore_errors=True)
